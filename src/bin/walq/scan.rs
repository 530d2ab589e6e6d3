//! A read-only walk over the segment files of a store directory, decoding them with
//! `walq::format` and judging their ends by the rules of `docs/format.md` ("Finding the end
//! of the log"), as the library's recovery does, but without changing anything and without
//! stopping at the first damaged segment.

use std::io;
use std::path::{Path, PathBuf};

use walq::format::{
    all_zero, decode_frame, parse_checkpoint_file_name, parse_segment_file_name, zero_run, AckBody,
    Checkpoint, ClosedMarker, DeliverBody, MoveBody, PublishBody, QueueDeclareBody, RecordKind,
    RelocateBody, RollbackBody, SealBody, SegmentHeader, SegmentHeaderError, CLOSED_MARKER_LEN,
    FORMAT_VERSION, FRAME_ALIGN, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use walq::io::{DiskVfs, FileView, Vfs};
use walq::MAX_SEGMENT_SIZE;

/// The names walq gives its own files (`docs/format.md`, "Files of a store").
pub const LOCK_FILE: &str = "LOCK";
const CLOSED_FILE: &str = "CLOSED";
const TEMP_SUFFIX: &str = ".tmp";
const PENDING_SUFFIX: &str = ".next";
const QUARANTINE: &str = ".quarantine";

/// The files of a store directory, sorted out.
#[derive(Debug)]
pub struct Listing {
    /// Segment files, by id.
    pub segments: Vec<SegmentFile>,
    /// The clean-close marker: `Ok(None)` if there is none, `Err` if it is not a valid one.
    pub closed: Result<Option<ClosedMarker>, String>,
    /// Leftovers of an interrupted segment creation or close (the next open deletes them).
    pub temp_files: Vec<PathBuf>,
    /// Pending successors (`NNNN.wal.next`) of a roll-over still in flight at a crash.
    pub pending: Vec<PathBuf>,
    /// Segments set aside by a salvage.
    pub quarantined: Vec<PathBuf>,
    /// Files walq did not create (the library refuses to open the store).
    pub foreign: Vec<PathBuf>,
    /// Checkpoint files (sequence, path), and their temporary copies among `temp_files`.
    pub checkpoints: Vec<(u64, PathBuf)>,
}

/// One segment file.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    /// Its id, from the file name.
    pub id: u64,
    /// Its path.
    pub path: PathBuf,
    /// Its length, preallocated space included.
    pub file_len: u64,
}

impl Default for Listing {
    fn default() -> Self {
        Listing {
            segments: Vec::new(),
            closed: Ok(None),
            temp_files: Vec::new(),
            pending: Vec::new(),
            quarantined: Vec::new(),
            foreign: Vec::new(),
            checkpoints: Vec::new(),
        }
    }
}

/// Lists `dir`.
pub fn list(dir: &Path) -> io::Result<Listing> {
    let mut listing = Listing::default();
    let mut names = DiskVfs.list(dir)?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        if name == LOCK_FILE {
            continue;
        }
        if name == CLOSED_FILE {
            listing.closed = read_closed(&path);
        } else if name.contains(QUARANTINE) {
            listing.quarantined.push(path);
        } else if let Some(seq) = parse_checkpoint_file_name(&name) {
            listing.checkpoints.push((seq, path));
        } else if name
            .strip_suffix(TEMP_SUFFIX)
            .and_then(parse_checkpoint_file_name)
            .is_some()
        {
            listing.temp_files.push(path);
        } else if let Some(id) = parse_segment_file_name(&name) {
            let file_len = std::fs::metadata(&path)?.len();
            listing.segments.push(SegmentFile { id, path, file_len });
        } else if name == format!("{CLOSED_FILE}{TEMP_SUFFIX}")
            || name
                .strip_suffix(TEMP_SUFFIX)
                .and_then(parse_segment_file_name)
                .is_some()
        {
            listing.temp_files.push(path);
        } else if name
            .strip_suffix(PENDING_SUFFIX)
            .and_then(parse_segment_file_name)
            .is_some()
        {
            listing.pending.push(path);
        } else {
            listing.foreign.push(path);
        }
    }
    listing.segments.sort_by_key(|s| s.id);
    Ok(listing)
}

