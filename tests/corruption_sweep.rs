//! Proves that recovery never silently accepts damaged durable data: after a clean close, a
//! bit flip, a zeroed or garbage sector, a truncation, a length field pointing past the end or
//! a stale frame from another segment, anywhere in a three-segment store, either fails the
//! open with `Error::Corruption` at the damaged frame (or an earlier one) or leaves the
//! recovered queues exactly as they were.
//!
//! Each case reopens a copy of the closed store with the default recovery mode and is
//! classified:
//! - **detected**: `Error::Corruption` naming the damaged segment and an offset that is the
//!   start of the first damaged frame or of an earlier frame (offset 0 for a damaged segment
//!   header), or `Error::UnsupportedVersion` when the version field itself was hit;
//! - **harmless**: the open succeeds, the drained queues (ids, payloads, delivery counts,
//!   order) equal the expected state, and the damage touched no record (only the Commit
//!   marker, or bytes after the Seal / Commit);
//! - **tail cut**: the one case the format cannot detect (docs/guarantees.md, "The tail
//!   ambiguity"): damage in the last segment that destroys the Commit marker together with
//!   records before it, or a truncation of that file. The open must then cut the log at the
//!   group of the first damaged frame, and the state must be exactly that of the log prefix
//!   before it. (That such damage loses records silently contradicts guarantees.md; see
//!   `damage_reaching_the_commit_marker_is_reported`.)
//! - anything else (another state, an error of another kind or place, a panic) is a **silent
//!   miss**, and the test fails.
//!
//! Density: by default every word of every segment header and frame header, the first and
//! last word of every frame and every eighth word inside bodies, each with one of bit flip /
//! truncation / stale frame (rotating), plus both sector kinds at every sector and a bad
//! length in every frame. `WALQ_SWEEP_ALIGNED=1`: every 8-byte-aligned position with every
//! kind (minutes in debug). `WALQ_SWEEP_FULL=1`: every bit of every byte of every file, and
//! truncation and stale frames at every byte (hours in debug; use `--release`).

use std::collections::BTreeMap;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use walq::format::{decode_frame, segment_file_name, SegmentHeader, SEGMENT_HEADER_LEN};
use walq::io::{MemVfs, Vfs};
use walq::{Error, Store, StoreOptions};

const SEGMENT_SIZE: u64 = 64 << 10;
const SECTOR: usize = 512;
const QUEUES: [&str; 2] = ["jobs", "mail"];
const KIND_SEAL: u8 = 1;
const KIND_COMMIT: u8 = 2;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn dir() -> PathBuf {
    PathBuf::from("/store")
}

fn options() -> StoreOptions {
    StoreOptions::new().segment_size(SEGMENT_SIZE)
}

/// One store operation of the build, with what it wrote to the log.
#[derive(Debug, Clone)]
enum Op {
    Declare,
    /// A publish (one id) or a batch (several ids, one atomic group).
    Publish {
        queue: usize,
        ids: Vec<u64>,
        payloads: Vec<Vec<u8>>,
    },
    Receive {
        id: u64,
    },
    Ack {
        id: u64,
    },
    Nack {
        id: u64,
        requeue: bool,
    },
}

impl Op {
    /// Log records the operation appended (`persist_deliveries` is on, so a receive writes
    /// one Deliver record).
    fn records(&self) -> usize {
        match self {
            Op::Publish { ids, .. } => ids.len(),
            _ => 1,
        }
    }
}

/// A frame of a pristine segment.
#[derive(Debug, Clone, Copy)]
struct FrameInfo {
    offset: usize,
    len: usize,
    kind: u8,
    /// Offset of the first frame of the atomic group this frame belongs to.
    group_start: usize,
}

/// What a drain of every queue returned, in order: queue name and its deliveries.
type Drained = Vec<(String, Vec<Got>)>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    id: u64,
    payload: Vec<u8>,
    count: u32,
    redelivered: bool,
}

/// The closed store the sweep damages.
struct Built {
    segments: Vec<Vec<u8>>,
    frames: Vec<Vec<FrameInfo>>,
    ops: Vec<Op>,
    expected: Drained,
}

