// The logic of the fuzz targets, shared by `fuzz/fuzz_targets/*.rs` (under libFuzzer) and by
// `tests/fuzz_corpus.rs` (which replays the corpus and any crash artifacts under `cargo test`).
// This file is `include!`d, so it holds no inner attributes or `//!` comments.
//
// Properties checked (a panic is a finding):
// - decoding any bytes as a segment header, a frame or a record body returns a value or an
//   error, never panics; whatever decodes re-encodes to exactly the same bytes;
// - opening a directory holding arbitrary segment files returns `Ok` or one of the typed
//   errors that describe bad files (`Corruption`, `UnsupportedVersion`, `ForeignFile`);
// - a store that opened serves every recovered message, accepts acks, nacks and publishes,
//   closes, and reopens with the same counters (unacked deliveries ready again).

use std::path::Path;
use std::sync::Arc;

use walq::format::{
    decode_frame, encode_frame, frame_len, segment_file_name, AckBody, DeliverBody, Disposition,
    Checkpoint, FrameError, FrameHeader, PublishBody, PublishHeader, QueueDeclareBody, QueueSettings, MoveBody, MoveReason, RecordFlags, RecordKind, RelocateBody,
    RollbackBody, SealBody, SegmentHeader, FRAME_ALIGN, PUBLISH_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use walq::io::{MemVfs, Vfs};
use walq::{Error, FsyncPolicy, RecoveryMode, Store, StoreOptions, MIN_SEGMENT_SIZE};

/// Salt of synthesized segments (mixed with the segment id).
pub const SYNTH_SALT: u64 = 0x5eed_0000_a11c_e5ed;

/// Synthesized segments stop growing past this size (well inside a 64 KiB segment).
pub const SYNTH_MAX_LEN: usize = 32 << 10;

/// What one input did, so that the corpus replay can check its seeds reach deep paths.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Frames that decoded.
    pub frames: usize,
    /// The store opened.
    pub opened: bool,
    /// Messages delivered after opening.
    pub delivered: usize,
}

/// Reads a fuzz input front to back; missing bytes read as zero.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn u8(&mut self) -> u8 {
        self.byte().unwrap_or(0)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// The salt of synthesized segment `id`.
