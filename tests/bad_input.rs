//! Proves that bad input (oversized or empty publishes, wrong settlements, bad queue names,
//! invalid options, foreign, garbage or too-new files in the directory) is refused with the
//! documented typed error, writes nothing, never panics, and explains itself in `Display`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use walq::io::{MemVfs, Vfs};
use walq::{
    Error, FsyncPolicy, MessageId, SegmentId, Store, StoreOptions, MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
};

const SEG0: &str = "00000000000000000000.wal";

fn assert_error_traits<T: std::error::Error + Send + Sync + 'static>() {}
const _: fn() = || assert_error_traits::<Error>();

/// Asserts that the error's message is non-empty and contains every one of `details`.
#[track_caller]
fn assert_display(err: &Error, details: &[&str]) {
    let text = err.to_string();
    assert!(!text.trim().is_empty(), "{err:?} has an empty message");
    for detail in details {
        assert!(
            text.contains(detail),
            "the message of {err:?} should mention {detail:?}: {text:?}"
        );
    }
}

fn mem_store(options: StoreOptions) -> (MemVfs, Store) {
    let vfs = MemVfs::new();
    let store = Store::open_with_vfs(Arc::new(vfs.clone()), Path::new("/stores/bad"), options)
        .expect("open the store");
    (vfs, store)
}

fn small() -> StoreOptions {
    StoreOptions::new().segment_size(MIN_SEGMENT_SIZE)
}

/// The largest payload a 64 KiB segment holds: the segment minus its 64-byte header, the
/// 24-byte seal frame it reserves, a 16-byte frame header and the 32-byte publish header.
const SMALL_SEGMENT_CAPACITY: u64 =
    MIN_SEGMENT_SIZE - 64 - 24 - 16 - walq::format::PUBLISH_HEADER_LEN as u64;

// ---------------------------------------------------------------------------------------
// Publishing.

#[test]
fn a_payload_over_max_message_size_is_too_large_and_writes_nothing() {
    let (_vfs, store) = mem_store(small().max_message_size(1000));
    let q = store.declare_queue("q").unwrap();
    q.publish(b"before").unwrap();
    let before = store.stats();

    let err = q.publish(&[7; 1001]).unwrap_err();
    match &err {
        Error::TooLarge { len, max, .. } => assert_eq!((*len, *max), (1001, 1000)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_display(&err, &["1001", "1000"]);

    // One oversized message spoils the whole batch.
    let err = q
        .publish_batch(&[vec![1; 10], vec![2; 1001], vec![3; 10]])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                len: 1001,
                max: 1000,
                ..
            }
        ),
        "{err:?}"
    );

    let after = store.stats();
    assert_eq!(
        after.next_message_id, before.next_message_id,
        "no id was used"
    );
    assert_eq!(after.log_bytes, before.log_bytes, "nothing was written");
    assert_eq!(after.ready, 1);

    // The limit itself is accepted, and ids continue densely.
    assert_eq!(q.publish(&[9; 1000]).unwrap(), MessageId(1));
    assert_eq!(q.try_receive().unwrap().unwrap().payload, b"before");
    assert_eq!(q.try_receive().unwrap().unwrap().payload, vec![9; 1000]);
}