fn payload(id: u64, rng: &mut Rng) -> Vec<u8> {
    let len = if rng.below(10) == 0 {
        600 + rng.below(2500) as usize // spans sectors
    } else {
        rng.below(300) as usize
    };
    let mut p = id.to_le_bytes().to_vec();
    // Every eighth byte after the id is zero. Recovery's forward scan skips aligned words
    // whose kind byte is zero without decoding them, and the sweep's run time in debug builds
    // is dominated by that scan; the other bytes are never zero.
    p.extend((0..len).map(|i| {
        if i % 8 == 0 {
            0
        } else {
            (i as u64).wrapping_mul(31).wrapping_add(id) as u8 | 1
        }
    }));
    p
}

/// Runs a seeded mix of declares, publishes, batches, receives, acks, requeues and rejects on
/// a `MemVfs` until the log spans three segments, then closes the store.
fn build() -> Built {
    let vfs = MemVfs::new();
    let store = Store::open_with_vfs(Arc::new(vfs.clone()), &dir(), options()).expect("open");
    let mut rng = Rng(0x5EED_C0DE);
    let mut ops = Vec::new();
    let queues: Vec<_> = QUEUES
        .iter()
        .map(|name| {
            ops.push(Op::Declare);
            store.declare_queue(name).expect("declare")
        })
        .collect();
    let mut held: Vec<(usize, u64)> = Vec::new();
    let mut next_id = 0u64;
    let mut extra = 0;
    while extra < 40 {
        if store.stats().segments >= 3 {
            extra += 1;
        }
        let qi = rng.below(2) as usize;
        let q = &queues[qi];
        match rng.below(20) {
            0..=8 => {
                let p = payload(next_id, &mut rng);
                let id = q.publish(&p).expect("publish");
                assert_eq!(id.0, next_id);
                ops.push(Op::Publish {
                    queue: qi,
                    ids: vec![next_id],
                    payloads: vec![p],
                });
                next_id += 1;
            }
            9 | 10 => {
                let n = 2 + rng.below(4);
                let payloads: Vec<Vec<u8>> =
                    (0..n).map(|i| payload(next_id + i, &mut rng)).collect();
                let ids: Vec<u64> = q
                    .publish_batch(&payloads)
                    .expect("batch")
                    .iter()
                    .map(|id| id.0)
                    .collect();
                assert_eq!(ids, (next_id..next_id + n).collect::<Vec<_>>());
                ops.push(Op::Publish {
                    queue: qi,
                    ids,
                    payloads,
                });
                next_id += n;
            }
            11..=14 => {
                if let Some(d) = q.try_receive().expect("receive") {
                    ops.push(Op::Receive { id: d.id.0 });
                    held.push((qi, d.id.0));
                }
            }
            _ if held.is_empty() => {}
            15..=17 => {
                let (qi, id) = held.swap_remove(rng.below(held.len() as u64) as usize);
                queues[qi].ack(walq::MessageId(id)).expect("ack");
                ops.push(Op::Ack { id });
            }
            r => {
                let (qi, id) = held.swap_remove(rng.below(held.len() as u64) as usize);
                let requeue = r != 19;
                queues[qi].nack(walq::MessageId(id), requeue).expect("nack");
                ops.push(Op::Nack { id, requeue });
            }
        }
    }
    // The last record before the Commit marker is a publish.
    let p = payload(next_id, &mut rng);
    queues[0].publish(&p).expect("publish");
    ops.push(Op::Publish {
        queue: 0,
        ids: vec![next_id],
        payloads: vec![p],
    });
    store.close().expect("close");
    drop(store);

    let mut segments = Vec::new();
    for id in 0.. {
        match vfs.read_file(&dir().join(segment_file_name(id))) {
            Some(bytes) => segments.push(bytes),
            None => break,
        }
    }
    assert_eq!(segments.len(), 3, "the build spans three segments");
    // The clean close left its marker; every copy of the store carries it.
    let marker = vfs
        .read_file(&dir().join("CLOSED"))
        .expect("a clean close leaves CLOSED");
    let _ = CLOSED_MARKER.set(marker);
    let frames: Vec<Vec<FrameInfo>> = segments.iter().map(|s| frames(s)).collect();
    let records: usize = frames.iter().flatten().filter(|f| f.kind >= 16).count();
    assert_eq!(
        records,
        ops.iter().map(Op::records).sum::<usize>(),
        "every operation's records are in the log"
    );
    for (i, seg) in frames.iter().enumerate() {
        let last = seg.last().expect("frames").kind;
        let want = if i + 1 < frames.len() {
            KIND_SEAL
        } else {
            KIND_COMMIT
        };
        assert_eq!(last, want, "segment {i} ends with a Seal / Commit");
    }
    let expected = model(&ops);
    let built = Built {
        segments,
        frames,
        ops,
        expected,
    };
    // Control: the undamaged copy opens clean and holds exactly the modelled state.
    let observed = open_and_drain(&built.segments).expect("pristine open");
    assert_eq!(observed.truncated, None);
    assert_eq!(
        observed.state, built.expected,
        "pristine state matches the model"
    );
    built
}

