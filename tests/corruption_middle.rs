//! Damage to durable records (before a commit marker, in a sealed segment, or before a
//! record whose durable mark vouches for it) is reported as `Error::Corruption` with the
//! exact segment and offset, never skipped or treated as a torn tail; `Strict` refuses even
//! a torn tail, and `Salvage` cuts the log at the damage and quarantines later segments.

use std::path::PathBuf;
use std::sync::Arc;

use walq::io::{MemVfs, Vfs};
use walq::{Error, FsyncPolicy, RecoveryMode, SegmentId, Store, StoreOptions};

mod common;

use common::frames::{frames, seg_path, Frame};

const QUEUE: &str = "q";
const SEGMENT_SIZE: u64 = 64 << 10;

fn dir() -> PathBuf {
    PathBuf::from("/store")
}

fn opts() -> StoreOptions {
    StoreOptions::new().segment_size(SEGMENT_SIZE)
}

fn drain(store: &Store) -> Vec<Vec<u8>> {
    let queue = store.queue(QUEUE).expect("queue");
    let mut out = Vec::new();
    while let Some(d) = queue.try_receive().expect("receive") {
        out.push(d.payload);
    }
    out
}

/// Payload `i`, of length `len` (at least 8).
fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut p = format!("m{i:06}-").into_bytes();
    p.resize(len, b'a' + (i % 26) as u8);
    p
}

/// Builds a store of `count` messages of `len` bytes; closes it cleanly if `close`.
fn build(
    vfs: &MemVfs,
    options: StoreOptions,
    count: usize,
    len: usize,
    close: bool,
) -> Vec<Vec<u8>> {
    let store = Store::open_with_vfs(Arc::new(vfs.clone()), &dir(), options).expect("open");
    let queue = store.declare_queue(QUEUE).expect("declare");
    let payloads: Vec<Vec<u8>> = (0..count).map(|i| payload(i, len)).collect();
    for p in &payloads {
        queue.publish(p).expect("publish");
    }
    if close {
        store.close().expect("close");
    }
    payloads
}