#[test]
fn the_default_max_message_size_follows_a_small_segment() {
    let (vfs, store) = mem_store(small());
    let q = store.declare_queue("q").unwrap();
    q.publish(b"first").unwrap();
    let err = q
        .publish(&vec![0; SMALL_SEGMENT_CAPACITY as usize + 1])
        .unwrap_err();
    match &err {
        Error::TooLarge { len, max, .. } => {
            assert_eq!(
                (*len, *max),
                (SMALL_SEGMENT_CAPACITY + 1, SMALL_SEGMENT_CAPACITY)
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_display(&err, &[&SMALL_SEGMENT_CAPACITY.to_string()]);
    assert_eq!(store.stats().next_message_id, 1);

    // The largest allowed payload fills a whole segment of its own, and reads back intact.
    let big: Vec<u8> = (0..SMALL_SEGMENT_CAPACITY)
        .map(|i| (i % 251) as u8)
        .collect();
    let id = q.publish(&big).unwrap();
    assert_eq!(id, MessageId(1));
    assert!(store.stats().segments >= 2);
    assert_eq!(q.try_receive().unwrap().unwrap().payload, b"first");
    assert_eq!(q.try_receive().unwrap().unwrap().payload, big);
    drop(q);
    drop(store);
    let store = Store::open_with_vfs(Arc::new(vfs), Path::new("/stores/bad"), small()).unwrap();
    assert_eq!(store.stats().ready, 2);
}

#[test]
fn an_empty_batch_is_refused() {
    let (_vfs, store) = mem_store(small());
    let q = store.declare_queue("q").unwrap();
    let before = store.stats();
    let none: [&[u8]; 0] = [];
    let err = q.publish_batch(&none).unwrap_err();
    assert!(matches!(err, Error::EmptyBatch), "{err:?}");
    assert_display(&err, &["at least one"]);
    let after = store.stats();
    assert_eq!(after.next_message_id, before.next_message_id);
    assert_eq!(after.log_bytes, before.log_bytes);
    let empty: Vec<Vec<u8>> = Vec::new();
    assert!(matches!(q.publish_batch(&empty), Err(Error::EmptyBatch)));
}

#[test]
fn a_batch_larger_than_a_segment_is_too_large_and_writes_nothing() {
    let (_vfs, store) = mem_store(small());
    let q = store.declare_queue("q").unwrap();
    q.publish(b"x").unwrap();
    let before = store.stats();
    // Each message is well under the per-message limit; together they exceed a segment.
    let batch = vec![vec![5u8; 10_000]; 10];
    let err = q.publish_batch(&batch).unwrap_err();
    match &err {
        Error::TooLarge { len, max, .. } => {
            assert!(*len > MIN_SEGMENT_SIZE, "{err:?}");
            assert!(*max < MIN_SEGMENT_SIZE, "{err:?}");
            assert_display(&err, &[&len.to_string(), &max.to_string()]);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let after = store.stats();
    assert_eq!(after.next_message_id, before.next_message_id);
    assert_eq!(after.log_bytes, before.log_bytes);
    assert_eq!(after.segments, before.segments);
    // A batch that fits still works.
    assert_eq!(q.publish_batch(&batch[..5]).unwrap().len(), 5);
}

// ---------------------------------------------------------------------------------------
// Settling.

#[test]
fn settling_an_id_never_published_is_unknown_message() {
    let (_vfs, store) = mem_store(small());
    let q = store.declare_queue("q").unwrap();
    q.publish(b"only").unwrap();
    let ghost = MessageId(99);
    for (what, result) in [
        ("Queue::ack", q.ack(ghost)),
        ("Queue::nack", q.nack(ghost, true)),
        ("Store::ack", store.ack(ghost)),
        ("Store::nack", store.nack(ghost, false)),
        ("ack of the next id", q.ack(MessageId(1))),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::UnknownMessage { .. }),
            "{what}: {err:?}"
        );
    }
    let err = store.ack(ghost).unwrap_err();
    assert!(matches!(err, Error::UnknownMessage { id } if id == ghost));
    assert_display(&err, &["99"]);
    let stats = store.stats();
    assert_eq!((stats.ready, stats.acked, stats.rejected), (1, 0, 0));
}

#[test]
fn settling_twice_is_already_settled() {
    let (_vfs, store) = mem_store(small());
    let q = store.declare_queue("q").unwrap();
    let ids = q.publish_batch(&["a", "b", "c", "d"]).unwrap();
    let a = q.try_receive().unwrap().unwrap().id;
    let b = q.try_receive().unwrap().unwrap().id;
    let c = q.try_receive().unwrap().unwrap().id;
    assert_eq!([a, b, c], ids[..3]);

    // `b` is settled while the older `a` is still out, `a` is the oldest message.
    q.ack(b).unwrap();
    q.ack(a).unwrap();
    q.nack(c, false).unwrap();
    let cases = [
        ("double ack, oldest message", q.ack(a), a),
        ("double ack", q.ack(b), b),
        ("nack after ack", q.nack(b, true), b),
        ("reject after ack", store.nack(a, false), a),
        ("ack after reject", q.ack(c), c),
        ("requeue after reject", store.nack(c, true), c),
    ];
    for (what, result, id) in cases {
        match result {
            Err(Error::AlreadySettled { id: got }) => {
                assert_eq!(got, id, "{what}");
                let err = Error::AlreadySettled { id };
                assert_display(&err, &[&id.get().to_string()]);
            }
            other => panic!("{what}: expected AlreadySettled, got {other:?}"),
        }
    }
    let stats = store.stats();
    assert_eq!(
        (stats.acked, stats.rejected, stats.ready, stats.unacked),
        (2, 1, 1, 0)
    );
}

#[test]
fn settling_a_message_waiting_in_its_queue_is_not_delivered() {
    let (_vfs, store) = mem_store(small());
    let q = store.declare_queue("q").unwrap();
    let id = q.publish(b"waiting").unwrap();
    for (what, result) in [
        ("ack", q.ack(id)),
        ("nack", q.nack(id, true)),
        ("reject", q.nack(id, false)),
        ("Store::ack", store.ack(id)),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::NotDelivered { id: got } if got == id),
            "{what}: {err:?}"
        );
        assert_display(&err, &[&id.get().to_string()]);
    }
    // A requeued message is waiting again.
    assert_eq!(q.try_receive().unwrap().unwrap().id, id);
    q.nack(id, true).unwrap();
    assert!(matches!(q.ack(id), Err(Error::NotDelivered { .. })));
    let stats = store.stats();
    assert_eq!(
        (stats.ready, stats.unacked, stats.acked, stats.rejected),
        (1, 0, 0, 0)
    );
    assert_eq!(q.try_receive().unwrap().unwrap().id, id);
    q.ack(id).unwrap();
}

#[test]
fn settling_through_another_queue_is_wrong_queue() {
    let (_vfs, store) = mem_store(small());
    let orders = store.declare_queue("orders").unwrap();
    let emails = store.declare_queue("emails").unwrap();
    let id = orders.publish(b"order 1").unwrap();
    assert_eq!(orders.try_receive().unwrap().unwrap().id, id);

    for result in [
        emails.ack(id),
        emails.nack(id, true),
        emails.nack(id, false),
    ] {
        let err = result.unwrap_err();
        match &err {
            Error::WrongQueue {
                id: got,
                expected,
                actual,
            } => {
                assert_eq!(*got, id);
                assert_eq!(expected, "emails");
                assert_eq!(actual, "orders");
            }
            other => panic!("expected WrongQueue, got {other:?}"),
        }
        assert_display(&err, &["emails", "orders"]);
    }
    // The refused calls left the message out with its consumer.
    assert_eq!(orders.stats().unacked, 1);
    orders.ack(id).unwrap();
    assert_eq!(orders.stats().acked, 1);
    assert_eq!(emails.stats().acked, 0);
}

// ---------------------------------------------------------------------------------------
// Queue names and options.

#[test]
fn invalid_queue_names_are_refused() {
    let (_vfs, store) = mem_store(small());
    let too_long = "x".repeat(256);
    let too_long_utf8 = "é".repeat(128); // 256 bytes, 128 characters
    for name in ["", too_long.as_str(), too_long_utf8.as_str()] {
        let err = store.declare_queue(name).unwrap_err();
        assert!(
            matches!(err, Error::InvalidQueueName { .. }),
            "name of {} bytes: {err:?}",
            name.len()
        );
        let detail = if name.is_empty() { "empty" } else { "255" };
        assert_display(&err, &[detail]);
    }
    assert!(store.queue_names().is_empty(), "nothing was declared");
    let longest = "y".repeat(255);
    assert_eq!(store.declare_queue(&longest).unwrap().name(), longest);
}

/// Expects `open` with `options` to fail with InvalidOptions mentioning `detail`, without
/// creating the directory.
#[track_caller]
fn assert_invalid(options: StoreOptions, detail: &str) {
    let vfs = MemVfs::new();
    let dir = Path::new("/stores/invalid");
    let result = Store::open_with_vfs(Arc::new(vfs.clone()), dir, options.clone());
    match &result {
        Err(err @ Error::InvalidOptions(_)) => assert_display(err, &[detail]),
        Err(other) => panic!("expected InvalidOptions, got {other:?}"),
        Ok(_) => panic!("options {options:?} were accepted"),
    }
    assert!(
        vfs.list(dir).is_err(),
        "a refused open must not create the directory"
    );

    let tmp = tempfile::tempdir().unwrap();
    let disk_dir = tmp.path().join("store");
    let result = Store::open(&disk_dir, options);
    assert!(
        matches!(result, Err(Error::InvalidOptions(_))),
        "on disk too"
    );
    assert!(
        !disk_dir.exists(),
        "a refused open must not create the directory"
    );
}

#[test]
fn invalid_options_are_refused() {
    let ms = Duration::from_millis;
    assert_invalid(
        StoreOptions::new().segment_size(MIN_SEGMENT_SIZE - 8),
        &(MIN_SEGMENT_SIZE - 8).to_string(),
    );
    assert_invalid(
        StoreOptions::new().segment_size(MAX_SEGMENT_SIZE + 8),
        &(MAX_SEGMENT_SIZE + 8).to_string(),
    );
    assert_invalid(StoreOptions::new().segment_size(0), "segment size");
    assert_invalid(
        StoreOptions::new().segment_size(MIN_SEGMENT_SIZE + 4),
        "multiple of 8",
    );
    assert_invalid(
        StoreOptions::new().fsync(FsyncPolicy::Batch {
            max_messages: 0,
            max_delay: ms(5),
        }),
        "max_messages",
    );
    assert_invalid(
        StoreOptions::new().fsync(FsyncPolicy::Batch {
            max_messages: 10,
            max_delay: Duration::ZERO,
        }),
        "1 ms",
    );
    assert_invalid(
        StoreOptions::new().fsync(FsyncPolicy::Interval(Duration::ZERO)),
        "1 ms",
    );
    assert_invalid(
        StoreOptions::new().fsync(FsyncPolicy::Interval(Duration::from_micros(500))),
        "1 ms",
    );
    assert_invalid(small().max_message_size(0), "max message size");
    assert_invalid(
        small().max_message_size(SMALL_SEGMENT_CAPACITY + 1),
        &SMALL_SEGMENT_CAPACITY.to_string(),
    );
    assert_invalid(
        small().max_message_size(MIN_SEGMENT_SIZE),
        "max message size",
    );
}

#[test]
fn options_at_their_limits_are_accepted() {
    let accepted = [
        small(),
        small().max_message_size(SMALL_SEGMENT_CAPACITY),
        small().max_message_size(1),
        StoreOptions::new()
            .segment_size(MAX_SEGMENT_SIZE)
            .preallocate(false),
        small().fsync(FsyncPolicy::Batch {
            max_messages: 1,
            max_delay: Duration::from_millis(1),
        }),
        small().fsync(FsyncPolicy::Interval(Duration::from_millis(1))),
    ];
    for options in accepted {
        let (_vfs, store) = mem_store(options.clone());
        let q = store.declare_queue("q").unwrap();
        q.publish(b"x").unwrap();
        assert_eq!(
            q.try_receive().unwrap().unwrap().payload,
            b"x",
            "{options:?}"
        );
    }
    // With max_message_size(1), two bytes are too many.
    let (_vfs, store) = mem_store(small().max_message_size(1));
    let q = store.declare_queue("q").unwrap();
    assert!(matches!(q.publish(b"xy"), Err(Error::TooLarge { .. })));
}

// ---------------------------------------------------------------------------------------
// Files in the store directory.

/// Deterministic pseudo-random bytes (xorshift64*).
fn garbage(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

#[track_caller]
fn assert_corruption_at_start(result: walq::Result<Store>) {
    match result {
        Err(err @ Error::Corruption { .. }) => {
            let Error::Corruption {
                segment, offset, ..
            } = &err
            else {
                unreachable!()
            };
            assert_eq!((*segment, *offset), (SegmentId(0), 0), "{err:?}");
            assert_display(&err, &["segment 0", "offset 0"]);
        }
        Err(other) => panic!("expected Corruption, got {other:?}"),
        Ok(_) => panic!("a garbage segment was accepted"),
    }
}

#[test]
fn a_garbage_segment_file_is_corruption_at_offset_zero() {
    for (len, seed) in [(4096, 1), (64 << 10, 2), (100, 3), (10, 4), (0, 5)] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let bytes = garbage(len, seed);
        std::fs::write(dir.join(SEG0), &bytes).unwrap();
        assert_corruption_at_start(Store::open(dir, small()));
        // The file is left alone for inspection.
        assert_eq!(std::fs::read(dir.join(SEG0)).unwrap(), bytes);

        let vfs = MemVfs::new();
        let mem_dir = Path::new("/stores/garbage");
        vfs.create_dir_all(mem_dir).unwrap();
        vfs.write_file(&mem_dir.join(SEG0), garbage(len, seed));
        assert_corruption_at_start(Store::open_with_vfs(Arc::new(vfs), mem_dir, small()));
    }
}

#[test]
fn a_foreign_file_in_the_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    {
        let store = Store::open(&dir, small()).unwrap();
        store.declare_queue("q").unwrap().publish(b"kept").unwrap();
        store.close().unwrap();
    }
    let foreign = dir.join("notes.txt");
    std::fs::write(&foreign, b"shopping list").unwrap();
    let err = Store::open(&dir, small()).unwrap_err();
    match &err {
        Error::ForeignFile { path } => assert_eq!(path, &foreign),
        other => panic!("expected ForeignFile, got {other:?}"),
    }
    assert_display(&err, &["notes.txt"]);
    assert_eq!(std::fs::read(&foreign).unwrap(), b"shopping list");

    // A temporary-looking name that is not a segment's is foreign too.
    std::fs::remove_file(&foreign).unwrap();
    let odd = dir.join("scratch.tmp");
    std::fs::write(&odd, b"?").unwrap();
    let err = Store::open(&dir, small()).unwrap_err();
    assert!(
        matches!(&err, Error::ForeignFile { path } if path == &odd),
        "{err:?}"
    );
    std::fs::remove_file(&odd).unwrap();

    let store = Store::open(&dir, small()).expect("the store is fine once the file is gone");
    let q = store.queue("q").unwrap();
    assert_eq!(q.try_receive().unwrap().unwrap().payload, b"kept");
}