fn frames(bytes: &[u8]) -> Vec<FrameInfo> {
    let header = SegmentHeader::decode(bytes).expect("segment header");
    let mut out = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN;
    let mut group_start = offset;
    let mut in_group = false;
    while let Ok(view) = decode_frame(
        &bytes[offset..],
        header.salt,
        header.segment_id,
        offset as u64,
    ) {
        if !in_group {
            group_start = offset;
        }
        in_group = view.header.flags.continues();
        out.push(FrameInfo {
            offset,
            len: view.next_offset as usize - offset,
            kind: view.header.kind,
            group_start,
        });
        offset = view.next_offset as usize;
        if view.header.kind == KIND_SEAL {
            break;
        }
    }
    out
}

/// The state a drain returns after replaying `ops`: every unsettled message, delivered-before
/// ones first by id, then never-delivered ones by id, with delivery count = receives + 1.
fn model(ops: &[Op]) -> Drained {
    struct Msg {
        queue: usize,
        payload: Vec<u8>,
        receives: u32,
        settled: bool,
    }
    let mut declared = 0;
    let mut msgs: BTreeMap<u64, Msg> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Declare => declared += 1,
            Op::Publish {
                queue,
                ids,
                payloads,
            } => {
                for (id, p) in ids.iter().zip(payloads) {
                    msgs.insert(
                        *id,
                        Msg {
                            queue: *queue,
                            payload: p.clone(),
                            receives: 0,
                            settled: false,
                        },
                    );
                }
            }
            Op::Receive { id } => msgs.get_mut(id).expect("published").receives += 1,
            Op::Ack { id } | Op::Nack { id, requeue: false } => {
                msgs.get_mut(id).expect("published").settled = true;
            }
            Op::Nack { requeue: true, .. } => {}
        }
    }
    (0..declared)
        .map(|qi| {
            let live: Vec<(&u64, &Msg)> = msgs
                .iter()
                .filter(|(_, m)| m.queue == qi && !m.settled)
                .collect();
            let order = live
                .iter()
                .filter(|(_, m)| m.receives > 0)
                .chain(live.iter().filter(|(_, m)| m.receives == 0));
            let got = order
                .map(|(id, m)| Got {
                    id: **id,
                    payload: m.payload.clone(),
                    count: m.receives + 1,
                    redelivered: m.receives > 0,
                })
                .collect();
            (QUEUES[qi].to_owned(), got)
        })
        .collect()
}

/// What a successful open showed.
#[derive(Debug)]
struct Observed {
    state: Drained,
    truncated: Option<(u64, u64)>,
}

/// The `CLOSED` marker the clean close of `build` wrote (the same for every build).
static CLOSED_MARKER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

fn store_copy(segments: &[Vec<u8>], closed: Option<&[u8]>) -> MemVfs {
    let vfs = MemVfs::new();
    vfs.create_dir_all(&dir()).expect("mkdir");
    for (id, bytes) in segments.iter().enumerate() {
        vfs.write_file(&dir().join(segment_file_name(id as u64)), bytes.clone());
    }
    if let Some(marker) = closed {
        vfs.write_file(&dir().join("CLOSED"), marker.to_vec());
    }
    vfs
}