fn read_closed(path: &Path) -> Result<Option<ClosedMarker>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() != CLOSED_MARKER_LEN {
        return Err(format!(
            "it is {} bytes long instead of {CLOSED_MARKER_LEN}",
            bytes.len()
        ));
    }
    ClosedMarker::decode(&bytes)
        .map(Some)
        .ok_or_else(|| "its magic, version, reserved bytes or checksum are wrong".to_owned())
}

/// Maps a segment file read-only. The caller holds the directory lock, so no walq process
/// writes to it meanwhile (the condition of `VfsFile::view`).
pub fn map(segment: &SegmentFile) -> io::Result<FileView> {
    let file = DiskVfs.open(&segment.path, false)?;
    let len = file.len()?;
    file.view(len.min(MAX_SEGMENT_SIZE))
}

/// A valid frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Its offset in the segment.
    pub offset: u64,
    /// Its record kind.
    pub kind: u8,
    /// Whether its atomic group goes on after it.
    pub continues: bool,
    /// Its durable mark.
    pub mark: u32,
    /// Its body.
    pub body: &'a [u8],
}

/// Something wrong in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Damage or a broken format rule: the library refuses to open the store (unless in
    /// salvage mode).
    Problem {
        /// Byte offset in the segment.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The unconfirmed end of the last segment, left by a crash: the next open cuts it.
    TornTail {
        /// Where the log will be cut.
        offset: u64,
        /// What is there.
        reason: String,
        /// Checksum-valid frames after the cut (never confirmed durable).
        discarded: usize,
    },
}

/// What the walk over one segment found.
#[derive(Debug, Clone, Default)]
pub struct SegmentScan {
    /// The decoded header, if it is valid.
    pub header: Option<SegmentHeader>,
    /// The end of the valid records (after the seal, or where the log ends or is cut).
    pub data_end: u64,
    /// The seal, if the segment has one: its offset and the next segment it names.
    pub seal: Option<(u64, u64)>,
    /// Complete records visited (seal and commit records included).
    pub records: u64,
    /// Problems and torn tails, in offset order.
    pub findings: Vec<Finding>,
}

/// Where `id` sits: whether it is the last segment, and the offset the clean-close marker
/// gives for it (0 if none).
#[derive(Debug, Clone, Copy)]
pub struct Place {
    /// The segment id.
    pub id: u64,
    /// Whether it is the last segment of the directory.
    pub is_last: bool,
    /// Where the clean-close marker says the log ended in it (0 if not this segment).
    pub closed_at: u64,
}

/// Checks that a record body decodes as its kind says.
pub fn check_body(kind: u8, body: &[u8]) -> Result<(), String> {
    let result = match RecordKind::from_u8(kind) {
        Some(RecordKind::QueueDeclare) => QueueDeclareBody::decode(body).map(drop),
        Some(RecordKind::Publish) => PublishBody::decode(body).map(drop),
        Some(RecordKind::Ack) => AckBody::decode(body).map(drop),
        Some(RecordKind::Rollback) => RollbackBody::decode(body).map(drop),
        Some(RecordKind::Deliver) => DeliverBody::decode(body).map(drop),
        Some(RecordKind::Move) => MoveBody::decode(body).map(drop),
        Some(RecordKind::Relocate) => RelocateBody::decode(body).map(drop),
        Some(RecordKind::Seal) => SealBody::decode(body).map(drop),
        Some(RecordKind::Commit) if body.is_empty() => Ok(()),
        Some(RecordKind::Commit) => Err("commit record with a body"),
        None => return Err(format!("unknown record kind {kind}")),
    };
    result.map_err(str::to_owned)
}

/// Describes a bad segment header.
pub fn header_problem(
    header: &Result<SegmentHeader, SegmentHeaderError>,
    id: u64,
) -> Option<String> {
    match header {
        Ok(h) if h.segment_id != id => Some(format!(
            "header names segment {} but the file name says {id}",
            h.segment_id
        )),
        Ok(_) => None,
        Err(SegmentHeaderError::UnsupportedVersion(found)) => Some(format!(
            "written in format version {found}; this build reads version {FORMAT_VERSION}"
        )),
        Err(e) => Some(format!("bad segment header: {e:?}")),
    }
}