#[test]
fn a_segment_of_a_newer_format_version_is_unsupported_version() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    {
        let store = Store::open(&dir, small()).unwrap();
        store.declare_queue("q").unwrap().publish(b"v1").unwrap();
        store.close().unwrap();
    }
    let segment = dir.join(SEG0);
    let mut bytes = std::fs::read(&segment).unwrap();
    assert_eq!(
        &bytes[8..12],
        &1u32.to_le_bytes(),
        "this build writes version 1"
    );
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    // Keep the header checksum valid, so that only the version is wrong.
    let crc = crc32fast::hash(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&segment, &bytes).unwrap();

    let err = Store::open(&dir, small()).unwrap_err();
    match &err {
        Error::UnsupportedVersion {
            path,
            found,
            supported,
        } => {
            assert_eq!((*found, *supported), (2, 1));
            assert_eq!(path, &segment);
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    assert_display(&err, &["version 2", "version 1", SEG0]);
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "the file is left alone"
    );
}

#[test]
fn a_leftover_temporary_segment_is_removed_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    {
        let store = Store::open(&dir, small()).unwrap();
        assert!(store.recovery_report().removed_temp_files.is_empty());
        store.declare_queue("q").unwrap().publish(b"kept").unwrap();
        store.close().unwrap();
    }
    let leftover: PathBuf = dir.join("00000000000000000001.wal.tmp");
    std::fs::write(&leftover, garbage(512, 9)).unwrap();

    let store = Store::open(&dir, small()).unwrap();
    assert!(!leftover.exists(), "the temporary file was deleted");
    assert_eq!(store.recovery_report().removed_temp_files, vec![leftover]);
    let q = store.queue("q").unwrap();
    assert_eq!(q.try_receive().unwrap().unwrap().payload, b"kept");
    drop(q);
    drop(store);

    // A directory holding nothing but a leftover (a crash while creating the first segment).
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let first_tmp = fresh.join(format!("{SEG0}.tmp"));
    std::fs::write(&first_tmp, garbage(64, 10)).unwrap();
    let store = Store::open(&fresh, small()).unwrap();
    assert!(!first_tmp.exists());
    assert_eq!(store.recovery_report().removed_temp_files, vec![first_tmp]);
    assert!(fresh.join(SEG0).exists(), "a new first segment was created");
    assert_eq!(store.stats().next_message_id, 0);
}