/// Opens a copy of `segments` and drains every queue. A failed receive after a successful
/// open is reported as an `Err` string inside `Ok` (it is a miss, not a detection).
fn open_and_drain(segments: &[Vec<u8>]) -> Result<Observed, Error> {
    let vfs = store_copy(segments, CLOSED_MARKER.get().map(Vec::as_slice));
    let store = Store::open_with_vfs(Arc::new(vfs), &dir(), options())?;
    let truncated = store
        .recovery_report()
        .truncated
        .as_ref()
        .map(|t| (t.segment.0, t.offset));
    let mut state = Vec::new();
    for name in store.queue_names() {
        let q = store.queue(&name).expect("declared queue");
        let mut got = Vec::new();
        loop {
            match q.try_receive() {
                Ok(Some(d)) => got.push(Got {
                    id: d.id.0,
                    payload: d.payload,
                    count: d.delivery_count,
                    redelivered: d.redelivered,
                }),
                Ok(None) => break,
                Err(e) => {
                    // Make the state differ from any expected one.
                    got.push(Got {
                        id: u64::MAX,
                        payload: format!("receive failed: {e}").into_bytes(),
                        count: 0,
                        redelivered: false,
                    });
                    break;
                }
            }
        }
        state.push((name.to_string(), got));
    }
    Ok(Observed { state, truncated })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Flip bit `bit` (0..64) of the 8-byte word at the position.
    BitFlip(u8),
    ZeroSector,
    GarbageSector,
    Truncate,
    /// Set the frame's length field so that the frame ends past the end of the file.
    LenPastEnd,
    /// Set the frame's length field to `u32::MAX`.
    LenHuge,
    /// Copy a frame of another segment over the bytes at the position.
    Stale,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    segment: usize,
    pos: usize,
    kind: Kind,
}

/// The damaged segment bytes and the byte range the damage covers (for a truncation, from the
/// cut to the old end of the file). `None` if the damage would change nothing.
fn apply(built: &Built, case: Case) -> Option<(Vec<u8>, Range<usize>)> {
    let mut bytes = built.segments[case.segment].clone();
    let len = bytes.len();
    let pos = case.pos;
    let range = match case.kind {
        Kind::BitFlip(bit) => {
            let at = pos + usize::from(bit / 8);
            bytes[at] ^= 1 << (bit % 8);
            at..at + 1
        }
        Kind::ZeroSector | Kind::GarbageSector => {
            let end = (pos + SECTOR).min(len);
            let mut rng = Rng((case.segment as u64) << 32 | pos as u64);
            for b in &mut bytes[pos..end] {
                *b = if case.kind == Kind::ZeroSector {
                    0
                } else {
                    rng.next() as u8
                };
            }
            pos..end
        }
        Kind::Truncate => {
            bytes.truncate(pos);
            pos..len
        }
        Kind::LenPastEnd | Kind::LenHuge => {
            let field = if case.kind == Kind::LenHuge {
                u32::MAX
            } else {
                (len - pos - 16 + 1) as u32
            };
            bytes[pos + 4..pos + 8].copy_from_slice(&field.to_le_bytes());
            pos + 4..pos + 8
        }
        Kind::Stale => {
            let other = (case.segment + 1) % built.segments.len();
            let candidates = &built.frames[other];
            let f = candidates[(pos / 8) % candidates.len()];
            let src = &built.segments[other][f.offset..f.offset + f.len];
            let n = src.len().min(len - pos);
            bytes[pos..pos + n].copy_from_slice(&src[..n]);
            pos..pos + n
        }
    };
    if case.kind == Kind::Truncate {
        return Some((bytes, range));
    }
    // Only the bytes that really changed count as damage (zeroing a sector that was partly
    // zero already leaves the frames there intact).
    let old = &built.segments[case.segment];
    let first = range.clone().find(|&i| bytes[i] != old[i])?;
    let last = range.rev().find(|&i| bytes[i] != old[i])?;
    Some((bytes, first..last + 1))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Detected,
    Harmless,
    TailCut,
    Miss(String),
}