/// Walks one segment image, calling `visit` for every record of every complete atomic
/// group (and the seal and commit records), in order. An error from `visit` stops the walk
/// and is returned.
pub fn scan_segment(
    view: &[u8],
    place: Place,
    visit: &mut dyn FnMut(&Frame<'_>) -> io::Result<()>,
) -> io::Result<SegmentScan> {
    let id = place.id;
    let mut scan = SegmentScan::default();
    let header = SegmentHeader::decode(view);
    if let Some(reason) = header_problem(&header, id) {
        scan.findings.push(Finding::Problem { offset: 0, reason });
        return Ok(scan);
    }
    let Ok(header) = header else {
        return Ok(scan);
    };
    scan.header = Some(header);
    let problem = |scan: &mut SegmentScan, offset: u64, reason: &str| {
        scan.findings.push(Finding::Problem {
            offset,
            reason: reason.to_owned(),
        });
        scan.data_end = offset;
    };
    let mut offset = SEGMENT_HEADER_LEN as u64;
    let mut group: Vec<Frame<'_>> = Vec::new();
    let mut group_start = offset;
    let bad = loop {
        let rest = view.get(offset as usize..).unwrap_or_default();
        let frame = match decode_frame(rest, header.salt, id, offset) {
            Ok(frame) => frame,
            Err(e) => break e,
        };
        let f = Frame {
            offset,
            kind: frame.header.kind,
            continues: frame.header.flags.continues(),
            mark: frame.header.mark,
            body: frame.body,
        };
        if u64::from(f.mark) > offset {
            problem(&mut scan, offset, "durable mark points past its own record");
            return Ok(scan);
        }
        match RecordKind::from_u8(f.kind) {
            Some(RecordKind::Seal) => {
                let why = if !group.is_empty() {
                    Some("seal record inside an atomic group")
                } else if f.continues {
                    Some("seal record flagged as continuing")
                } else {
                    None
                };
                let body = SealBody::decode(f.body);
                match (why, body) {
                    (Some(why), _) | (None, Err(why)) => problem(&mut scan, offset, why),
                    (None, Ok(body)) => {
                        visit(&f)?;
                        scan.records += 1;
                        scan.seal = Some((offset, body.next_segment_id));
                        scan.data_end = frame.next_offset;
                    }
                }
                return Ok(scan);
            }
            Some(RecordKind::Commit) => {
                if !f.body.is_empty() || f.continues {
                    problem(&mut scan, offset, "malformed commit record");
                    return Ok(scan);
                }
                if !group.is_empty() {
                    problem(&mut scan, offset, "commit record inside an atomic group");
                    return Ok(scan);
                }
                visit(&f)?;
                scan.records += 1;
            }
            _ if f.kind < 16 => {
                let reason = format!("unknown log record kind {}", f.kind);
                problem(&mut scan, offset, &reason);
                return Ok(scan);
            }
            _ => {
                if let Err(reason) = check_body(f.kind, f.body) {
                    scan.findings.push(Finding::Problem { offset, reason });
                }
                if group.is_empty() {
                    group_start = offset;
                }
                group.push(f);
                if !f.continues {
                    for record in group.drain(..) {
                        visit(&record)?;
                        scan.records += 1;
                    }
                }
            }
        }
        offset = frame.next_offset;
    };

    let cut = if group.is_empty() {
        offset
    } else {
        group_start
    };
    scan.data_end = cut;
    let tail_is_zero = all_zero(view.get(offset as usize..).unwrap_or_default());
    let (frames_after, max_mark) = if tail_is_zero {
        (0, 0)
    } else {
        forward_scan(view, &header, id, offset, cut)
    };
    if group.is_empty() && frames_after == 0 && tail_is_zero && place.closed_at <= offset {
        if !place.is_last {
            problem(
                &mut scan,
                offset,
                "segment ends without a seal record, but a later segment exists",
            );
        }
        return Ok(scan);
    }
    let reason = if group.is_empty() {
        bad.to_string()
    } else {
        format!("atomic group cut short ({bad} at offset {offset})")
    };
    let why = if !place.is_last {
        Some(format!("{reason}, in a sealed part of the log"))
    } else if place.closed_at > cut {
        Some(format!(
            "{reason}, before offset {} where the store was closed cleanly",
            place.closed_at
        ))
    } else if max_mark > cut {
        Some(format!(
            "{reason}, followed by records written after this point was durable"
        ))
    } else {
        None
    };
    scan.findings.push(match why {
        Some(reason) => Finding::Problem {
            offset: cut,
            reason,
        },
        None => Finding::TornTail {
            offset: cut,
            reason,
            discarded: frames_after + group.len(),
        },
    });
    Ok(scan)
}

/// The checksum-valid frames after the bad offset `bad` and their highest durable mark,
/// stopping at the first mark past `cut` (as the library's recovery does).
fn forward_scan(view: &[u8], header: &SegmentHeader, id: u64, bad: u64, cut: u64) -> (usize, u64) {
    let (mut frames, mut max_mark) = (0, 0);
    let mut offset = bad + FRAME_ALIGN as u64;
    while let Some(rest) = view.get(offset as usize..) {
        if rest.len() < FRAME_HEADER_LEN {
            break;
        }
        let zeros = zero_run(rest);
        if zeros >= 2 * FRAME_ALIGN {
            offset += (zeros - FRAME_ALIGN) as u64;
            continue;
        }
        if rest.get(8).copied().unwrap_or(0) != 0 {
            if let Ok(frame) = decode_frame(rest, header.salt, id, offset) {
                let mark = u64::from(frame.header.mark);
                if mark <= offset {
                    frames += 1;
                    max_mark = max_mark.max(mark);
                    if mark > cut {
                        break;
                    }
                    offset = frame.next_offset;
                    continue;
                }
            }
        }
        offset += FRAME_ALIGN as u64;
    }
    (frames, max_mark)
}

/// How serious an [`Issue`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing, nothing wrong.
    Note,
    /// Not damage, but the next open will change something (a torn tail, a leftover file).
    Warning,
    /// Damage or a broken format rule: the store does not open.
    Problem,
}

