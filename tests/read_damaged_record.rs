//! Proves that a payload damaged on disk after the store was opened is reported when it is
//! read, as corruption at the record's segment and offset, without trusting the damaged
//! length field (no huge allocation, no panic) and without losing the message.

use std::path::Path;
use std::sync::Arc;

use walq::format::{SegmentHeader, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use walq::io::MemVfs;
use walq::{Error, SegmentId, Store, StoreOptions};

const SEGMENT: &str = "/s/00000000000000000000.wal";

fn setup() -> (MemVfs, Store, u64) {
    let vfs = MemVfs::new();
    let store = Store::open_with_vfs(
        Arc::new(vfs.clone()),
        Path::new("/s"),
        StoreOptions::new().segment_size(1 << 20),
    )
    .expect("open");
    let q = store.declare_queue("q").expect("declare");
    q.publish(b"first").expect("publish");
    q.publish(b"second").expect("publish");
    // The second publish record follows the declaration and the first publish.
    let bytes = vfs.read_file(Path::new(SEGMENT)).expect("segment");
    let salt = SegmentHeader::decode(&bytes).expect("header").salt;
    let mut offset = SEGMENT_HEADER_LEN as u64;
    for _ in 0..2 {
        let frame =
            walq::format::decode_frame(&bytes[offset as usize..], salt, 0, offset).expect("frame");
        offset = frame.next_offset;
    }
    (vfs, store, offset)
}

fn damage(vfs: &MemVfs, at: usize, with: &[u8]) {
    let mut bytes = vfs.read_file(Path::new(SEGMENT)).expect("segment");
    bytes[at..at + with.len()].copy_from_slice(with);
    vfs.write_file(Path::new(SEGMENT), bytes);
}

#[test]
fn a_huge_length_field_is_corruption_not_an_allocation() {
    let (vfs, store, second) = setup();
    // The length field is at offset 4 of the frame.
    damage(&vfs, second as usize + 4, &u32::MAX.to_le_bytes());
    let q = store.queue("q").expect("queue");
    let first = q.try_receive().expect("first is intact").expect("ready");
    assert_eq!(first.payload, b"first");
    match q.try_receive() {
        Err(Error::Corruption {
            segment, offset, ..
        }) => {
            assert_eq!((segment, offset), (SegmentId(0), second));
        }
        other => panic!("expected corruption at 0@{second}, got {other:?}"),
    }
    // The message is not lost: it stays first in line and is reported again.
    assert!(matches!(q.try_receive(), Err(Error::Corruption { .. })));
    assert_eq!(q.stats().ready, 1);
}

#[test]
fn a_flipped_payload_bit_is_corruption() {
    let (vfs, store, second) = setup();
    let at = second as usize + FRAME_HEADER_LEN + walq::format::PUBLISH_HEADER_LEN; // first payload byte
    let mut bytes = vfs.read_file(Path::new(SEGMENT)).expect("segment");
    bytes[at] ^= 0x10;
    vfs.write_file(Path::new(SEGMENT), bytes);
    let q = store.queue("q").expect("queue");
    q.try_receive().expect("first").expect("ready");
    assert!(
        matches!(q.try_receive(), Err(Error::Corruption { segment: SegmentId(0), offset, .. }) if offset == second),
        "a damaged payload must not be delivered"
    );
}