/// Classifies what opening the damaged store did. `result` is `Err` if the open or the drain
/// panicked.
fn classify(
    built: &Built,
    expected: &Drained,
    case: Case,
    damage: &Range<usize>,
    result: std::thread::Result<Result<Observed, Error>>,
) -> Outcome {
    let seg = case.segment;
    let last = seg + 1 == built.segments.len();
    let frames = &built.frames[seg];
    let touched: Vec<&FrameInfo> = frames
        .iter()
        .filter(|f| f.offset < damage.end && damage.start < f.offset + f.len)
        .collect();
    let touches_header = damage.start < SEGMENT_HEADER_LEN;
    let touches_records = touches_header || touched.iter().any(|f| f.kind != KIND_COMMIT);
    let reaches_commit =
        case.kind == Kind::Truncate || touched.iter().any(|f| f.kind == KIND_COMMIT);
    let observed = match result {
        Err(_) => return Outcome::Miss("panicked".into()),
        Ok(Err(Error::Corruption {
            segment, offset, ..
        })) => {
            let offset = offset as usize;
            let at_frame = frames
                .iter()
                .any(|f| f.offset == offset && f.offset <= damage.start);
            return if segment.0 != seg as u64 {
                Outcome::Miss(format!("corruption reported in segment {segment}"))
            } else if !(at_frame || (touches_header && offset == 0)) {
                Outcome::Miss(format!(
                    "corruption reported at offset {offset}, not at a frame at or before {}",
                    damage.start
                ))
            } else {
                Outcome::Detected
            };
        }
        Ok(Err(Error::UnsupportedVersion { path, .. })) => {
            let here = path.file_name() == Some(segment_file_name(seg as u64).as_ref());
            return if here && damage.start < 12 && damage.end > 8 {
                Outcome::Detected
            } else {
                Outcome::Miss(format!(
                    "unsupported version reported for {}",
                    path.display()
                ))
            };
        }
        Ok(Err(other)) => return Outcome::Miss(format!("open failed with {other}")),
        Ok(Ok(observed)) => observed,
    };
    if !touches_records {
        return if observed.state == *expected {
            Outcome::Harmless
        } else {
            Outcome::Miss("damage outside every record changed the state".into())
        };
    }
    if !(last && reaches_commit) {
        return Outcome::Miss(format!(
            "damage to a record was accepted (truncated: {:?}, state unchanged: {})",
            observed.truncated,
            observed.state == *expected
        ));
    }
    // The tail ambiguity: the damage took the Commit marker along. The log must be cut at
    // the first damaged frame's group, keeping exactly what was before it.
    let Some(first) = touched.first() else {
        return Outcome::Miss("no frame touched".into());
    };
    let cut = first.group_start;
    let reported = observed.truncated.map(|(s, o)| (s as usize, o as usize));
    let frame_boundary_truncation = case.kind == Kind::Truncate && first.offset == case.pos;
    let cut_ok = reported == Some((seg, cut))
        || (reported.is_none() && frame_boundary_truncation && cut == case.pos);
    if !cut_ok {
        return Outcome::Miss(format!(
            "tail cut reported as {reported:?}, expected at {seg}@{cut}"
        ));
    }
    match prefix_state(built, seg, cut) {
        Some(prefix) if observed.state == prefix => Outcome::TailCut,
        Some(_) => Outcome::Miss(format!("after a cut at {seg}@{cut} the state differs")),
        None => Outcome::Miss(format!("cut at {seg}@{cut} is not between operations")),
    }
}

/// The modelled state of the log prefix before `segment@offset`, if that is an operation
/// boundary.
fn prefix_state(built: &Built, segment: usize, offset: usize) -> Option<Drained> {
    let records = built
        .frames
        .iter()
        .enumerate()
        .flat_map(|(s, fs)| fs.iter().map(move |f| (s, f)))
        .filter(|(s, f)| f.kind >= 16 && (*s, f.offset) < (segment, offset))
        .count();
    let mut sum = 0;
    for (k, op) in built.ops.iter().enumerate() {
        if sum == records {
            return Some(model(&built.ops[..k]));
        }
        sum += op.records();
    }
    (sum == records).then(|| model(&built.ops))
}

fn run_case(built: &Built, case: Case) -> Option<(Outcome, Range<usize>)> {
    let (bytes, damage) = apply(built, case)?;
    let mut segments = built.segments.clone();
    segments[case.segment] = bytes;
    let result = catch_unwind(AssertUnwindSafe(|| open_and_drain(&segments)));
    Some((
        classify(built, &built.expected, case, &damage, result),
        damage,
    ))
}

/// How many positions the sweep damages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Density {
    /// Every 8-byte word of the segment headers and of every frame header, the first and last
    /// word of every frame, every eighth word inside bodies (a different phase per frame), and
    /// the first words after the Seal / Commit; each with one kind, rotating.
    Sampled,
    /// Every 8-byte-aligned position of the records, with every kind.
    Aligned,
    /// Every byte of every file, every bit of it; truncation and stale frames at every byte.
    Full,
}

