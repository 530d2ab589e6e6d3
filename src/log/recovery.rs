//! The recovery scan (`docs/format.md`, "Finding the end of the log").
//!
//! Segments are scanned in id order. Each one must start with a valid header. A segment
//! that has a successor must end with a seal record; anything invalid before its seal is
//! corruption. In the last segment, the first invalid frame at offset `X` ends the log, and
//! what comes after decides whether that is a torn tail or corruption:
//!
//! - if some valid frame after `X` carries a durable mark greater than `X`, the writer knew
//!   the bytes at `X` were durable when it wrote that frame, so they were damaged after the
//!   fact: **corruption**, reported with segment and offset;
//! - otherwise nothing after `X` was ever confirmed durable, so the bad bytes are the torn
//!   or reordered remains of unsynced writes: a **torn tail**, cut off at `X` (or at the
//!   start of the atomic group `X` interrupts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::ahead;
use super::segment::{pending_path, Segment, PENDING_SUFFIX, TEMP_SUFFIX};
use super::{CLOSED_FILE, LOCK_FILE};
use crate::error::{Error, Result};
use crate::format::{
    all_zero, decode_frame, parse_checkpoint_file_name, parse_segment_file_name, zero_run,
    ClosedMarker, RecordKind, SealBody, SegmentHeader, SegmentHeaderError, CLOSED_MARKER_LEN,
    FORMAT_VERSION, FRAME_ALIGN, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::ids::{Position, SegmentId};
use crate::io::{Vfs, VfsFile};
use crate::options::{LogOptions, RecoveryMode, MAX_SEGMENT_SIZE};

/// Suffix given to segments set aside by [`RecoveryMode::Salvage`].
pub(crate) const QUARANTINE_SUFFIX: &str = ".quarantine";

/// A valid record found by recovery, handed to the visitor of [`Log::open`](super::Log::open).
#[derive(Debug, Clone, Copy)]
pub struct RecoveredRecord<'a> {
    /// Where the record is.
    pub position: Position,
    /// Its kind (16 and up; the log's own records are not visited).
    pub kind: u8,
    /// Its body.
    pub body: &'a [u8],
}

/// Where and why recovery cut the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment that was cut.
    pub segment: SegmentId,
    /// The offset it was cut at: everything from here on was discarded.
    pub offset: u64,
    /// What was wrong at that point.
    pub reason: String,
    /// How many checksum-valid frames lay after the cut (written, never confirmed durable,
    /// or, under [`RecoveryMode::Salvage`], lost to the corruption).
    pub discarded_frames: usize,
}

/// What recovery found and did, returned by [`Log::open`](super::Log::open) and
/// [`Store::recovery_report`](crate::Store::recovery_report).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments opened (scanned, or skipped because a checkpoint covers them).
    pub segments: usize,
    /// Segments before the checkpoint's replay position: opened and their headers checked,
    /// not scanned.
    pub skipped_segments: usize,
    /// Records replayed (the log's own seal and commit records not counted).
    pub records: u64,
    /// Bytes of valid records scanned.
    pub bytes: u64,
    /// Set if the tail of the log was cut (a torn tail, or corruption under salvage).
    pub truncated: Option<Truncation>,
    /// Segments renamed to `*.wal.quarantine` by [`RecoveryMode::Salvage`].
    pub quarantined: Vec<PathBuf>,
    /// Leftover temporary files of an interrupted segment creation, and the pending
    /// successor (`NNNN.wal.next`) of a roll-over whose predecessor's seal never reached the
    /// disk: deleted.
    pub removed_temp_files: Vec<PathBuf>,
    /// The pending successor of a roll-over that was still in flight (`NNNN.wal.next`), which
    /// recovery renamed into place because its predecessor ends with a valid seal.
    pub adopted_successor: Option<SegmentId>,
    /// The checkpoint the store recovered from (its sequence number), if any: records
    /// before its position were not replayed.
    pub checkpoint: Option<u64>,
    /// Checkpoint files passed over because they did not decode, with the reason (a newer
    /// one that is damaged makes recovery fall back to the previous one).
    pub rejected_checkpoints: Vec<(PathBuf, String)>,
}

pub(super) struct Recovered {
    pub(super) segments: BTreeMap<SegmentId, Arc<Segment>>,
    pub(super) active: Arc<Segment>,
    pub(super) report: RecoveryReport,
}

/// How the scan of one segment ended.
#[derive(Debug)]
enum ScanEnd {
    /// A seal record at `seal` ends the segment at `end` and names the next segment.
    Sealed {
        seal: u64,
        end: u64,
        next: SegmentId,
    },
    /// The segment stays open for appends at `cut`; unless `clean`, bytes after it must be
    /// discarded (the report says why).
    Open { cut: u64, clean: bool },
    /// Before the replay start: not scanned, readable up to the end of the file.
    Skipped { end: u64 },
}