pub fn synth_salt(id: u64) -> u64 {
    SYNTH_SALT ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Builds a segment with a valid header and valid frames from a script, so that the fuzzer
/// reaches recovery and replay past the checksums. Each script op is one byte, then its
/// operands:
///
/// op & 0x3f % 10: 0 declare(q) | 1 publish(id, q, n, payload[n % 32]) | 2 ack(a, b) |
/// 3 rollback(id, count, disposition) | 4 deliver(id, count) | 5 seal | 6 commit |
/// 7 raw(kind, n, body[n]) | 8 damage(offset u16, xor) | 9 zeros(n * 8 bytes);
/// op & 0x80 sets CONTINUES; op & 0x40 sets the durable mark to the frame's own offset;
/// op & 0x3f >= 60 sets it past the frame (invalid).
pub fn synth_segment(id: u64, script: &[u8]) -> Vec<u8> {
    let salt = synth_salt(id);
    let mut seg = SegmentHeader {
        segment_id: id,
        salt,
        created_unix_ms: 1_700_000_000_000,
    }
    .encode()
    .to_vec();
    let mut damage = Vec::new();
    let mut s = Bytes(script);
    while let Some(op) = s.byte() {
        if seg.len() > SYNTH_MAX_LEN {
            break;
        }
        let (kind, body): (u8, Vec<u8>) = match (op & 0x3f) % 10 {
            0 => {
                let q = u32::from(s.u8() % 4);
                let body = QueueDeclareBody {
                    queue_id: q,
                    settings: QueueSettings::default(),
                    name: format!("q{q}"),
                }
                .encode();
                (RecordKind::QueueDeclare.code(), body)
            }
            1 => {
                let header = PublishHeader {
                    id: u64::from(s.u8()),
                    queue_id: u32::from(s.u8() % 4),
                    published_ms: 1_700_000_000_000,
                    expires_ms: 0,
                    not_before_ms: 0,
                };
                let n = usize::from(s.u8() % 32);
                let mut body = header.encode().to_vec();
                body.extend_from_slice(s.take(n));
                (RecordKind::Publish.code(), body)
            }
            2 => {
                let (a, b) = (u64::from(s.u8()), u64::from(s.u8()));
                let body = AckBody {
                    ranges: vec![(a.min(b), a.max(b))],
                }
                .encode();
                (RecordKind::Ack.code(), body)
            }
            3 => {
                let id = u64::from(s.u8());
                let delivery_count = u32::from(s.u8());
                let how = s.u8();
                let requeue = how % 3 == 0;
                let body = RollbackBody {
                    id,
                    delivery_count,
                    disposition: if requeue { Disposition::Requeue } else { Disposition::Drop },
                    reason: if requeue { None } else { MoveReason::from_u8(1 + how % 4) },
                    not_before_ms: 0,
                };
                (RecordKind::Rollback.code(), body.encode().to_vec())
            }
            4 => {
                let body = DeliverBody {
                    id: u64::from(s.u8()),
                    delivery_count: u32::from(s.u8()),
                };
                (RecordKind::Deliver.code(), body.encode().to_vec())
            }
            5 => {
                let body = SealBody {
                    next_segment_id: id + 1,
                };
                (RecordKind::Seal.code(), body.encode().to_vec())
            }
            6 => (RecordKind::Commit.code(), Vec::new()),
            7 => {
                let kind = s.u8();
                let n = usize::from(s.u8());
                (kind, s.take(n).to_vec())
            }
            8 => {
                let at = usize::from(u16::from_le_bytes([s.u8(), s.u8()]));
                damage.push((at, s.u8()));
                continue;
            }
            _ => {
                let n = usize::from(s.u8() % 16) * FRAME_ALIGN;
                seg.resize(seg.len() + n, 0);
                continue;
            }
        };
        let offset = seg.len() as u64;
        let mark = if (op & 0x3f) >= 60 {
            offset as u32 + FRAME_ALIGN as u32
        } else if op & 0x40 != 0 {
            offset as u32
        } else {
            0
        };
        let flags = if op & 0x80 != 0 {
            RecordFlags::CONTINUES
        } else {
            RecordFlags::NONE
        };
        let header = FrameHeader { kind, flags, mark };
        encode_frame(&mut seg, salt, id, offset, header, &[&body]);
    }
    for (at, xor) in damage {
        if let Some(byte) = seg.get_mut(at) {
            *byte ^= xor;
        }
    }
    seg
}

/// Decodes `body` as the record kind says; whatever decodes must re-encode to `body`.
fn check_body(kind: u8, body: &[u8]) {
    match RecordKind::from_u8(kind) {
        Some(RecordKind::Seal) => {
            if let Ok(seal) = SealBody::decode(body) {
                assert_eq!(seal.encode()[..], body[..], "seal round trip");
            }
        }
        Some(RecordKind::Commit) | None => {}
        Some(RecordKind::QueueDeclare) => {
            if let Ok(decl) = QueueDeclareBody::decode(body) {
                assert!(!decl.name.is_empty() && decl.name.len() <= 255);
                assert_eq!(decl.encode(), body, "queue declaration round trip");
            }
        }
        Some(RecordKind::Publish) => {
            if let Ok(publish) = PublishBody::decode(body) {
                let mut again = publish.header.encode().to_vec();
                again.extend_from_slice(publish.payload);
                assert_eq!(again, body, "publish round trip");
                assert_eq!(publish.payload.len() + PUBLISH_HEADER_LEN, body.len());
            }
        }
        Some(RecordKind::Ack) => {
            if let Ok(ack) = AckBody::decode(body) {
                assert!(!ack.ranges.is_empty());
                assert!(ack.ranges.iter().all(|&(first, last)| first <= last));
                assert_eq!(ack.encode(), body, "ack round trip");
            }
        }
        Some(RecordKind::Rollback) => {
            if let Ok(rollback) = RollbackBody::decode(body) {
                assert_eq!(rollback.encode()[..], body[..], "rollback round trip");
            }
        }
        Some(RecordKind::Deliver) => {
            if let Ok(deliver) = DeliverBody::decode(body) {
                assert_eq!(deliver.encode()[..], body[..], "deliver round trip");
            }
        }
        Some(RecordKind::Move) => {
            if let Ok(moved) = MoveBody::decode(body) {
                assert_eq!(moved.encode()[..], body[..], "move round trip");
            }
        }
        Some(RecordKind::Relocate) => {
            if let Ok(copy) = RelocateBody::decode(body) {
                let mut again = copy.encode_fixed().to_vec();
                again.extend_from_slice(copy.payload);
                assert_eq!(again, body, "relocate round trip");
            }
        }
    }
}

/// Walks the frames of `seg` from `start` the way recovery does; returns how many decoded.
fn walk(seg: &[u8], salt: u64, id: u64, start: usize) -> usize {
    let mut frames = 0;
    let mut offset = start as u64;
    loop {
        let rest = seg.get(offset as usize..).unwrap_or_default();
        if offset % FRAME_ALIGN as u64 == 0 {
            assert_eq!(
                decode_frame(rest, salt, id, offset + 1),
                Err(FrameError::Misaligned)
            );
        }
        match decode_frame(rest, salt, id, offset) {
            Ok(view) => {
                let len = view.next_offset - offset;
                assert_eq!(len, frame_len(view.body.len()) as u64);
                assert!(view.next_offset as usize <= seg.len());
                let mut again = Vec::new();
                encode_frame(&mut again, salt, id, offset, view.header, &[view.body]);
                assert_eq!(again[..], rest[..again.len()], "frame round trip");
                check_body(view.header.kind, view.body);
                frames += 1;
                offset = view.next_offset;
            }
            Err(_) => break,
        }
    }
    // What recovery's forward scan does after a bad frame: try every aligned offset.
    let mut probe = offset + FRAME_ALIGN as u64;
    while let Some(rest) = seg.get(probe as usize..) {
        if rest.len() < 16 {
            break;
        }
        if let Ok(view) = decode_frame(rest, salt, id, probe) {
            check_body(view.header.kind, view.body);
        }
        probe += FRAME_ALIGN as u64;
    }
    frames
}

/// Target `decode_frame`: `data` as a segment file, then as a script for a synthesized one.
pub fn decode_frame_target(data: &[u8]) -> Outcome {
    // Every body decoder on the raw bytes.
    for kind in [1, 2, 16, 17, 18, 19, 20, 21, 22] {
        check_body(kind, data);
    }
    // The checkpoint decoder too: whatever decodes re-encodes to the same bytes.
    if let Ok(cp) = Checkpoint::decode(data) {
        assert_eq!(cp.encode(), data, "checkpoint round trip");
    }
    let (salt, id) = match SegmentHeader::decode(data) {
        Ok(header) => {
            assert_eq!(
                header.encode()[..],
                data[..SEGMENT_HEADER_LEN],
                "segment header round trip"
            );
            (header.salt, header.segment_id)
        }
        Err(_) => (0, 0),
    };
    let mut frames = walk(data, salt, id, SEGMENT_HEADER_LEN);
    // The script's damage ops may hit the header too, so walk with the known salt.
    let synthesized = synth_segment(3, data);
    if let Ok(header) = SegmentHeader::decode(&synthesized) {
        assert_eq!((header.segment_id, header.salt), (3, synth_salt(3)));
    }
    frames += walk(&synthesized, synth_salt(3), 3, SEGMENT_HEADER_LEN);
    Outcome {
        frames,
        ..Outcome::default()
    }
}

/// The errors a directory of bad files may legitimately produce.
fn is_bad_file_error(err: &Error) -> bool {
    matches!(
        err,
        Error::Corruption { .. } | Error::UnsupportedVersion { .. } | Error::ForeignFile { .. }
    )
}

/// Target `open_dir`: `data` laid out as one or two segment files, then `Store::open`.
///
/// Layout: `flags, first segment id, split (u16 LE), bytes...`; flags bit 0: two segments
/// (the bytes split at `split`); bits 1-2: recovery mode (1 strict, 2 salvage, else
/// tolerate torn tail); bit 3: no delivery records; bit 4: the bytes are scripts for
/// [`synth_segment`] instead of raw files; bit 5: leave a gap between the segment ids.
pub fn open_dir_target(data: &[u8]) -> Outcome {
    let mut input = Bytes(data);
    let flags = input.u8();
    let first_id = u64::from(input.u8());
    let split = usize::from(u16::from_le_bytes([input.u8(), input.u8()]));
    let rest = input.0;
    let mode = match (flags >> 1) & 3 {
        1 => RecoveryMode::Strict,
        2 => RecoveryMode::Salvage,
        _ => RecoveryMode::TolerateTornTail,
    };
    let (a, b) = if flags & 1 != 0 {
        rest.split_at(split.min(rest.len()))
    } else {
        (rest, &[][..])
    };
    let vfs = MemVfs::new();
    let dir = Path::new("/fuzz/store");
    vfs.create_dir_all(dir).expect("mkdir on MemVfs");
    let ids = [first_id, first_id + if flags & 32 != 0 { 2 } else { 1 }];
    let files: &[&[u8]] = if flags & 1 != 0 { &[a, b] } else { &[a] };
    for (&id, bytes) in ids.iter().zip(files) {
        let contents = if flags & 16 != 0 {
            synth_segment(id, bytes)
        } else {
            bytes.to_vec()
        };
        vfs.write_file(&dir.join(segment_file_name(id)), contents);
    }
    let opts = StoreOptions::new()
        .segment_size(MIN_SEGMENT_SIZE)
        .recovery(mode)
        .persist_deliveries(flags & 8 == 0)
        .fsync(FsyncPolicy::Never);
    exercise(&vfs, dir, &opts, mode)
}

fn exercise(vfs: &MemVfs, dir: &Path, opts: &StoreOptions, mode: RecoveryMode) -> Outcome {
    let mut outcome = Outcome::default();
    let store = match Store::open_with_vfs(Arc::new(vfs.clone()), dir, opts.clone()) {
        Ok(store) => store,
        Err(err) => {
            assert!(is_bad_file_error(&err), "unexpected error kind: {err:?}");
            assert!(!err.to_string().is_empty());
            return outcome;
        }
    };
    outcome.opened = true;
    let report = store.recovery_report().clone();
    if mode == RecoveryMode::Strict {
        assert_eq!(report.truncated, None, "strict recovery truncated");
    }
    if mode != RecoveryMode::Salvage {
        assert!(report.quarantined.is_empty(), "quarantine outside salvage");
    }

    // Serve what was recovered: every message must be readable, and settle some.
    for (i, name) in store.queue_names().iter().enumerate() {
        let queue = store.queue(name).expect("a listed queue exists");
        for round in 0..6 {
            let Some(delivery) = queue.try_receive().expect("receive a recovered message") else {
                break;
            };
            outcome.delivered += 1;
            assert_eq!(&*delivery.queue, &**name);
            assert!(delivery.delivery_count >= 1);
            assert_eq!(delivery.redelivered, delivery.delivery_count > 1);
            match (round + i) % 3 {
                0 => queue.ack(delivery.id).expect("ack"),
                1 => queue.nack(delivery.id, round % 2 == 0).expect("nack"),
                _ => {} // left unacked: it must come back after the reopen below
            }
        }
    }
    let queue = store.declare_queue("fuzz").expect("declare");
    let id = queue.publish(b"after recovery").expect("publish");
    let before = store.stats();
    assert_eq!(before.next_message_id, id.get() + 1);
    store.close().expect("close");
    drop(queue);
    drop(store);

    // What walq wrote and closed itself must reopen, with the same counters.
    let store = Store::open_with_vfs(Arc::new(vfs.clone()), dir, opts.clone())
        .expect("reopen after a clean close");
    assert_eq!(store.recovery_report().truncated, None);
    let after = store.stats();
    assert_eq!(after.next_message_id, before.next_message_id);
    assert_eq!(after.queues.len(), before.queues.len());
    for (a, b) in after.queues.iter().zip(&before.queues) {
        assert_eq!(
            (
                &a.name,
                a.ready,
                a.unacked,
                a.published,
                a.acked,
                a.rejected
            ),
            (
                &b.name,
                b.ready + b.unacked,
                0,
                b.published,
                b.acked,
                b.rejected
            ),
            "counters changed across a clean close and reopen"
        );
    }
    outcome
}