fn positions(built: &Built, segment: usize, density: Density) -> Vec<usize> {
    let len = built.segments[segment].len();
    let frames = &built.frames[segment];
    let data_end = frames
        .last()
        .map_or(SEGMENT_HEADER_LEN, |f| f.offset + f.len);
    let mut out: Vec<usize> = match density {
        Density::Full => return (0..len).collect(),
        Density::Aligned => (0..data_end).step_by(8).collect(),
        Density::Sampled => {
            let mut out: Vec<usize> = (0..SEGMENT_HEADER_LEN).step_by(8).collect();
            for (i, f) in frames.iter().enumerate() {
                let end = f.offset + f.len;
                out.extend([f.offset, f.offset + 8, f.offset + 16, end - 8]);
                out.extend(
                    (f.offset + 24..end - 8)
                        .step_by(8)
                        .enumerate()
                        .filter(|(k, _)| (k + i) % 8 == 0)
                        .map(|(_, pos)| pos),
                );
            }
            out.retain(|&pos| pos < data_end);
            out
        }
    };
    // The first bytes after the Seal / Commit, and two samples of the zeros further on.
    out.extend((data_end..(data_end + 64).min(len)).step_by(8));
    out.extend([(data_end + len) / 2 / 8 * 8, len - 8]);
    out.sort_unstable();
    out.dedup();
    out
}

fn cases(built: &Built, density: Density) -> Vec<Case> {
    let mut out = Vec::new();
    for (segment, bytes) in built.segments.iter().enumerate() {
        let frames = &built.frames[segment];
        let data_end = frames
            .last()
            .map_or(SEGMENT_HEADER_LEN, |f| f.offset + f.len);
        let full = density == Density::Full;
        for (word, pos) in positions(built, segment, density).into_iter().enumerate() {
            if full {
                for bit in 0..8 {
                    out.push(Case {
                        segment,
                        pos: pos / 8 * 8,
                        kind: Kind::BitFlip((pos % 8 * 8 + bit) as u8),
                    });
                }
            } else if density == Density::Sampled {
                // One kind per sampled word, chosen by the word's place in the file: frames
                // start at varying multiples of 8, so over all frames each kind meets each
                // word of a frame header, body start and padding.
                let kind = match (pos / 8 + segment) % 3 {
                    0 => Kind::BitFlip(((word * 29 + segment * 7) % 64) as u8),
                    1 => Kind::Truncate,
                    _ => Kind::Stale,
                };
                out.push(Case { segment, pos, kind });
                continue;
            } else {
                // The flipped bit moves through the word as the sweep goes on.
                let bit = ((word * 29 + segment * 7) % 64) as u8;
                out.push(Case {
                    segment,
                    pos,
                    kind: Kind::BitFlip(bit),
                });
            }
            for kind in [Kind::Truncate, Kind::Stale] {
                out.push(Case { segment, pos, kind });
            }
        }
        for pos in (0..bytes.len()).step_by(SECTOR) {
            if full || pos < data_end + SECTOR {
                for kind in [Kind::ZeroSector, Kind::GarbageSector] {
                    out.push(Case { segment, pos, kind });
                }
            }
        }
        for f in frames {
            for kind in [Kind::LenPastEnd, Kind::LenHuge] {
                out.push(Case {
                    segment,
                    pos: f.offset,
                    kind,
                });
            }
        }
    }
    out
}

#[derive(Debug, Default, Clone)]
struct Totals {
    cases: usize,
    detected: usize,
    harmless: usize,
    tail_cut: usize,
    misses: Vec<String>,
}

fn sweep(built: &Built, cases: &[Case]) -> Totals {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    let parts: Vec<Totals> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut totals = Totals::default();
                    for case in cases.iter().skip(t).step_by(threads) {
                        let Some((outcome, damage)) = run_case(built, *case) else {
                            continue;
                        };
                        totals.cases += 1;
                        match outcome {
                            Outcome::Detected => totals.detected += 1,
                            Outcome::Harmless => totals.harmless += 1,
                            Outcome::TailCut => totals.tail_cut += 1,
                            Outcome::Miss(why) => totals.misses.push(format!(
                                "{:?} at segment {} offset {} (bytes {damage:?}): {why}",
                                case.kind, case.segment, case.pos
                            )),
                        }
                    }
                    totals
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sweep thread"))
            .collect()
    });
    parts.into_iter().fold(Totals::default(), |mut acc, t| {
        acc.cases += t.cases;
        acc.detected += t.detected;
        acc.harmless += t.harmless;
        acc.tail_cut += t.tail_cut;
        acc.misses.extend(t.misses);
        acc
    })
}