pub(super) fn recover(
    vfs: &dyn Vfs,
    dir: &Path,
    opts: &LogOptions,
    start: Option<Position>,
    visit: &mut dyn FnMut(RecoveredRecord<'_>) -> Result<()>,
) -> Result<Recovered> {
    let mut report = RecoveryReport::default();
    let (mut ids, mut pending) = list_segments(vfs, dir, &mut report)?;
    // A pending successor can only follow the last segment (`docs/format.md`, "Segment
    // lifecycle"); it is scanned after it if that one ends with a valid seal.
    if let Some(id) = pending.filter(|id| ids.binary_search(id).is_ok()) {
        // Published already: a crash between the rename and the directory sync may leave
        // both names linked to the one file (`Segment::publish`). Drop the old name.
        let path = pending_path(&dir.join(crate::format::segment_file_name(id.0)));
        vfs.remove(&path)
            .map_err(|e| Error::io("remove pending segment", &path, e))?;
        report.removed_temp_files.push(path);
        pending = None;
    }
    if let Some(pending) = pending {
        if ids
            .last()
            .is_none_or(|last| last.0.checked_add(1) != Some(pending.0))
        {
            let name = format!(
                "{}{PENDING_SUFFIX}",
                crate::format::segment_file_name(pending.0)
            );
            return Err(Error::ForeignFile {
                path: dir.join(name),
            });
        }
        ids.push(pending);
    }
    // The pending successor while it still has its pending name.
    let mut unadopted = pending;
    if let Some(start) = start {
        if !ids.contains(&start.segment) {
            return Err(Error::corruption(
                start.segment,
                start.offset,
                "the checkpoint's replay position is in a segment that does not exist",
            ));
        }
    }
    let closed = read_closed_marker(vfs, dir)?;
    // Whether a second thread may verify checksums (asked once, when first needed).
    let mut parallel: Option<bool> = None;
    // The open segment that a clean close proved durable up to where recovery left it.
    let mut durable_to: Option<SegmentId> = None;
    let mut segments = BTreeMap::new();
    let mut last_sealed = true;
    // The id of the segment to create if the log ends on a seal: the one the seal names.
    let mut next_id = SegmentId(0);
    for (i, &id) in ids.iter().enumerate() {
        // A segment followed only by a pending successor was never synced whole: its tail
        // is judged as the last segment's is.
        let before_pending = pending.is_some() && i + 2 == ids.len();
        let is_last = i + 1 == ids.len() || before_pending;
        let path = dir.join(crate::format::segment_file_name(id.0));
        if pending == Some(id) {
            // Reached only behind a valid seal that names it. Its header was not synced before
            // publication: without one, the roll-over never happened, and the segment the
            // seal names is created afresh below. Otherwise adopt it.
            let pending_path = pending_path(&path);
            if !has_header(vfs, &pending_path, id)? {
                vfs.remove(&pending_path)
                    .map_err(|e| Error::io("remove pending segment", &pending_path, e))?;
                report.removed_temp_files.push(pending_path);
                break;
            }
            vfs.rename(&pending_path, &path)
                .map_err(|e| Error::io("rename pending segment", &path, e))?;
            report.adopted_successor = Some(id);
            unadopted = None;
        }
        let file = vfs
            .open(&path, true)
            .map_err(|e| Error::io("open segment", &path, e))?;
        let (header, end) = {
            let len = file
                .len()
                .map_err(|e| Error::io("stat segment", &path, e))?;
            if len > MAX_SEGMENT_SIZE {
                return Err(Error::corruption(
                    id,
                    0,
                    format!("segment file of {len} bytes exceeds the 1 GiB limit"),
                ));
            }
            let view = file
                .view(len)
                .map_err(|e| Error::io("map segment", &path, e))?;
            let header = match decode_header(&view, id, &path) {
                Ok(header) => header,
                Err(err @ Error::Corruption { .. }) if opts.recovery == RecoveryMode::Salvage => {
                    // Set this segment and every later one aside; the log ends before it.
                    drop(view);
                    for &later in ids.get(i..).unwrap_or_default() {
                        report
                            .quarantined
                            .push(quarantine(vfs, dir, later, unadopted)?);
                        if i == 0 {
                            // No sealed predecessor names a successor: start after them all.
                            next_id = SegmentId(later.0 + 1);
                        }
                    }
                    report.truncated = Some(Truncation {
                        segment: id,
                        offset: 0,
                        reason: err.to_string(),
                        discarded_frames: 0,
                    });
                    last_sealed = true;
                    break;
                }
                Err(err) => return Err(err),
            };
            report.segments += 1;
            if start.is_some_and(|start| id < start.segment) {
                // Before the checkpoint: trusted as written and sealed, never scanned.
                report.skipped_segments += 1;
                (header, ScanEnd::Skipped { end: len })
            } else {
                // A clean close recorded where the log ended: everything before it was
                // durable.
                let closed_at = closed.filter(|m| m.segment == id.0).map_or(0, |m| m.offset);
                let from = start.filter(|s| s.segment == id).map_or(0, |s| s.offset);
                let input = ScanInput {
                    view: &view,
                    file: file.as_ref(),
                    header: &header,
                    is_last,
                    closed_at,
                    from,
                    mode: opts.recovery,
                };
                // A second thread verifies checksums ahead if the segment is large enough and
                // there is a second core.
                let window = (view.len() as u64 >= ahead::MIN_SEGMENT
                    && *parallel.get_or_insert_with(|| {
                        std::thread::available_parallelism().is_ok_and(|n| n.get() > 1)
                    }))
                .then_some(ahead::WINDOW);
                let end = scan_segment(&input, window, &mut report, visit)?;
                let reached = match end {
                    ScanEnd::Sealed { end, .. } => end,
                    ScanEnd::Open { cut, .. } => cut,
                    ScanEnd::Skipped { end } => end,
                };
                if reached < from {
                    return Err(Error::corruption(
                        id,
                        reached,
                        format!(
                            "the log ends here, before offset {from} where the checkpoint \
                             says replay starts"
                        ),
                    ));
                }
                (header, end)
            }
        };
        let segment = |data_end| {
            Arc::new(Segment {
                id,
                salt: header.salt,
                path: path.clone(),
                file: Arc::clone(&file),
                data_end: AtomicU64::new(data_end),
            })
        };
        match end {
            ScanEnd::Skipped { end } => {
                segments.insert(id, segment(end));
                last_sealed = true;
            }
            ScanEnd::Sealed { seal, end, next } => {
                if next <= id {
                    return Err(Error::corruption(
                        id,
                        seal,
                        format!("the seal names segment {next}, which is not after segment {id}"),
                    ));
                }
                segments.insert(id, segment(end));
                last_sealed = true;
                next_id = next;
                match ids.get(i + 1) {
                    Some(&found) if found != next => {
                        let why = format!(
                            "the seal names segment {next} as the next one, but the next file \
                             is segment {found}: a segment is missing"
                        );
                        if opts.recovery != RecoveryMode::Salvage {
                            return Err(Error::corruption(id, seal, why));
                        }
                        for &later in ids.get(i + 1..).unwrap_or_default() {
                            report
                                .quarantined
                                .push(quarantine(vfs, dir, later, unadopted)?);
                        }
                        report.truncated = Some(Truncation {
                            segment: id,
                            offset: end,
                            reason: why,
                            discarded_frames: 0,
                        });
                        break;
                    }
                    _ => {}
                }
            }
            ScanEnd::Open { cut, clean } => {
                if !clean {
                    cut_file(file.as_ref(), &path, cut, opts)?;
                }
                // A clean close made the log durable up to its end: if that is exactly
                // where this segment ends, there is nothing left to make durable.
                durable_to = closed
                    .filter(|m| clean && m.segment == id.0 && m.offset == cut)
                    .map(|_| id);
                segments.insert(id, segment(cut));
                last_sealed = false;
                if before_pending {
                    // Its seal never reached the disk, so neither did anything confirmed in
                    // the successor: the roll-over never happened.
                    let successor = pending_path(
                        &dir.join(crate::format::segment_file_name(id.0.saturating_add(1))),
                    );
                    vfs.remove(&successor)
                        .map_err(|e| Error::io("remove pending segment", &successor, e))?;
                    report.removed_temp_files.push(successor);
                    break;
                }
                if !is_last {
                    // Only salvage continues past a damaged or unsealed segment that has
                    // successors: set them aside and make this one the last.
                    for &later in ids.get(i + 1..).unwrap_or_default() {
                        report
                            .quarantined
                            .push(quarantine(vfs, dir, later, unadopted)?);
                    }
                    break;
                }
            }
        }
    }

    if let Some(m) = closed {
        let last = segments.keys().next_back().copied();
        if last.is_none_or(|last| last.0 < m.segment) && opts.recovery != RecoveryMode::Salvage {
            return Err(Error::corruption(
                SegmentId(m.segment),
                0,
                "the store was closed cleanly in this segment, but it is missing",
            ));
        }
    }
    let active = if last_sealed {
        let created = Segment::create(vfs, dir, next_id, opts.segment_size, opts.preallocate)?;
        let created = Arc::new(created);
        segments.insert(created.id, Arc::clone(&created));
        created
    } else {
        let active = segments.values().next_back().cloned().ok_or_else(|| {
            Error::corruption(next_id, 0, "recovery ended without an active segment")
        })?;
        if opts.preallocate {
            active
                .file
                .preallocate(opts.segment_size)
                .map_err(|e| Error::io("preallocate segment", &active.path, e))?;
        }
        // Records recovered from the page cache after a process crash may not be durable
        // yet; make them so before anything is served from them. After a clean close that
        // ended the log where it ends now they are: the close synced them before it wrote
        // its marker (a preallocation just extended need not be durable: a crash that loses
        // it leaves a shorter file, which recovery reads the same).
        if durable_to != Some(active.id) {
            active
                .file
                .sync_data()
                .map_err(|e| Error::io("fdatasync", &active.path, e))?;
        }
        active
    };
    if closed.is_some() {
        // The marker describes the log as it was closed; from now on it will grow.
        let path = dir.join(CLOSED_FILE);
        vfs.remove(&path)
            .map_err(|e| Error::io("remove close marker", &path, e))?;
    }
    vfs.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))?;
    Ok(Recovered {
        segments,
        active,
        report,
    })
}

