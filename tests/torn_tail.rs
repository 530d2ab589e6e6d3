//! A last record (or atomic batch) torn at every byte offset, by truncation, zeros or
//! garbage, is cut off on reopen: earlier messages survive intact, the report names the
//! segment and offset of the cut, and later publishes and reopens stay consistent.

use std::path::PathBuf;
use std::sync::Arc;

use walq::io::{MemVfs, Vfs};
use walq::{SegmentId, Store, StoreOptions};

mod common;

use common::frames::{frames, seg_path, Frame};

const DIR: &str = "/store";
const QUEUE: &str = "q";
const SEGMENT_SIZE: u64 = 64 << 10;

fn dir() -> PathBuf {
    PathBuf::from(DIR)
}

fn opts(preallocate: bool) -> StoreOptions {
    StoreOptions::new()
        .segment_size(SEGMENT_SIZE)
        .preallocate(preallocate)
}

/// Payloads of varying lengths, so that frames end with 0 to 7 bytes of padding.
fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("message {i} ").into_bytes();
    p.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, 3 + i % 7));
    p
}

/// Receives every ready message of the queue and returns the payloads in delivery order.
fn drain(store: &Store) -> Vec<Vec<u8>> {
    let queue = store.queue(QUEUE).expect("queue survives recovery");
    let mut out = Vec::new();
    while let Some(d) = queue.try_receive().expect("receive") {
        out.push(d.payload);
    }
    out
}

/// A segment image of a store dropped without `close`, with its frames and the payloads
/// published, in order.
struct Image {
    bytes: Vec<u8>,
    frames: Vec<Frame>,
    payloads: Vec<Vec<u8>>,
}

/// Publishes `singles` single messages, then the optional batch, and drops the store
/// without closing it, so nothing marks the tail durable beyond what fsync proved.
fn build(preallocate: bool, singles: usize, batch: usize) -> Image {
    let vfs = MemVfs::new();
    let mut payloads = Vec::new();
    {
        let store = Store::open_with_vfs(Arc::new(vfs.clone()), &dir(), opts(preallocate))
            .expect("open new store");
        let queue = store.declare_queue(QUEUE).expect("declare");
        for i in 0..singles {
            let p = payload(i);
            queue.publish(&p).expect("publish");
            payloads.push(p);
        }
        if batch > 0 {
            let group: Vec<Vec<u8>> = (singles..singles + batch).map(payload).collect();
            queue.publish_batch(&group).expect("publish batch");
            payloads.extend(group);
        }
    }
    let names = vfs.list(&dir()).expect("list");
    let segs: Vec<&String> = names.iter().filter(|n| n.ends_with(".wal")).collect();
    assert_eq!(segs.len(), 1, "one segment expected, found {names:?}");
    assert_eq!(segs[0], &format!("{:020}.wal", 0), "first segment is 0");
    let bytes = vfs.read_file(&seg_path(&dir(), 0)).expect("segment");
    let frames = frames(&bytes);
    // QueueDeclare, then one publish frame per message.
    assert_eq!(frames.len(), 1 + singles + batch, "frames: {frames:?}");
    assert_eq!(frames[0].kind, 16);
    assert!(frames[1..].iter().all(|f| f.kind == 17));
    if preallocate {
        assert_eq!(bytes.len() as u64, SEGMENT_SIZE);
    } else {
        let last = frames.last().expect("frames");
        assert_eq!(
            bytes.len(),
            last.offset + last.len,
            "no slack without preallocation"
        );
    }
    Image {
        bytes,
        frames,
        payloads,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    /// The file ends at the offset.
    Cut,
    /// The bytes from the offset to the end of the damaged span are zeros.
    Zeros,
    /// The bytes from the offset to the end of the damaged span are 0xA5.
    Garbage,
}

fn damage(bytes: &[u8], at: usize, span_end: usize, how: Damage) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match how {
        Damage::Cut => out.truncate(at),
        Damage::Zeros => out[at..span_end].fill(0),
        Damage::Garbage => out[at..span_end].fill(0xA5),
    }
    out
}

fn fresh_vfs_with(bytes: Vec<u8>) -> MemVfs {
    let vfs = MemVfs::new();
    vfs.create_dir_all(&dir()).expect("mkdir");
    vfs.write_file(&seg_path(&dir(), 0), bytes);
    vfs
}