/// Something a walk found, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// How serious.
    pub severity: Severity,
    /// The segment, if the issue is inside one.
    pub segment: Option<u64>,
    /// The byte offset in that segment.
    pub offset: Option<u64>,
    /// The file, if the issue is a file of its own.
    pub path: Option<PathBuf>,
    /// What it is.
    pub message: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let label = match self.severity {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Problem => "problem",
        };
        write!(f, "{label}: ")?;
        match (self.segment, self.offset, &self.path) {
            (Some(s), Some(o), _) => write!(f, "segment {s} offset {o}: ")?,
            (Some(s), None, _) => write!(f, "segment {s}: ")?,
            (None, _, Some(p)) => write!(f, "{}: ", p.display())?,
            (None, _, None) => {}
        }
        write!(f, "{}", self.message)
    }
}

/// Everything a walk over a directory found.
#[derive(Debug, Default)]
pub struct Walk {
    /// The directory's files.
    pub listing: Listing,
    /// Each segment with what its scan found, by id.
    pub scans: Vec<(SegmentFile, SegmentScan)>,
    /// Problems, warnings and notes, in the order found.
    pub issues: Vec<Issue>,
}

impl Walk {
    /// Records scanned, all segments.
    pub fn records(&self) -> u64 {
        self.scans.iter().map(|(_, s)| s.records).sum()
    }

    /// Bytes of valid records, all segments (headers included).
    pub fn data_bytes(&self) -> u64 {
        self.scans.iter().map(|(_, s)| s.data_end).sum()
    }

    /// The highest severity found, if any.
    pub fn worst(&self) -> Option<Severity> {
        self.issues.iter().map(|i| i.severity).max()
    }
}

