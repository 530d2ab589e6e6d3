//! When recovery ends on a sealed segment, the segment it creates next must be the one the
//! seal names, or the store it opened cannot be opened again:
//! - a store that `RecoveryMode::Salvage` brought back into service after setting aside the
//!   segments that follow an intact, sealed segment (a damaged segment header, or a missing
//!   segment) reopens in the default mode with everything written after the salvage;
//! - a last segment whose checksum-valid seal names an unexpected successor is either
//!   refused as corruption at once or, if it opens, reopens after a clean close.
//!
//! Found by the `open_dir` fuzz target (`fuzz/corpus/open_dir/regression-*`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use walq::format::{
    decode_frame, encode_frame, segment_file_name, FrameHeader, RecordFlags, RecordKind, SealBody,
    SegmentHeader, SEGMENT_HEADER_LEN,
};
use walq::io::{MemVfs, Vfs};
use walq::{RecoveryMode, SegmentId, Store, StoreOptions};

const SEGMENT: u64 = 64 << 10;

fn dir() -> PathBuf {
    PathBuf::from("/salvage/store")
}

fn opts() -> StoreOptions {
    StoreOptions::new().segment_size(SEGMENT)
}

fn open(vfs: &MemVfs, opts: StoreOptions) -> walq::Result<Store> {
    Store::open_with_vfs(Arc::new(vfs.clone()), &dir(), opts)
}

fn segment_ids(vfs: &MemVfs) -> Vec<u64> {
    let mut ids: Vec<u64> = vfs
        .list(&dir())
        .expect("list")
        .iter()
        .filter_map(|n| walq::format::parse_segment_file_name(n))
        .collect();
    ids.sort_unstable();
    ids
}

fn seg(id: u64) -> PathBuf {
    dir().join(segment_file_name(id))
}

/// Publishes 1000-byte messages until the log spans three segments; returns the payloads
/// that live in segment 0.
fn three_segments(vfs: &MemVfs) -> Vec<Vec<u8>> {
    let store = open(vfs, opts()).expect("open");
    let queue = store.declare_queue("q").expect("declare");
    let mut in_first = Vec::new();
    let mut n = 0u32;
    while segment_ids(vfs).len() < 3 {
        let payload: Vec<u8> = format!("message {n:05} ")
            .bytes()
            .cycle()
            .take(1000)
            .collect();
        queue.publish(&payload).expect("publish");
        if segment_ids(vfs).len() == 1 {
            in_first.push(payload);
        }
        n += 1;
    }
    store.close().expect("close");
    in_first
}

fn drain(store: &Store) -> Vec<Vec<u8>> {
    let queue = store.queue("q").expect("queue");
    let mut out = Vec::new();
    while let Some(d) = queue.try_receive().expect("receive") {
        queue.ack(d.id).expect("ack");
        out.push(d.payload);
    }
    out
}

/// Salvages, publishes one message, closes, and checks the default mode reopens the store
/// with the survivors and that message.
fn salvage_then_reopen(vfs: &MemVfs, survivors: &[Vec<u8>], quarantined: &[u64]) {
    {
        let store = open(vfs, opts().recovery(RecoveryMode::Salvage)).expect("salvage opens");
        let report = store.recovery_report().clone();
        let expected: Vec<PathBuf> = quarantined
            .iter()
            .map(|&id| dir().join(format!("{}.quarantine", segment_file_name(id))))
            .collect();
        assert_eq!(report.quarantined, expected);
        let cut = report.truncated.expect("the cut is reported");
        assert!(cut.segment <= SegmentId(quarantined[0]), "{cut:?}");
        let queue = store.queue("q").expect("queue");
        // Nothing acked yet: peek at the survivors by delivering and requeueing them.
        let mut seen = Vec::new();
        while let Some(d) = queue.try_receive().expect("receive") {
            seen.push(d);
        }
        for d in &seen {
            queue.nack(d.id, true).expect("requeue");
        }
        assert_eq!(
            seen.iter().map(|d| d.payload.clone()).collect::<Vec<_>>(),
            survivors
        );
        queue
            .publish(b"written after the salvage")
            .expect("publish");
        store.close().expect("close");
    }
    let after: Vec<u64> = segment_ids(vfs);
    let store = open(vfs, opts()).unwrap_or_else(|e| {
        panic!("the default mode refuses the salvaged store (segments {after:?}): {e}")
    });
    assert_eq!(store.recovery_report().truncated, None);
    assert!(store.recovery_report().quarantined.is_empty());
    let mut expected = survivors.to_vec();
    expected.push(b"written after the salvage".to_vec());
    assert_eq!(drain(&store), expected);
}