fn segment_ids(vfs: &MemVfs) -> Vec<u64> {
    let mut ids: Vec<u64> = vfs
        .list(&dir())
        .expect("list")
        .iter()
        .filter_map(|n| n.strip_suffix(".wal")?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

/// A copy of the file system with the segment `id` replaced by `bytes`.
fn with_segment(vfs: &MemVfs, id: u64, bytes: Vec<u8>) -> MemVfs {
    let copy = MemVfs::new();
    copy.create_dir_all(&dir()).expect("mkdir");
    for name in vfs.list(&dir()).expect("list") {
        let path = dir().join(&name);
        if name != "LOCK" {
            copy.write_file(&path, vfs.read_file(&path).expect("file"));
        }
    }
    copy.write_file(&seg_path(&dir(), id), bytes);
    copy
}

fn open(vfs: &MemVfs, options: StoreOptions) -> walq::Result<Store> {
    Store::open_with_vfs(Arc::new(vfs.clone()), &dir(), options)
}

#[track_caller]
fn assert_corruption(result: walq::Result<Store>, segment: u64, offset: usize, ctx: &str) {
    match result {
        Err(Error::Corruption {
            segment: s,
            offset: o,
            reason,
        }) => {
            assert_eq!(
                (s, o),
                (SegmentId(segment), offset as u64),
                "{ctx}: wrong location ({reason})"
            );
        }
        Err(other) => panic!("{ctx}: expected Corruption at {segment}@{offset}, got {other}"),
        Ok(store) => panic!(
            "{ctx}: open succeeded (report {:?}), corruption expected at {segment}@{offset}",
            store.recovery_report()
        ),
    }
}

/// Bit positions inside a frame: CRC, length field, kind, flags, mark, body start and end,
/// and padding (when the frame has any).
fn bit_positions(f: &Frame) -> Vec<(&'static str, usize)> {
    let mut bits = vec![
        ("crc", 0),
        ("crc", 31),
        ("length", 32),
        ("length", 32 + 5),
        ("length", 32 + 31),
        ("kind", 64),
        ("kind", 64 + 4),
        ("flags", 72 + 1),
        ("reserved", 80 + 3),
        ("mark", 96 + 2),
        ("body", 128),
        ("body", (16 + f.body_len) * 8 - 1),
    ];
    if f.body_len > 9 {
        bits.push(("body", 128 + 8 * 8 + 3));
    }
    if f.len > 16 + f.body_len {
        bits.push(("padding", (16 + f.body_len) * 8));
        bits.push(("padding", f.len * 8 - 1));
    }
    bits
}

#[test]
fn bit_flips_after_clean_close_are_corruption_at_the_record() {
    let vfs = MemVfs::new();
    // 45 payload bytes: 16 + 40 + 45 = 101 -> 104-byte frames with 3 bytes of padding.
    build(&vfs, opts(), 12, 45, true);
    let bytes = vfs.read_file(&seg_path(&dir(), 0)).expect("segment");
    let fr = frames(&bytes);
    assert_eq!(fr.len(), 1 + 12 + 1, "declare, 12 publishes, commit marker");
    assert_eq!(
        fr.last().expect("frames").kind,
        2,
        "close wrote a commit marker"
    );
    assert!(fr[1].len > 16 + fr[1].body_len, "frames have padding");
    // The declaration, the first, some middle, and the last publish record.
    for idx in [0, 1, 5, 8, 12] {
        let f = fr[idx];
        for (field, bit) in bit_positions(&f) {
            let mut bad = bytes.clone();
            bad[f.offset + bit / 8] ^= 1 << (bit % 8);
            let ctx = format!("record {idx} ({field}, bit {bit})");
            assert_corruption(open(&with_segment(&vfs, 0, bad), opts()), 0, f.offset, &ctx);
        }
    }
    // Control: the undamaged image opens and holds all twelve messages.
    let store = open(&with_segment(&vfs, 0, bytes), opts()).expect("clean open");
    assert_eq!(store.recovery_report().truncated, None);
    assert_eq!(drain(&store).len(), 12);
}

/// A store of three or more 64 KiB segments, dropped without close.
fn multi_segment(vfs: &MemVfs) -> Vec<Vec<u8>> {
    let payloads = build(vfs, opts(), 150, 1000, false);
    assert!(
        segment_ids(vfs).len() >= 3,
        "segments {:?}",
        segment_ids(vfs)
    );
    payloads
}

#[test]
fn damage_in_a_sealed_segment_is_corruption_without_close() {
    let vfs = MemVfs::new();
    multi_segment(&vfs);
    let ids = segment_ids(&vfs);
    for &id in &ids[..ids.len() - 1] {
        let bytes = vfs.read_file(&seg_path(&dir(), id)).expect("segment");
        let fr = frames(&bytes);
        assert_eq!(
            fr.last().expect("frames").kind,
            1,
            "segment {id} ends with a seal"
        );
        let picks = [0, fr.len() / 2, fr.len() - 2, fr.len() - 1];
        for idx in picks {
            let f = fr[idx];
            for (field, bit) in bit_positions(&f) {
                let mut bad = bytes.clone();
                bad[f.offset + bit / 8] ^= 1 << (bit % 8);
                let ctx = format!("segment {id} record {idx} ({field}, bit {bit})");
                assert_corruption(
                    open(&with_segment(&vfs, id, bad), opts()),
                    id,
                    f.offset,
                    &ctx,
                );
            }
        }
        // A sealed segment cut short in the middle of a record.
        let f = fr[fr.len() / 2];
        let cut = bytes[..f.offset + 20].to_vec();
        let ctx = format!("segment {id} cut inside record at {}", f.offset);
        assert_corruption(
            open(&with_segment(&vfs, id, cut), opts()),
            id,
            f.offset,
            &ctx,
        );
        // A sealed segment that lost its seal (cut exactly at it).
        let seal = fr[fr.len() - 1];
        let cut = bytes[..seal.offset].to_vec();
        let ctx = format!("segment {id} cut at its seal");
        assert_corruption(
            open(&with_segment(&vfs, id, cut), opts()),
            id,
            seal.offset,
            &ctx,
        );
    }
}

#[test]
fn length_past_end_of_file_is_corruption_not_a_panic() {
    // Single segment, clean close; and the sealed first segment of a multi-segment store.
    let single = MemVfs::new();
    build(&single, opts().preallocate(false), 10, 40, true);
    let multi = MemVfs::new();
    multi_segment(&multi);
    for (vfs, name) in [(&single, "closed"), (&multi, "sealed")] {
        let bytes = vfs.read_file(&seg_path(&dir(), 0)).expect("segment");
        let fr = frames(&bytes);
        let f = fr[fr.len() / 2];
        let just_past = (bytes.len() - f.offset - 16 + 1) as u32;
        for len in [
            just_past,
            just_past + 4096,
            0x0400_0000,
            0x7fff_fff0,
            u32::MAX,
        ] {
            let mut bad = bytes.clone();
            bad[f.offset + 4..f.offset + 8].copy_from_slice(&len.to_le_bytes());
            let ctx = format!("{name}: length {len:#x} at {}", f.offset);
            assert_corruption(open(&with_segment(vfs, 0, bad), opts()), 0, f.offset, &ctx);
        }
    }
}

#[test]
fn stale_record_from_another_segment_is_corruption() {
    let vfs = MemVfs::new();
    multi_segment(&vfs);
    let seg = |id| vfs.read_file(&seg_path(&dir(), id)).expect("segment");
    let (seg0, seg1, seg2) = (seg(0), seg(1), seg(2));
    let (fr0, fr1, fr2) = (frames(&seg0), frames(&seg1), frames(&seg2));
    let publishes =
        |fr: &[Frame]| -> Vec<Frame> { fr.iter().filter(|f| f.kind == 17).copied().collect() };
    let (p0, p1, p2) = (publishes(&fr0), publishes(&fr1), publishes(&fr2));
    assert!(p2.len() >= 8, "segment 2 holds {} publishes", p2.len());

    // A publish frame of segment 0 over one of sealed segment 1 (same length).
    for k in [0, 5, p1.len() / 2, p1.len() - 1] {
        let (src, dst) = (p0[(k + 3) % p0.len()], p1[k]);
        assert_eq!(src.len, dst.len);
        let mut bad = seg1.clone();
        bad[dst.offset..dst.offset + dst.len]
            .copy_from_slice(&seg0[src.offset..src.offset + src.len]);
        let ctx = format!("segment 0 record copied into segment 1 at {}", dst.offset);
        assert_corruption(
            open(&with_segment(&vfs, 1, bad), opts()),
            1,
            dst.offset,
            &ctx,
        );
    }
    // Segments 1 and 2 both start with publishes, so frames sit at the same offsets: a frame
    // copied at its own offset differs only in the segment's salt and id.
    for k in [0, 3, p2.len() - 2] {
        let (a, b) = (p1[k], p2[k]);
        assert_eq!((a.offset, a.len), (b.offset, b.len));
        let mut bad = seg1.clone();
        bad[a.offset..a.offset + a.len].copy_from_slice(&seg2[b.offset..b.offset + b.len]);
        let ctx = format!(
            "segment 2 record copied into sealed segment 1 at {}",
            a.offset
        );
        assert_corruption(open(&with_segment(&vfs, 1, bad), opts()), 1, a.offset, &ctx);
        // Into the last segment: the later records' durable marks (FsyncPolicy::Always)
        // prove the spot was durable, so this is corruption too, not a torn tail.
        let mut bad = seg2.clone();
        bad[b.offset..b.offset + b.len].copy_from_slice(&seg1[a.offset..a.offset + a.len]);
        let ctx = format!(
            "segment 1 record copied into last segment 2 at {}",
            b.offset
        );
        assert_corruption(open(&with_segment(&vfs, 2, bad), opts()), 2, b.offset, &ctx);
    }

    // Within one segment, a record copied over a later one (same length) is stale too:
    // the offset is part of its checksum.
    let single = MemVfs::new();
    build(&single, opts(), 10, 40, true);
    let bytes = single.read_file(&seg_path(&dir(), 0)).expect("segment");
    let fr = frames(&bytes);
    let (src, dst) = (fr[2], fr[6]);
    assert_eq!(src.len, dst.len);
    let mut bad = bytes.clone();
    bad.copy_within(src.offset..src.offset + src.len, dst.offset);
    assert_corruption(
        open(&with_segment(&single, 0, bad), opts()),
        0,
        dst.offset,
        "copy",
    );
}

#[test]
fn zeroed_sector_in_the_middle_is_corruption() {
    let vfs = MemVfs::new();
    // About 40 frames of 112 bytes: a segment image of about 4.5 KiB of records.
    build(&vfs, opts(), 40, 60, true);
    let bytes = vfs.read_file(&seg_path(&dir(), 0)).expect("segment");
    let fr = frames(&bytes);
    let end = fr.last().map(|f| f.offset + f.len).expect("frames");
    let mut sectors = 0;
    let mut sector = 512;
    while sector + 512 < end {
        // The first frame whose bytes the zeroing changes.
        let victim = fr
            .iter()
            .find(|f| {
                let lo = f.offset.max(sector);
                let hi = (f.offset + f.len).min(sector + 512);
                lo < hi && bytes[lo..hi].iter().any(|&b| b != 0)
            })
            .expect("a frame in the sector");
        let mut bad = bytes.clone();
        bad[sector..sector + 512].fill(0);
        let ctx = format!("zeroed sector at {sector}");
        assert_corruption(
            open(&with_segment(&vfs, 0, bad), opts()),
            0,
            victim.offset,
            &ctx,
        );
        sectors += 1;
        sector += 512;
    }
    assert!(sectors >= 6, "only {sectors} sectors tested");
}

#[test]
fn strict_mode_refuses_a_torn_tail() {
    let vfs = MemVfs::new();
    build(&vfs, opts().preallocate(false), 5, 30, false);
    let bytes = vfs.read_file(&seg_path(&dir(), 0)).expect("segment");
    let fr = frames(&bytes);
    let last = *fr.last().expect("frames");
    assert_eq!(last.kind, 17, "no commit marker without close");
    let strict = || opts().preallocate(false).recovery(RecoveryMode::Strict);

    // Untorn, unclosed: strict opens it (it is not simply refusing everything).
    let store = open(&with_segment(&vfs, 0, bytes.clone()), strict()).expect("strict, untorn");
    assert_eq!(drain(&store).len(), 5);
    drop(store);

    for j in [1, 8, 16, 30, last.len - 1] {
        let cut = bytes[..last.offset + j].to_vec();
        let ctx = format!("strict, cut {j} bytes into the last record");
        assert_corruption(
            open(&with_segment(&vfs, 0, cut.clone()), strict()),
            0,
            last.offset,
            &ctx,
        );
        // The default mode accepts the same image as a torn tail.
        let store = open(&with_segment(&vfs, 0, cut), opts().preallocate(false))
            .expect("default mode tolerates the torn tail");
        let t = store.recovery_report().truncated.clone().expect("reported");
        assert_eq!((t.segment, t.offset), (SegmentId(0), last.offset as u64));
        assert_eq!(drain(&store).len(), 4);
    }
    let mut garbage = bytes.clone();
    garbage[last.offset + 20..].fill(0xA5);
    assert_corruption(
        open(&with_segment(&vfs, 0, garbage), strict()),
        0,
        last.offset,
        "strict, garbage tail",
    );
}

#[test]
fn strict_mode_opens_a_preallocated_unclosed_store() {
    let vfs = MemVfs::new();
    build(&vfs, opts(), 5, 30, false);
    let store = open(&vfs, opts().recovery(RecoveryMode::Strict)).expect("zeros are no damage");
    assert_eq!(store.recovery_report().truncated, None);
    assert_eq!(drain(&store).len(), 5);
}

#[test]
fn salvage_cuts_at_the_damage_and_quarantines_later_segments() {
    let vfs = MemVfs::new();
    let payloads = multi_segment(&vfs);
    let ids = segment_ids(&vfs);
    let bytes = vfs.read_file(&seg_path(&dir(), 0)).expect("segment 0");
    let fr = frames(&bytes);
    let victim = fr[fr.len() / 2];
    assert_eq!(victim.kind, 17);
    // Frames before the victim: the declaration and the publishes that survive.
    let survivors = fr
        .iter()
        .filter(|f| f.offset < victim.offset && f.kind == 17)
        .count();
    let mut bad = bytes.clone();
    bad[victim.offset + 16 + 40] ^= 0x10;
    let damaged = with_segment(&vfs, 0, bad);

    // The default mode refuses.
    assert_corruption(open(&damaged, opts()), 0, victim.offset, "default mode");

    let salvage = || opts().recovery(RecoveryMode::Salvage);
    {
        let store = open(&damaged, salvage()).expect("salvage opens");
        let report = store.recovery_report().clone();
        let t = report.truncated.clone().expect("the cut is reported");
        assert_eq!((t.segment, t.offset), (SegmentId(0), victim.offset as u64));
        let expected_q: Vec<PathBuf> = ids[1..]
            .iter()
            .map(|id| dir().join(format!("{id:020}.wal.quarantine")))
            .collect();
        assert_eq!(report.quarantined, expected_q);
        for (id, q) in ids[1..].iter().zip(&expected_q) {
            assert!(damaged.read_file(q).is_some(), "{} exists", q.display());
            assert!(
                damaged.read_file(&seg_path(&dir(), *id)).is_none(),
                "segment {id} was moved away"
            );
        }
        assert_eq!(drain(&store), payloads[..survivors].to_vec());
    }

    // The salvaged store is healthy: the default mode opens it, it accepts enough
    // publishes to roll into new segments beside the quarantined files, and reopens.
    {
        let store = open(&damaged, opts()).expect("default mode after salvage");
        assert_eq!(store.recovery_report().truncated, None);
        let queue = store.queue(QUEUE).expect("queue");
        for i in 0..100 {
            queue.publish(&payload(10_000 + i, 1000)).expect("publish");
        }
        assert!(segment_ids(&damaged).len() >= 2, "rolled over again");
    }
    let store = open(&damaged, opts()).expect("reopen");
    assert_eq!(store.recovery_report().truncated, None);
    let mut expected = payloads[..survivors].to_vec();
    expected.extend((0..100).map(|i| payload(10_000 + i, 1000)));
    assert_eq!(drain(&store), expected);
}

#[test]
fn salvage_cuts_inside_the_last_segment_after_close() {
    let vfs = MemVfs::new();
    let payloads = build(&vfs, opts(), 10, 40, true);
    let bytes = vfs.read_file(&seg_path(&dir(), 0)).expect("segment");
    let fr = frames(&bytes);
    let victim = fr[4];
    let mut bad = bytes.clone();
    bad[victim.offset + 1] ^= 0x01;
    let damaged = with_segment(&vfs, 0, bad);
    assert_corruption(open(&damaged, opts()), 0, victim.offset, "default mode");
    let store = open(&damaged, opts().recovery(RecoveryMode::Salvage)).expect("salvage");
    let t = store.recovery_report().truncated.clone().expect("reported");
    assert_eq!((t.segment, t.offset), (SegmentId(0), victim.offset as u64));
    assert!(
        t.discarded_frames >= 1,
        "valid frames after the cut are counted"
    );
    assert!(store.recovery_report().quarantined.is_empty());
    assert_eq!(drain(&store), payloads[..3].to_vec());
}

#[test]
fn always_without_close_later_record_proves_earlier_one_durable() {
    let vfs = MemVfs::new();
    // FsyncPolicy::Always is the default: every publish is synced before the next is written,
    // so each record's durable mark covers all earlier records.
    build(&vfs, opts().fsync(FsyncPolicy::Always), 8, 40, false);
    let bytes = vfs.read_file(&seg_path(&dir(), 0)).expect("segment");
    let fr = frames(&bytes);
    assert_eq!(fr.last().expect("frames").kind, 17, "no commit marker");
    for idx in [1, 3, fr.len() - 2] {
        let f = fr[idx];
        for (field, bit) in bit_positions(&f) {
            let mut bad = bytes.clone();
            bad[f.offset + bit / 8] ^= 1 << (bit % 8);
            let ctx = format!("record {idx} ({field}, bit {bit})");
            assert_corruption(open(&with_segment(&vfs, 0, bad), opts()), 0, f.offset, &ctx);
        }
    }
}

#[test]
fn never_without_close_unproven_damage_is_a_torn_tail() {
    // The contrast: under FsyncPolicy::Never nothing after open was ever synced, so no
    // record vouches for another and damage is treated as a torn tail.
    let vfs = MemVfs::new();
    let options = || opts().fsync(FsyncPolicy::Never);
    let payloads = build(&vfs, options(), 8, 40, false);
    let bytes = vfs.read_file(&seg_path(&dir(), 0)).expect("segment");
    let fr = frames(&bytes);
    let idx = fr.len() - 3;
    let f = fr[idx];
    let mut bad = bytes.clone();
    bad[f.offset + 20] ^= 0x80;
    let store = open(&with_segment(&vfs, 0, bad), options()).expect("torn tail tolerated");
    let t = store.recovery_report().truncated.clone().expect("reported");
    assert_eq!((t.segment, t.offset), (SegmentId(0), f.offset as u64));
    assert_eq!(
        t.discarded_frames, 2,
        "the two valid frames after the damage"
    );
    assert_eq!(drain(&store), payloads[..idx - 1].to_vec());
}

#[test]
fn a_missing_middle_segment_is_corruption_at_the_seal() {
    let vfs = MemVfs::new();
    multi_segment(&vfs);
    let ids = segment_ids(&vfs);
    let seg0 = vfs.read_file(&seg_path(&dir(), 0)).expect("segment 0");
    let seal = *frames(&seg0).last().expect("frames");
    assert_eq!(seal.kind, 1);
    let damaged = with_segment(&vfs, 0, seg0);
    damaged.remove(&seg_path(&dir(), ids[1])).expect("remove");
    assert_corruption(open(&damaged, opts()), 0, seal.offset, "segment 1 missing");
}