/// Reopens a damaged image and checks everything the torn-tail contract promises.
///
/// `group_start` is the offset of the first frame of the last log group (the damaged one)
/// and `survivors` how many messages precede that group.
#[allow(clippy::too_many_arguments)]
fn check_reopen(
    img: &Image,
    preallocate: bool,
    group_start: usize,
    survivors: usize,
    at: usize,
    span_end: usize,
    how: Damage,
) {
    let damaged = damage(&img.bytes, at, span_end, how);
    let changed = damaged != img.bytes;
    // Damage that leaves every byte as it was (zeros over zero padding) loses nothing.
    let group_lost = changed;
    // Whether the bytes left look like a clean end of log (nothing to report).
    let clean_end = match how {
        Damage::Cut | Damage::Zeros => at == group_start,
        Damage::Garbage => false,
    } || !changed;
    let ctx = format!("{how:?} at byte {at} (group at {group_start})");

    let vfs = fresh_vfs_with(damaged);
    let expected: Vec<Vec<u8>> = if group_lost {
        img.payloads[..survivors].to_vec()
    } else {
        img.payloads.clone()
    };
    {
        let store = Store::open_with_vfs(Arc::new(vfs.clone()), &dir(), opts(preallocate))
            .unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
        let report = store.recovery_report().clone();
        if clean_end {
            assert_eq!(report.truncated, None, "{ctx}: nothing to report");
        } else {
            let t = report
                .truncated
                .as_ref()
                .unwrap_or_else(|| panic!("{ctx}: truncation not reported"));
            assert_eq!(t.segment, SegmentId(0), "{ctx}");
            assert_eq!(t.offset, group_start as u64, "{ctx}");
        }
        assert!(report.quarantined.is_empty(), "{ctx}");

        // The damaged bytes are physically gone before anything new is written: after the
        // kept records the file ends (no preallocation) or holds only zeros.
        let file = vfs.read_file(&seg_path(&dir(), 0)).expect("segment");
        let fr = frames(&file);
        assert_eq!(fr.len(), 1 + expected.len(), "{ctx}: frames on disk");
        let last = fr.last().expect("frames");
        let end = last.offset + last.len;
        assert_eq!(end as u64, store.stats().log_bytes, "{ctx}: end of the log");
        if preallocate {
            assert_eq!(
                file.len() as u64,
                SEGMENT_SIZE,
                "{ctx}: preallocation restored"
            );
            assert!(
                file[end..].iter().all(|&b| b == 0),
                "{ctx}: bytes left after the end of the log"
            );
        } else {
            assert_eq!(file.len(), end, "{ctx}: torn bytes left in the file");
        }

        assert_eq!(
            drain(&store),
            expected,
            "{ctx}: messages after first reopen"
        );
        store
            .queue(QUEUE)
            .expect("queue")
            .publish(b"after the tear")
            .unwrap_or_else(|e| panic!("{ctx}: publish after recovery failed: {e}"));
    }

    let store = Store::open_with_vfs(Arc::new(vfs.clone()), &dir(), opts(preallocate))
        .unwrap_or_else(|e| panic!("{ctx}: second open failed: {e}"));
    assert_eq!(
        store.recovery_report().truncated,
        None,
        "{ctx}: second reopen found damage (garbage resurrected?)"
    );
    let mut expected = expected;
    expected.push(b"after the tear".to_vec());
    assert_eq!(
        drain(&store),
        expected,
        "{ctx}: messages after second reopen"
    );
}

fn every_offset_of_last_record(how: Damage) {
    let preallocate = how != Damage::Cut;
    let singles = 4;
    let img = build(preallocate, singles, 0);
    let last = *img.frames.last().expect("frames");
    assert!(
        last.len > 16 + walq::format::PUBLISH_HEADER_LEN,
        "a publish frame has a body"
    );
    for j in 0..last.len {
        check_reopen(
            &img,
            preallocate,
            last.offset,
            singles - 1,
            last.offset + j,
            last.offset + last.len,
            how,
        );
    }
}

#[test]
fn last_record_cut_at_every_offset() {
    every_offset_of_last_record(Damage::Cut);
}

#[test]
fn last_record_zeroed_from_every_offset() {
    every_offset_of_last_record(Damage::Zeros);
}