#[test]
fn salvage_of_a_damaged_header_after_a_sealed_segment_reopens() {
    let vfs = MemVfs::new();
    let survivors = three_segments(&vfs);
    let ids = segment_ids(&vfs);
    assert_eq!(ids, [0, 1, 2]);
    // Damage segment 1's header (a byte of its salt): segment 0 stays intact and sealed.
    let mut bytes = vfs.read_file(&seg(1)).expect("segment 1");
    bytes[24] ^= 0x40;
    vfs.write_file(&seg(1), bytes);
    assert!(open(&vfs, opts()).is_err(), "the default mode refuses");
    salvage_then_reopen(&vfs, &survivors, &[1, 2]);
}

#[test]
fn salvage_of_a_missing_segment_after_a_sealed_segment_reopens() {
    let vfs = MemVfs::new();
    let survivors = three_segments(&vfs);
    vfs.remove(Path::new(&seg(1))).expect("remove segment 1");
    assert!(open(&vfs, opts()).is_err(), "the default mode refuses");
    salvage_then_reopen(&vfs, &survivors, &[2]);
}

#[test]
fn a_last_seal_naming_an_unexpected_successor_is_refused_or_reopens() {
    let vfs = MemVfs::new();
    {
        let store = open(&vfs, opts()).expect("open");
        let queue = store.declare_queue("q").expect("declare");
        queue.publish(b"one").expect("publish");
        queue.publish(b"two").expect("publish");
        store.close().expect("close");
    }
    assert_eq!(segment_ids(&vfs), [0]);
    // Append a valid seal naming segment 7 after the last record of segment 0.
    let mut bytes = vfs.read_file(&seg(0)).expect("segment 0");
    let header = SegmentHeader::decode(&bytes).expect("header");
    let mut end = SEGMENT_HEADER_LEN as u64;
    while let Ok(frame) = decode_frame(&bytes[end as usize..], header.salt, 0, end) {
        end = frame.next_offset;
    }
    let mut seal = Vec::new();
    let body = SealBody { next_segment_id: 7 }.encode();
    let frame = FrameHeader {
        kind: RecordKind::Seal.code(),
        flags: RecordFlags::NONE,
        mark: end as u32,
    };
    encode_frame(&mut seal, header.salt, 0, end, frame, &[&body]);
    bytes[end as usize..end as usize + seal.len()].copy_from_slice(&seal);
    vfs.write_file(&seg(0), bytes);

    match open(&vfs, opts()) {
        Err(walq::Error::Corruption { segment, .. }) => assert_eq!(segment, SegmentId(0)),
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(store) => {
            assert_eq!(drain(&store), [b"one".to_vec(), b"two".to_vec()]);
            store
                .queue("q")
                .expect("q")
                .publish(b"three")
                .expect("publish");
            store.close().expect("close");
            drop(store);
            let segments = segment_ids(&vfs);
            let store = open(&vfs, opts()).unwrap_or_else(|e| {
                panic!("opened once, but not after a clean close (segments {segments:?}): {e}")
            });
            assert_eq!(drain(&store), [b"three".to_vec()]);
        }
    }
}