#[test]
fn every_corruption_is_detected_or_harmless() {
    let started = Instant::now();
    let built = build();
    let flag = |name| std::env::var(name).is_ok_and(|v| v == "1");
    let density = if flag("WALQ_SWEEP_FULL") {
        Density::Full
    } else if flag("WALQ_SWEEP_ALIGNED") {
        Density::Aligned
    } else {
        Density::Sampled
    };
    let cases = cases(&built, density);
    let totals = sweep(&built, &cases);
    println!(
        "corruption sweep ({density:?}): {} cases over {} segments ({} bytes), {} detected, \
         {} harmless, {} tail cuts, {} silent misses, in {:.1?}",
        totals.cases,
        built.segments.len(),
        built.segments.iter().map(Vec::len).sum::<usize>(),
        totals.detected,
        totals.harmless,
        totals.tail_cut,
        totals.misses.len(),
        started.elapsed()
    );
    for miss in totals.misses.iter().take(30) {
        println!("SILENT MISS: {miss}");
    }
    assert!(
        totals.misses.is_empty(),
        "{} silent misses (first: {})",
        totals.misses.len(),
        totals.misses[0]
    );
    // The sweep exercised every outcome it claims to tell apart.
    assert!(totals.detected > 1000, "{totals:?}");
    assert!(totals.harmless > 10, "{totals:?}");
    assert_eq!(
        totals.cases,
        totals.detected + totals.harmless + totals.tail_cut
    );
}

/// The classifier is not vacuous: a wrong expected state, a corruption reported in the wrong
/// place, and an accepted damaged record are all flagged as silent misses.
#[test]
fn the_classifier_flags_misses() {
    let built = build();
    let seg = built.segments.len() - 1;
    let commit = *built.frames[seg].last().expect("commit");
    // A bit flip in the zero-filled space after the Commit marker is harmless...
    let case = Case {
        segment: seg,
        pos: commit.offset + commit.len + 64,
        kind: Kind::BitFlip(3),
    };
    let (bytes, damage) = apply(&built, case).expect("damage");
    let mut segments = built.segments.clone();
    segments[seg] = bytes;
    let outcome = |expected: &Drained, result| classify(&built, expected, case, &damage, result);
    assert_eq!(
        outcome(&built.expected, Ok(open_and_drain(&segments))),
        Outcome::Harmless
    );
    // ...but not if the expected state differs by one payload byte...
    let mut wrong = built.expected.clone();
    let first = wrong
        .iter_mut()
        .find_map(|(_, got)| got.first_mut())
        .expect("a live message");
    first.payload[0] ^= 1;
    assert!(matches!(
        outcome(&wrong, Ok(open_and_drain(&segments))),
        Outcome::Miss(_)
    ));
    // ...or by one delivery count.
    let mut wrong = built.expected.clone();
    wrong[1].1.last_mut().expect("a live message").count += 1;
    assert!(matches!(
        outcome(&wrong, Ok(open_and_drain(&segments))),
        Outcome::Miss(_)
    ));
    // A corruption error naming another segment, or an offset past the damage, is a miss.
    let data = built.frames[0][3];
    let case = Case {
        segment: 0,
        pos: data.offset,
        kind: Kind::BitFlip(40),
    };
    let (_, damage) = apply(&built, case).expect("damage");
    let corruption = |segment, offset| {
        Ok(Err(Error::Corruption {
            segment: walq::SegmentId(segment),
            offset,
            reason: "test".into(),
        }))
    };
    let judge = |result| classify(&built, &built.expected, case, &damage, result);
    assert_eq!(judge(corruption(0, data.offset as u64)), Outcome::Detected);
    assert!(matches!(
        judge(corruption(1, data.offset as u64)),
        Outcome::Miss(_)
    ));
    assert!(matches!(
        judge(corruption(0, built.frames[0][4].offset as u64)),
        Outcome::Miss(_)
    ));
    assert!(matches!(judge(Ok(Err(Error::Closed))), Outcome::Miss(_)));
    assert!(matches!(judge(Err(Box::new("boom"))), Outcome::Miss(_)));
    // An open that accepts the damaged record with the right state is still a miss.
    assert!(matches!(
        judge(Ok(open_and_drain(&built.segments))),
        Outcome::Miss(_)
    ));
}