/// Lists the segment ids in `dir` and the id of a pending successor, if there is one;
/// deletes leftover temporary files and refuses foreign ones (a second pending successor
/// among them).
fn list_segments(
    vfs: &dyn Vfs,
    dir: &Path,
    report: &mut RecoveryReport,
) -> Result<(Vec<SegmentId>, Option<SegmentId>)> {
    let names = vfs
        .list(dir)
        .map_err(|e| Error::io("list directory", dir, e))?;
    let mut ids = Vec::new();
    let mut pending = None;
    for name in names {
        let checkpoint = |n: &str| parse_checkpoint_file_name(n).is_some();
        if name == LOCK_FILE
            || name == CLOSED_FILE
            || name.contains(QUARANTINE_SUFFIX)
            || checkpoint(&name)
            || name.strip_suffix(TEMP_SUFFIX).is_some_and(checkpoint)
        {
            // Checkpoint files (and their temporary copies) belong to the store above.
            continue;
        }
        if name == format!("{CLOSED_FILE}{TEMP_SUFFIX}") {
            // A close interrupted before its marker was in place: the marker never existed.
            let path = dir.join(&name);
            vfs.remove(&path)
                .map_err(|e| Error::io("remove temporary marker", &path, e))?;
            report.removed_temp_files.push(path);
            continue;
        }
        if let Some(id) = parse_segment_file_name(&name) {
            ids.push(SegmentId(id));
        } else if let Some(id) = name
            .strip_suffix(PENDING_SUFFIX)
            .and_then(parse_segment_file_name)
            .filter(|_| pending.is_none())
        {
            pending = Some(SegmentId(id));
        } else if name
            .strip_suffix(TEMP_SUFFIX)
            .and_then(parse_segment_file_name)
            .is_some()
        {
            let path = dir.join(&name);
            vfs.remove(&path)
                .map_err(|e| Error::io("remove temporary segment", &path, e))?;
            report.removed_temp_files.push(path);
        } else {
            return Err(Error::ForeignFile {
                path: dir.join(name),
            });
        }
    }
    ids.sort_unstable();
    Ok((ids, pending))
}