/// Walks every segment of `dir` in order, calling `visit` for each complete record, and
/// `progress` with the bytes scanned so far (every few hundred KiB and after each segment).
pub fn walk(
    dir: &Path,
    visit: &mut dyn FnMut(&SegmentFile, &Frame<'_>) -> io::Result<()>,
    progress: &mut dyn FnMut(u64),
) -> io::Result<Walk> {
    let listing = list(dir)?;
    let mut walk = Walk::default();
    let issue = |severity, segment, offset, path: Option<&Path>, message: String| Issue {
        severity,
        segment,
        offset,
        path: path.map(Path::to_path_buf),
        message,
    };
    // Files that are not segments of the log, by kind.
    let others: [(&[PathBuf], Severity, &str); 4] = [
        (
            &listing.foreign,
            Severity::Problem,
            "not a walq file; walq refuses to open a directory holding other files (move it \
             elsewhere)",
        ),
        (
            &listing.temp_files,
            Severity::Warning,
            "left over by an interrupted segment creation or close; the next open deletes it",
        ),
        (
            &listing.pending,
            Severity::Warning,
            "the successor of a roll-over that a crash interrupted, not scanned here: the next \
             open adopts it if the segment before it ends with a valid seal, and deletes it \
             otherwise",
        ),
        (
            &listing.quarantined,
            Severity::Note,
            "set aside by a salvage; not part of the log (keep it for inspection or delete it)",
        ),
    ];
    for (paths, severity, message) in others {
        for path in paths {
            walk.issues
                .push(issue(severity, None, None, Some(path), message.into()));
        }
    }
    // Segments below a valid checkpoint's replay position may have been reclaimed by
    // compaction: a gap in the seal chain there is expected.
    let mut covered = 0;
    let mut valid = 0;
    let mut damaged = Vec::new();
    for (_, path) in &listing.checkpoints {
        match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| Checkpoint::decode(&bytes).map_err(|e| e.to_string()))
        {
            Ok(cp) => {
                valid += 1;
                covered = covered.max(cp.segment);
            }
            Err(why) => damaged.push((path.clone(), why)),
        }
    }
    for (path, why) in damaged {
        let severity = if valid > 0 {
            Severity::Warning
        } else {
            Severity::Problem
        };
        walk.issues.push(issue(
            severity,
            None,
            None,
            Some(&path),
            format!("checkpoint does not decode ({why}); recovery falls back to an older one"),
        ));
    }
    let closed = match &listing.closed {
        Ok(marker) => *marker,
        Err(why) => {
            walk.issues.push(issue(
                Severity::Problem,
                None,
                None,
                Some(&dir.join(CLOSED_FILE)),
                format!("not a valid clean-close marker: {why}"),
            ));
            None
        }
    };
    let last_id = listing.segments.last().map(|s| s.id);
    if let Some(m) = closed {
        if last_id.is_none_or(|last| last < m.segment) {
            walk.issues.push(issue(
                Severity::Problem,
                Some(m.segment),
                Some(0),
                None,
                "the store was closed cleanly in this segment, but it is missing".into(),
            ));
        }
    }
    let mut done_before = 0u64;
    let segments = listing.segments.clone();
    for (i, segment) in segments.iter().enumerate() {
        let id = segment.id;
        if segment.file_len > MAX_SEGMENT_SIZE {
            walk.issues.push(issue(
                Severity::Problem,
                Some(id),
                Some(0),
                None,
                format!(
                    "segment file of {} bytes exceeds the 1 GiB limit",
                    segment.file_len
                ),
            ));
        }
        let view = map(segment)?;
        let place = Place {
            id,
            is_last: i + 1 == segments.len(),
            closed_at: closed.filter(|m| m.segment == id).map_or(0, |m| m.offset),
        };
        let mut next_report = 0u64;
        let scan = scan_segment(&view, place, &mut |frame| {
            visit(segment, frame)?;
            if frame.offset >= next_report {
                progress(done_before + frame.offset);
                next_report = frame.offset + (256 << 10);
            }
            Ok(())
        })?;
        done_before += segment.file_len;
        progress(done_before);
        for finding in &scan.findings {
            walk.issues.push(match finding {
                Finding::Problem { offset, reason } => issue(
                    Severity::Problem,
                    Some(id),
                    Some(*offset),
                    None,
                    reason.clone(),
                ),
                Finding::TornTail {
                    offset,
                    reason,
                    discarded,
                } => issue(
                    Severity::Warning,
                    Some(id),
                    Some(*offset),
                    None,
                    format!(
                        "torn tail: {reason}; the next open cuts the log here{}",
                        match discarded {
                            0 => String::new(),
                            n => format!(" and discards {n} unconfirmed record(s)"),
                        }
                    ),
                ),
            });
        }
        if let Some((seal, next)) = scan.seal {
            let found = segments.get(i + 1).map(|s| s.id);
            if next <= id {
                walk.issues.push(issue(
                    Severity::Problem,
                    Some(id),
                    Some(seal),
                    None,
                    format!("the seal names segment {next}, which is not after segment {id}"),
                ));
            } else if let Some(found) = found.filter(|&f| f != next && f > covered) {
                walk.issues.push(issue(
                    Severity::Problem,
                    Some(id),
                    Some(seal),
                    None,
                    format!(
                        "the seal names segment {next} as the next one, but the next file is \
                         segment {found}: a segment is missing"
                    ),
                ));
            }
        }
        walk.scans.push((segment.clone(), scan));
    }
    walk.listing = listing;
    Ok(walk)
}