#[test]
fn last_record_garbage_from_every_offset() {
    every_offset_of_last_record(Damage::Garbage);
}

/// Payload lengths really do produce frames with and without padding, so the padding
/// cases above are exercised.
#[test]
fn test_payloads_cover_padding_lengths() {
    let mut pads = std::collections::BTreeSet::new();
    for i in 0..7 {
        let body = walq::format::PUBLISH_HEADER_LEN + payload(i).len();
        pads.insert(walq::format::frame_len(body) - 16 - body);
    }
    assert!(pads.len() >= 4, "padding lengths {pads:?}");
}

fn batch_torn_at_every_offset(how: Damage) {
    let preallocate = how != Damage::Cut;
    let singles = 2;
    let batch = 3;
    let img = build(preallocate, singles, batch);
    let group_start = img.frames[1 + singles].offset;
    let last = *img.frames.last().expect("frames");
    let span_end = last.offset + last.len;
    // Every offset inside the batch's last record, as asked, and every offset of its
    // earlier records as well: the whole group goes in every case.
    for at in group_start..span_end {
        // Damage to an earlier record of the batch runs to the end of the batch.
        check_reopen(&img, preallocate, group_start, singles, at, span_end, how);
    }
}

#[test]
fn atomic_batch_cut_at_every_offset() {
    batch_torn_at_every_offset(Damage::Cut);
}

#[test]
fn atomic_batch_zeroed_from_every_offset() {
    batch_torn_at_every_offset(Damage::Zeros);
}

#[test]
fn atomic_batch_garbage_from_every_offset() {
    batch_torn_at_every_offset(Damage::Garbage);
}

/// Only the last record of a batch is damaged (the earlier ones are intact and valid,
/// flagged as continuing): the whole batch still goes.
#[test]
fn atomic_batch_only_last_record_damaged() {
    for how in [Damage::Cut, Damage::Zeros, Damage::Garbage] {
        let preallocate = how != Damage::Cut;
        let img = build(preallocate, 2, 3);
        let group_start = img.frames[3].offset;
        let last = *img.frames.last().expect("frames");
        for j in 0..last.len {
            let at = last.offset + j;
            let damaged = damage(&img.bytes, at, last.offset + last.len, how);
            if damaged == img.bytes {
                continue;
            }
            let vfs = fresh_vfs_with(damaged);
            let store = Store::open_with_vfs(Arc::new(vfs), &dir(), opts(preallocate))
                .unwrap_or_else(|e| panic!("{how:?} at {at}: {e}"));
            let t = store
                .recovery_report()
                .truncated
                .clone()
                .unwrap_or_else(|| panic!("{how:?} at {at}: no truncation reported"));
            assert_eq!(
                (t.segment, t.offset),
                (SegmentId(0), group_start as u64),
                "{how:?} at {at}: the cut must be at the start of the batch"
            );
            assert_eq!(drain(&store), img.payloads[..2].to_vec(), "{how:?} at {at}");
        }
    }
}