/// Whether the file at `path` starts with a valid header of segment `id`.
fn has_header(vfs: &dyn Vfs, path: &Path, id: SegmentId) -> Result<bool> {
    let file = vfs
        .open(path, false)
        .map_err(|e| Error::io("open pending segment", path, e))?;
    let mut bytes = [0u8; SEGMENT_HEADER_LEN];
    let len = file
        .len()
        .map_err(|e| Error::io("stat pending segment", path, e))?;
    if len < SEGMENT_HEADER_LEN as u64 {
        return Ok(false);
    }
    crate::io::read_exact_at(file.as_ref(), &mut bytes, 0)
        .map_err(|e| Error::io("read pending segment", path, e))?;
    Ok(SegmentHeader::decode(&bytes).is_ok_and(|h| h.segment_id == id.0))
}

/// Reads the clean-close marker, if the last close left one.
fn read_closed_marker(vfs: &dyn Vfs, dir: &Path) -> Result<Option<ClosedMarker>> {
    let path = dir.join(CLOSED_FILE);
    let file = match vfs.open(&path, false) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open close marker", &path, e)),
    };
    let len = file
        .len()
        .map_err(|e| Error::io("stat close marker", &path, e))?;
    let mut bytes = [0u8; CLOSED_MARKER_LEN];
    if len != CLOSED_MARKER_LEN as u64 {
        return Err(Error::ForeignFile { path });
    }
    crate::io::read_exact_at(file.as_ref(), &mut bytes, 0)
        .map_err(|e| Error::io("read close marker", &path, e))?;
    ClosedMarker::decode(&bytes)
        .map(Some)
        .ok_or(Error::ForeignFile { path })
}