/// docs/guarantees.md, "The tail ambiguity": after a clean close "damage to any data record is
/// reported as corruption. Only the Commit record itself stays ambiguous, and cutting it loses
/// no data." Damage that covers the last data record *and* the Commit marker (one bad run of
/// sectors at the end of the log), or a truncation of the last segment, loses records that
/// were confirmed durable, and recovery cuts them off as a torn tail (or, for a cut at a frame
/// boundary, without any report).
#[test]
fn damage_reaching_the_commit_marker_is_reported() {
    let built = build();
    let seg = built.segments.len() - 1;
    let frames = &built.frames[seg];
    let commit = frames[frames.len() - 1];
    let record = frames[frames.len() - 2];
    assert_eq!(commit.kind, KIND_COMMIT);
    assert!(record.kind >= 16);
    let outcome = |bytes: Vec<u8>| {
        let mut segments = built.segments.clone();
        segments[seg] = bytes;
        match open_and_drain(&segments) {
            Err(Error::Corruption {
                segment, offset, ..
            }) if segment.0 == seg as u64 && offset as usize == record.group_start => {
                "detected".to_owned()
            }
            Err(e) => format!("failed with {e}"),
            Ok(o) => format!(
                "opened, truncated {:?}, {} messages instead of {}",
                o.truncated,
                o.state.iter().map(|q| q.1.len()).sum::<usize>(),
                built.expected.iter().map(|q| q.1.len()).sum::<usize>()
            ),
        }
    };
    let mut zeroed = built.segments[seg].clone();
    zeroed[record.offset + 16..commit.offset + commit.len].fill(0);
    let mut truncated = built.segments[seg].clone();
    truncated.truncate(record.offset);
    let zeroed = outcome(zeroed);
    let truncated = outcome(truncated);
    assert!(
        zeroed == "detected" && truncated == "detected",
        "durable records lost silently: last record and Commit zeroed: {zeroed}; \
         last segment truncated before the last record: {truncated}"
    );
}

/// docs/format.md, "Finding the end of the log": the forward scan after a bad frame is "one
/// pass" over the rest of the segment. A damaged record near the start of a segment must not
/// make the open cost much more than a clean open of the same segment.
#[test]
fn a_damaged_record_does_not_make_recovery_quadratic() {
    const SIZE: u64 = 1 << 20;
    let vfs = MemVfs::new();
    let opts = || {
        StoreOptions::new()
            .segment_size(SIZE)
            .fsync(walq::FsyncPolicy::Always)
    };
    let store = Store::open_with_vfs(Arc::new(vfs.clone()), &dir(), opts()).expect("open");
    let q = store.declare_queue("q").expect("declare");
    // Small messages, each received and acked: about 128 bytes of log per message.
    while store.stats().log_bytes < SIZE * 7 / 8 {
        q.publish(b"8 bytes!").expect("publish");
        let d = q.try_receive().expect("receive").expect("a message");
        q.ack(d.id).expect("ack");
    }
    assert_eq!(store.stats().segments, 1);
    store.close().expect("close");
    drop(store);
    let path = dir().join(segment_file_name(0));
    let clean = vfs.read_file(&path).expect("segment");
    let first = frames(&clean)[1];
    let mut damaged = clean.clone();
    damaged[first.offset + 20] ^= 0x10;

    let time_open = |bytes: &Vec<u8>| {
        let copy = store_copy(std::slice::from_ref(bytes), None);
        let started = Instant::now();
        let result = Store::open_with_vfs(Arc::new(copy), &dir(), opts()).map(drop);
        (started.elapsed(), result)
    };
    let clean_time = (0..3)
        .map(|_| {
            let (t, r) = time_open(&clean);
            r.expect("clean open");
            t
        })
        .min()
        .expect("timings");
    let (damaged_time, result) = time_open(&damaged);
    assert!(
        matches!(result, Err(Error::Corruption { offset, .. }) if offset as usize == first.offset),
        "{result:?}"
    );
    println!("clean open {clean_time:.1?}, open with a damaged first record {damaged_time:.1?}");
    assert!(
        damaged_time < clean_time * 20 + std::time::Duration::from_millis(50),
        "a damaged first record made the open take {damaged_time:.1?}, a clean open takes \
         {clean_time:.1?}"
    );
}