/// The same on the real file system: the segment file is cut with `set_len` at a sample of
/// offsets inside the last record.
#[test]
fn torn_tail_on_disk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("template");
    let singles = 3;
    {
        let store = Store::open(&base, opts(false)).expect("open");
        let queue = store.declare_queue(QUEUE).expect("declare");
        for i in 0..singles {
            queue.publish(&payload(i)).expect("publish");
        }
    }
    let bytes = std::fs::read(seg_path(&base, 0)).expect("read segment");
    let fr = frames(&bytes);
    let last = *fr.last().expect("frames");
    for j in [1, 7, 15, 16, 17, 40, last.len - 1] {
        let dir = tmp.path().join(format!("cut{j}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(seg_path(&dir, 0), &bytes[..last.offset + j]).expect("write");
        {
            let store = Store::open(&dir, opts(false)).expect("open torn store");
            let t = store
                .recovery_report()
                .truncated
                .clone()
                .expect("truncation reported");
            assert_eq!((t.segment, t.offset), (SegmentId(0), last.offset as u64));
            assert_eq!(
                std::fs::metadata(seg_path(&dir, 0)).expect("stat").len(),
                last.offset as u64,
                "the torn bytes are removed from the file"
            );
            let expected: Vec<Vec<u8>> = (0..singles - 1).map(payload).collect();
            assert_eq!(drain(&store), expected);
            store
                .queue(QUEUE)
                .expect("queue")
                .publish(b"new")
                .expect("publish");
            store.close().expect("close");
        }
        let store = Store::open(&dir, opts(false)).expect("reopen");
        assert_eq!(store.recovery_report().truncated, None);
        let mut expected: Vec<Vec<u8>> = (0..singles - 1).map(payload).collect();
        expected.push(b"new".to_vec());
        assert_eq!(drain(&store), expected);
    }
}

/// Options for the stores on disk below: segments preallocated to 4 MiB.
fn disk_opts() -> StoreOptions {
    StoreOptions::new().segment_size(4 << 20).preallocate(true)
}

/// A store on disk with a preallocated segment, dropped without `close`, whose tail gets
/// `garbage` written at `at`, far past the end of the log. Returns the directory and where
/// the log ends.
fn preallocated_on_disk(
    tmp: &std::path::Path,
    at: u64,
    garbage: &dyn Fn(u64, u64) -> Vec<u8>,
) -> (PathBuf, u64) {
    use std::os::unix::fs::FileExt;

    let dir = tmp.join(format!("at{at}"));
    {
        let store = Store::open(&dir, disk_opts()).expect("open");
        let queue = store.declare_queue(QUEUE).expect("declare");
        for i in 0..3 {
            queue.publish(&payload(i)).expect("publish");
        }
    }
    let bytes = std::fs::read(seg_path(&dir, 0)).expect("read segment");
    assert_eq!(bytes.len(), 4 << 20, "preallocated");
    let end = frames(&bytes)
        .last()
        .map(|f| f.offset + f.len)
        .expect("frames") as u64;
    let header = walq::format::SegmentHeader::decode(&bytes).expect("header");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(seg_path(&dir, 0))
        .expect("open segment");
    file.write_all_at(&garbage(header.salt, end), at)
        .expect("write garbage");
    (dir, end)
}

/// Recovery does not read the never-written tail of a preallocated segment, but it must
/// still find bytes written anywhere in it: non-zero bytes far past the end of the log are
/// a torn tail (cut off), not ignored.
#[test]
fn garbage_far_into_a_preallocated_tail_on_disk_is_cut_off() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for at in [1 << 20, (3 << 20) + 4096, (4 << 20) - 8] {
        let (dir, end) = preallocated_on_disk(tmp.path(), at, &|_, _| vec![0xa5; 8]);
        let store = Store::open(&dir, disk_opts()).expect("open");
        let t = store
            .recovery_report()
            .truncated
            .clone()
            .unwrap_or_else(|| panic!("garbage at {at} not found"));
        assert_eq!(
            (t.segment, t.offset),
            (SegmentId(0), end),
            "garbage at {at}"
        );
        assert_eq!(t.discarded_frames, 0);
        let expected: Vec<Vec<u8>> = (0..3).map(payload).collect();
        assert_eq!(drain(&store), expected);
        drop(store);
        let bytes = std::fs::read(seg_path(&dir, 0)).expect("read segment");
        let at = at as usize;
        assert_eq!(&bytes[at..at + 8], &[0; 8], "the garbage at {at} is gone");
        let store = Store::open(&dir, disk_opts()).expect("reopen");
        assert_eq!(store.recovery_report().truncated, None);
    }
}

/// The same with a checksum-valid frame far into the tail whose durable mark says the end
/// of the log was durable: corruption, as with the whole tail read.
#[test]
fn durable_frame_far_into_a_preallocated_tail_on_disk_is_corruption() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let at: u64 = (2 << 20) + 512;
    let frame = |salt: u64, end: u64| {
        let mut out = Vec::new();
        let header = walq::format::FrameHeader {
            kind: 17,
            flags: walq::format::RecordFlags::NONE,
            mark: u32::try_from(end + 8).expect("small offset"),
        };
        walq::format::encode_frame(&mut out, salt, 0, at, header, &[b"late"]);
        out
    };
    let (dir, end) = preallocated_on_disk(tmp.path(), at, &frame);
    match Store::open(&dir, disk_opts()) {
        Err(walq::Error::Corruption {
            segment, offset, ..
        }) => assert_eq!((segment, offset), (SegmentId(0), end)),
        other => panic!("expected corruption at {end}, got {other:?}"),
    }
}