fn decode_header(view: &[u8], id: SegmentId, path: &Path) -> Result<SegmentHeader> {
    let header = SegmentHeader::decode(view).map_err(|e| match e {
        SegmentHeaderError::UnsupportedVersion(found) => Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        },
        other => Error::corruption(id, 0, format!("bad segment header: {other:?}")),
    })?;
    if header.segment_id != id.0 {
        return Err(Error::corruption(
            id,
            0,
            format!(
                "header names segment {} but the file name says {id}",
                header.segment_id
            ),
        ));
    }
    Ok(header)
}

/// What the scan of one segment works on.
struct ScanInput<'a> {
    /// All of `file`.
    view: &'a [u8],
    file: &'a dyn VfsFile,
    header: &'a SegmentHeader,
    /// Whether it is the last segment.
    is_last: bool,
    /// Where a clean close said the log ends in this segment (0 if not in this one).
    closed_at: u64,
    /// Records before this offset are checked but not visited.
    from: u64,
    mode: RecoveryMode,
}

/// [`scan`], with checksums verified ahead on a second thread, `window` bytes at a time, if
/// `window` is given (see [`ahead`]; one thread if it cannot be started).
fn scan_segment(
    input: &ScanInput<'_>,
    window: Option<u64>,
    report: &mut RecoveryReport,
    visit: &mut dyn FnMut(RecoveredRecord<'_>) -> Result<()>,
) -> Result<ScanEnd> {
    let (salt, id) = (input.header.salt, input.header.segment_id);
    let Some(window) = window else {
        return scan(input, &mut ahead::Checker::alone(salt, id), report, visit);
    };
    let shared = ahead::Shared::default();
    let view = input.view;
    std::thread::scope(|s| {
        let helper = std::thread::Builder::new()
            .name("walq-recovery".into())
            .spawn_scoped(s, || ahead::verify(view, salt, id, window, &shared));
        let mut checker = match helper {
            Ok(_) => ahead::Checker::with_helper(salt, id, window, &shared),
            Err(_) => ahead::Checker::alone(salt, id),
        };
        let end = scan(input, &mut checker, report, visit);
        shared.cancel();
        end
    })
}

/// Scans one segment, visiting complete groups, and decides how it ends. `checker` decodes
/// the frames.
fn scan(
    input: &ScanInput<'_>,
    checker: &mut ahead::Checker<'_>,
    report: &mut RecoveryReport,
    visit: &mut dyn FnMut(RecoveredRecord<'_>) -> Result<()>,
) -> Result<ScanEnd> {
    let &ScanInput {
        view,
        file,
        header,
        is_last,
        closed_at,
        from,
        mode,
    } = input;
    // `decode_header` checked that the header names this segment.
    let id = SegmentId(header.segment_id);
    let mut offset = SEGMENT_HEADER_LEN as u64;
    let mut group: Vec<RecoveredRecord<'_>> = Vec::new();
    let mut group_start = offset;
    let bad = loop {
        let rest = view.get(offset as usize..).unwrap_or_default();
        let frame = match checker.decode(rest, offset) {
            Ok(frame) => frame,
            Err(e) => break e,
        };
        if u64::from(frame.header.mark) > offset {
            return Err(Error::corruption(
                id,
                offset,
                "durable mark points past its own record",
            ));
        }
        let position = Position {
            segment: id,
            offset,
        };
        let kind = frame.header.kind;
        match RecordKind::from_u8(kind) {
            Some(RecordKind::Seal) => {
                if !group.is_empty() {
                    return Err(Error::corruption(
                        id,
                        offset,
                        "seal record inside an atomic group",
                    ));
                }
                let body =
                    SealBody::decode(frame.body).map_err(|e| Error::corruption(id, offset, e))?;
                if frame.header.flags.continues() {
                    return Err(Error::corruption(
                        id,
                        offset,
                        "seal record flagged as continuing",
                    ));
                }
                return Ok(ScanEnd::Sealed {
                    seal: offset,
                    end: frame.next_offset,
                    next: SegmentId(body.next_segment_id),
                });
            }
            Some(RecordKind::Commit) => {
                if !frame.body.is_empty() || frame.header.flags.continues() {
                    return Err(Error::corruption(id, offset, "malformed commit record"));
                }
                if !group.is_empty() {
                    return Err(Error::corruption(
                        id,
                        offset,
                        "commit record inside an atomic group",
                    ));
                }
            }
            _ if kind < 16 => {
                return Err(Error::corruption(
                    id,
                    offset,
                    format!("unknown log record kind {kind}"),
                ));
            }
            _ => {
                if group.is_empty() {
                    group_start = offset;
                }
                group.push(RecoveredRecord {
                    position,
                    kind,
                    body: frame.body,
                });
                if !frame.header.flags.continues() {
                    for record in group.drain(..) {
                        if record.position.offset >= from {
                            report.records += 1;
                            visit(record)?;
                        }
                    }
                }
            }
        }
        report.bytes += frame.next_offset - offset;
        offset = frame.next_offset;
    };

    let cut = if group.is_empty() {
        offset
    } else {
        group_start
    };
    let tail_is_zero = tail_is_zero(view, file, offset);
    let after = if tail_is_zero {
        AfterBad {
            frames: 0,
            max_mark: 0,
        }
    } else {
        forward_scan(view, header, id, offset, cut)
    };
    if group.is_empty() && after.frames == 0 && tail_is_zero && closed_at <= offset {
        // The ordinary end of an open segment: zeros (preallocated space) or end of file.
        if is_last || mode == RecoveryMode::Salvage {
            return Ok(ScanEnd::Open { cut, clean: true });
        }
        return Err(Error::corruption(
            id,
            offset,
            "segment ends without a seal record, but a later segment exists",
        ));
    }
    let reason = if group.is_empty() {
        bad.to_string()
    } else {
        format!("atomic group cut short ({bad})")
    };
    let proven_durable = after.max_mark > cut || closed_at > cut;
    if !is_last || proven_durable || mode == RecoveryMode::Strict {
        let why = if !is_last {
            format!("{reason}, in a sealed part of the log")
        } else if closed_at > cut {
            format!("{reason}, before offset {closed_at} where the store was closed cleanly")
        } else if proven_durable {
            format!("{reason}, followed by records written after this point was durable")
        } else {
            format!("{reason} (torn tail; strict recovery mode)")
        };
        if mode != RecoveryMode::Salvage {
            return Err(Error::corruption(id, cut, why));
        }
        report.truncated = Some(Truncation {
            segment: id,
            offset: cut,
            reason: why,
            discarded_frames: after.frames,
        });
        return Ok(ScanEnd::Open { cut, clean: false });
    }
    let reason = format!("torn tail: {reason}");
    report.truncated = Some(Truncation {
        segment: id,
        offset: cut,
        reason,
        discarded_frames: after.frames,
    });
    Ok(ScanEnd::Open { cut, clean: false })
}

/// Whether every byte of `view` (all of `file`) from `from` on is zero.
///
/// Stretches the file system reports as never written (holes, blocks preallocated and never
/// written: see [`VfsFile::data_after`]) read as zeros and are not read. For an open segment
/// that is usually most of the file: reading it would fault in every page of it (and, the
/// first time, have the kernel zero-fill each), for nothing. The stretches that may hold
/// data are read in full, as is everything when the file system cannot tell.
fn tail_is_zero(view: &[u8], file: &dyn VfsFile, from: u64) -> bool {
    let len = view.len() as u64;
    let mut pos = from;
    while pos < len {
        let (start, end) = match file.data_after(pos) {
            Ok(None) => return true,
            Ok(Some((start, end))) => (start.max(pos), end.min(len)),
            // Cannot tell: read the rest.
            Err(_) => (pos, len),
        };
        if start >= len {
            return true;
        }
        // An empty or inverted stretch makes no sense: read the rest.
        let end = if end > start { end } else { len };
        if !all_zero(view.get(start as usize..end as usize).unwrap_or_default()) {
            return false;
        }
        pos = end;
    }
    true
}

struct AfterBad {
    /// Checksum-valid frames found after the bad offset.
    frames: usize,
    /// The highest durable mark among them (0 if none).
    max_mark: u64,
}

/// Looks for checksum-valid frames at the aligned offsets after `bad`, stopping at the first
/// one whose durable mark is past `cut` (that alone decides: corruption).
///
/// Cost: linear in the rest of the segment. A frame that verifies is skipped as a whole
/// (genuine frames never overlap, so nothing inside one needs trying), and all-zero or
/// implausible headers are rejected before any checksum is computed. Without the skip,
/// every offset inside a long run of valid frames would be tried, each checksumming up to
/// the length its bytes happen to claim: quadratic in the segment size.
fn forward_scan(
    view: &[u8],
    header: &SegmentHeader,
    id: SegmentId,
    bad: u64,
    cut: u64,
) -> AfterBad {
    let mut result = AfterBad {
        frames: 0,
        max_mark: 0,
    };
    let mut offset = bad + FRAME_ALIGN as u64;
    while let Some(rest) = view.get(offset as usize..) {
        if rest.len() < FRAME_HEADER_LEN {
            break;
        }
        // A frame's 16-byte header is never all zero, so of a run of zero words only the
        // last can start one (its second half being the next, non-zero word).
        let zeros = zero_run(rest);
        if zeros >= 2 * FRAME_ALIGN {
            offset += (zeros - FRAME_ALIGN) as u64;
            continue;
        }
        let kind = rest.get(8).copied().unwrap_or(0);
        if kind != 0 {
            if let Ok(frame) = decode_frame(rest, header.salt, id.0, offset) {
                let mark = u64::from(frame.header.mark);
                if mark <= offset {
                    result.frames += 1;
                    result.max_mark = result.max_mark.max(mark);
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
    result
}

/// Cuts a segment file at `cut`, restores its preallocation and syncs it.
fn cut_file(file: &dyn VfsFile, path: &Path, cut: u64, opts: &LogOptions) -> Result<()> {
    file.set_len(cut)
        .map_err(|e| Error::io("truncate torn tail", path, e))?;
    if opts.preallocate {
        file.preallocate(opts.segment_size)
            .map_err(|e| Error::io("preallocate segment", path, e))?;
    }
    file.sync_data()
        .map_err(|e| Error::io("fdatasync", path, e))
}

/// Renames segment `id` (under its pending name if it is the `pending` successor) to a
/// quarantine name that no earlier salvage used.
fn quarantine(
    vfs: &dyn Vfs,
    dir: &Path,
    id: SegmentId,
    pending: Option<SegmentId>,
) -> Result<PathBuf> {
    let mut from = dir.join(crate::format::segment_file_name(id.0));
    if pending == Some(id) {
        from = pending_path(&from);
    }
    let existing = vfs
        .list(dir)
        .map_err(|e| Error::io("list directory", dir, e))?;
    // Never overwrite the copy an earlier salvage set aside.
    let base = format!(
        "{}{QUARANTINE_SUFFIX}",
        crate::format::segment_file_name(id.0)
    );
    let name = (0u32..)
        .map(|n| {
            if n == 0 {
                base.clone()
            } else {
                format!("{base}.{n}")
            }
        })
        .find(|name| !existing.contains(name))
        .unwrap_or(base);
    let to = dir.join(name);
    vfs.rename(&from, &to)
        .map_err(|e| Error::io("quarantine segment", &from, e))?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_frame, FrameHeader, RecordFlags};
    use crate::io::MemVfs;

    const SALT: u64 = 0x5eed_0fa1_15a1_7eed;
    const ID: u64 = 3;

    /// A segment image: header, then frames of varied lengths, kinds, groups and marks, then
    /// (if `sealed`) a seal, then `zeros` bytes of zeros.
    fn image(frames: usize, sealed: bool, zeros: usize) -> Vec<u8> {
        let header = SegmentHeader {
            segment_id: ID,
            salt: SALT,
            created_unix_ms: 1,
        };
        let mut out = header.encode().to_vec();
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut prev = 0u64;
        let mut in_group = false;
        for i in 0..frames {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let offset = out.len() as u64;
            let (kind, continues) = match rng % 10 {
                // Commits only between groups (inside one they are corruption).
                0 if !in_group => (RecordKind::Commit.code(), false),
                1 | 2 => (17, true),
                _ => (16 + (rng >> 8) as u8 % 8, false),
            };
            let len = if kind == RecordKind::Commit.code() {
                0
            } else {
                (rng >> 20) as usize % 300
            };
            let body: Vec<u8> = (0..len).map(|j| (i * 7 + j) as u8).collect();
            in_group = continues && i + 1 < frames;
            let flags = if in_group {
                RecordFlags::CONTINUES
            } else {
                RecordFlags::NONE
            };
            let header = FrameHeader {
                kind,
                flags,
                mark: u32::try_from(prev).unwrap(),
            };
            encode_frame(&mut out, SALT, ID, offset, header, &[&body]);
            prev = offset;
        }
        if sealed {
            let offset = out.len() as u64;
            let header = FrameHeader {
                kind: RecordKind::Seal.code(),
                flags: RecordFlags::NONE,
                mark: u32::try_from(prev).unwrap(),
            };
            let body = SealBody {
                next_segment_id: ID + 1,
            }
            .encode();
            encode_frame(&mut out, SALT, ID, offset, header, &[&body]);
        }
        out.resize(out.len() + zeros, 0);
        out
    }

    /// Everything a scan produces, as text: its result, the report and the visited records.
    fn run(bytes: &[u8], window: Option<u64>, plan: (bool, u64, u64, RecoveryMode)) -> String {
        run_with(bytes, window, plan, true)
    }

    /// [`run`]; `fail_visit`: the visitor fails at the first record of 299 bytes.
    fn run_with(
        bytes: &[u8],
        window: Option<u64>,
        plan: (bool, u64, u64, RecoveryMode),
        fail_visit: bool,
    ) -> String {
        let (is_last, closed_at, from, mode) = plan;
        let vfs = MemVfs::new();
        vfs.create_dir_all(Path::new("/d")).unwrap();
        let file = vfs.create(Path::new("/d/seg")).unwrap();
        crate::io::write_all_at(file.as_ref(), bytes, 0).unwrap();
        let view = file.view(bytes.len() as u64).unwrap();
        let header = SegmentHeader::decode(&view).unwrap();
        let input = ScanInput {
            view: &view,
            file: file.as_ref(),
            header: &header,
            is_last,
            closed_at,
            from,
            mode,
        };
        let mut report = RecoveryReport::default();
        let mut visited = Vec::new();
        let end = scan_segment(&input, window, &mut report, &mut |r| {
            visited.push(format!("{}:{}:{}", r.position.offset, r.kind, r.body.len()));
            // A visitor error part-way: it must win over anything the scan finds later.
            if fail_visit && r.body.len() == 299 {
                return Err(Error::corruption(
                    SegmentId(ID),
                    r.position.offset,
                    "visitor",
                ));
            }
            Ok(())
        });
        format!("{end:?}\n{report:?}\n{visited:?}")
    }

    /// Scanning with checksums verified ahead on a second thread gives exactly what one
    /// thread gives: on intact segments, and with a bit flipped at every 8th byte, or bytes
    /// zeroed or the file cut at every 48th, in every mode, with windows from smaller than a
    /// frame to larger than the segment.
    #[test]
    fn verifying_ahead_changes_nothing() {
        let plans = [
            (true, 0, 0, RecoveryMode::TolerateTornTail),
            (false, 0, 0, RecoveryMode::TolerateTornTail),
            (true, 0, 0, RecoveryMode::Strict),
            (true, 0, 0, RecoveryMode::Salvage),
            (true, 5000, 0, RecoveryMode::TolerateTornTail),
            (true, 0, 3000, RecoveryMode::TolerateTornTail),
        ];
        let windows = [Some(8), Some(100), Some(1000), Some(1 << 20)];
        for (frames, sealed) in [(120, false), (90, true), (0, false)] {
            let intact = image(frames, sealed, 512);
            let mut damaged = vec![intact.clone()];
            for at in (SEGMENT_HEADER_LEN..intact.len()).step_by(8) {
                let mut flipped = intact.clone();
                flipped[at + (at / 8) % 8] ^= 1 << (at % 7);
                damaged.push(flipped);
                if at % 48 == 0 {
                    let mut zeroed = intact.clone();
                    zeroed[at..(at + 16).min(intact.len())].fill(0);
                    damaged.push(zeroed);
                    damaged.push(intact[..at + 3].to_vec());
                }
            }
            for (i, bytes) in damaged.iter().enumerate() {
                // Every plan for the intact image; one each (in turn) for the damaged ones.
                let chosen = if i == 0 {
                    &plans[..]
                } else {
                    &plans[i % plans.len()..][..1]
                };
                for &plan in chosen {
                    let alone = run(bytes, None, plan);
                    for window in windows {
                        assert_eq!(
                            run(bytes, window, plan),
                            alone,
                            "{frames} frames, window {window:?}, {plan:?}"
                        );
                    }
                }
            }
        }
    }

    /// The helper really verifies: the scan skips checksums only where the helper verified
    /// them, so a bad checksum in a helper's window is still found.
    #[test]
    fn a_bad_checksum_in_a_helper_window_is_found() {
        let intact = image(200, false, 0);
        // The last segment: a bad frame followed by frames whose marks prove it durable is
        // corruption (a torn tail if none does); intact, the segment simply ends.
        let plan = (true, 0, 0, RecoveryMode::TolerateTornTail);
        let window = Some(1000);
        let intact_run = run_with(&intact, window, plan, false);
        assert!(intact_run.starts_with("Ok(Open"), "{intact_run}");
        assert!(intact_run.contains("clean: true"), "{intact_run}");
        // Body bytes of frames in windows 1, 9 (the helper's) and near the end.
        for at in [1500, 9500, intact.len() - 200] {
            let mut bytes = intact.clone();
            bytes[at] ^= 0x40;
            let alone = run_with(&bytes, None, plan, false);
            assert!(
                alone.contains("checksum mismatch") || alone.starts_with("Err(Corruption"),
                "{alone}"
            );
            for _ in 0..20 {
                assert_eq!(run_with(&bytes, window, plan, false), alone);
            }
        }
    }
}
