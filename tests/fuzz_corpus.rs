//! Replays every input under `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/` through
//! the same code the fuzz targets run (`fuzz/src/targets.rs`, `fuzz/src/api_model.rs`), so
//! `cargo test` catches a regression of any input the fuzzer ever saved, and checks that the
//! seed inputs reach what they were made for (valid frames decode; a valid store opens and
//! delivers; a torn tail under strict recovery and proven-durable damage are refused; the
//! API scripts deliver, redeliver, reopen and crash while agreeing with the model).
//!
//! `cargo test --test fuzz_corpus -- --ignored generate_seed_corpus` rewrites the seeds.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use walq::format::segment_file_name;
use walq::io::MemVfs;
use walq::{Store, StoreOptions};

mod targets {
    include!("../fuzz/src/targets.rs");
}

mod api_model {
    include!("../fuzz/src/api_model.rs");
}

use api_model::ApiOutcome;
use targets::Outcome;

/// What an input did, per kind of target.
#[derive(Debug, Clone, Copy)]
enum Did {
    Format(Outcome),
    Api(ApiOutcome),
}

type Target = fn(&[u8]) -> Did;

const TARGETS: [(&str, Target); 3] = [
    ("decode_frame", |data| {
        Did::Format(targets::decode_frame_target(data))
    }),
    ("open_dir", |data| {
        Did::Format(targets::open_dir_target(data))
    }),
    ("api_model", |data| {
        Did::Api(api_model::api_model_target(data))
    }),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every input file: (target, path).
fn inputs() -> Vec<(&'static str, Target, PathBuf)> {
    let mut found = Vec::new();
    for kind in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for entry in entries {
            let dir = entry.expect("directory entry").path();
            if !dir.is_dir() {
                continue;
            }
            let name = dir.file_name().unwrap_or_default().to_string_lossy();
            let (target, run) = TARGETS
                .iter()
                .find(|(t, _)| *t == name)
                .copied()
                .unwrap_or_else(|| panic!("{} is not a known fuzz target", dir.display()));
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .expect("read target directory")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.is_file())
                .filter(|p| {
                    !p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .starts_with('.')
                })
                .collect();
            files.sort();
            found.extend(files.into_iter().map(|p| (target, run, p)));
        }
    }
    found
}

#[test]
fn replay_fuzz_corpus_and_artifacts() {
    let inputs = inputs();
    let mut failed = Vec::new();
    let mut outcomes: BTreeMap<String, Did> = BTreeMap::new();
    for (target, run, path) in &inputs {
        let data = match std::fs::read(path) {
            Ok(data) => data,
            // A fuzzer running meanwhile may reduce its corpus and delete inputs.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("read {}: {e}", path.display()),
        };
        match catch_unwind(AssertUnwindSafe(|| run(&data))) {
            Ok(outcome) => {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                outcomes.insert(format!("{target}/{name}"), outcome);
            }
            Err(_) => failed.push(path.display().to_string()),
        }
    }

    // The seeds are there and do what they were made for.
    for (target, _) in TARGETS {
        assert!(
            inputs.iter().any(|(t, _, _)| *t == target),
            "no corpus for fuzz target {target}"
        );
    }
    let did = |name: &str| {
        *outcomes.get(name).unwrap_or_else(|| {
            panic!("seed {name} missing (run generate_seed_corpus) or panicked: {failed:#?}")
        })
    };
    let expect = |name: &str| match did(name) {
        Did::Format(outcome) => outcome,
        Did::Api(_) => panic!("{name} is not a format seed"),
    };
    let expect_api = |name: &str| match did(name) {
        Did::Api(outcome) => outcome,
        Did::Format(_) => panic!("{name} is not an API seed"),
    };
    assert!(expect("decode_frame/seed-real-segment").frames >= 8);
    assert!(expect("decode_frame/seed-script").frames >= 8);
    // Recovered: jobs #1 (requeued) and #2, mail #3 (out with a consumer) and #4; the
    // target nacks #3 with requeue once, so it is delivered twice: five deliveries.
    let opened = expect("open_dir/seed-raw-closed");
    assert!(opened.opened && opened.delivered == 5, "{opened:?}");
    let unacked = expect("open_dir/seed-raw-unacked");
    assert!(unacked.opened && unacked.delivered == 5, "{unacked:?}");
    assert!(expect("open_dir/seed-raw-torn-tail").opened);
    assert!(!expect("open_dir/seed-raw-torn-strict").opened);
    assert!(expect("open_dir/seed-synth-one").delivered >= 2);
    assert!(expect("open_dir/seed-synth-two").delivered >= 2);
    assert!(!expect("open_dir/seed-synth-proven-durable").opened);
    assert!(expect("open_dir/seed-synth-salvage").opened);
    // The API scripts run to the end and reach what they were written for.
    let basic = expect_api("api_model/seed-basic");
    assert!(
        basic.ops >= 20 && basic.delivered >= 8 && basic.reopens >= 2,
        "{basic:?}"
    );
    assert!(basic.errors >= 4, "{basic:?}");
    let consumer = expect_api("api_model/seed-consumer");
    assert!(
        consumer.delivered >= 6 && consumer.errors >= 2,
        "{consumer:?}"
    );
    let crash = expect_api("api_model/seed-crash");
    assert!(crash.crashes >= 2 && crash.delivered >= 6, "{crash:?}");
    let limit = expect_api("api_model/seed-delivery-limit");
    assert!(
        limit.delivered >= 5 && limit.reopens >= 1 && limit.dropped == 2,
        "{limit:?}"
    );
    let at_open = expect_api("api_model/seed-limit-at-open");
    assert!(at_open.dropped == 2 && at_open.reopens == 2, "{at_open:?}");
    let compact = expect_api("api_model/seed-compact");
    assert!(
        compact.compactions == 3 && compact.relocated >= 5 && compact.crashes == 1,
        "{compact:?}"
    );
    assert!(compact.delivered >= 45, "{compact:?}");
    // Last, so that the seed checks above still run while a saved input fails.
    assert!(failed.is_empty(), "inputs that panic: {failed:#?}");
}

// ---------------------------------------------------------------------------------------
// Seed generation
// ---------------------------------------------------------------------------------------

/// A script for `synth_segment`: two queues, publishes (one atomic pair), a delivery, an
/// ack, a requeue, a marked delivery and a commit.
fn script_one() -> Vec<u8> {
    let mut s = vec![0, 0, 0, 1]; // declare q0, q1
    s.extend([1, 0, 0, 3, b'a', b'b', b'c']); // publish #0 to q0
    s.extend([1, 1, 1, 0]); // publish #1 to q1, empty
    s.extend([0x81, 2, 0, 2, b'x', b'y']); // publish #2 to q0, group continues
    s.extend([1, 3, 0, 1, b'z']); // publish #3 to q0, ends the group
    s.extend([4, 0, 1]); // deliver #0, count 1
    s.extend([2, 0, 0]); // ack #0
    s.extend([4, 1, 1]); // deliver #1
    s.extend([3, 1, 1, 0]); // rollback #1 with requeue, count 1
    s.extend([0x44, 2, 1]); // deliver #2, durable mark at its own offset
    s.push(6); // commit
    s
}

/// Builds a real segment: two queues, publishes, a batch, acks, a requeue, an unacked
/// delivery; closed cleanly or dropped. Returns the segment's bytes (without the
/// preallocated zeros) and the offset where its last frame starts.
fn real_segment(close: bool) -> (Vec<u8>, u64) {
    let vfs = MemVfs::new();
    let dir = Path::new("/seed/store");
    let store =
        Store::open_with_vfs(Arc::new(vfs.clone()), dir, StoreOptions::new()).expect("open");
    let jobs = store.declare_queue("jobs").expect("declare");
    let mail = store.declare_queue("mail").expect("declare");
    for n in 0..3 {
        jobs.publish(format!("job {n}").as_bytes())
            .expect("publish");
    }
    mail.publish_batch(&[b"hello".as_slice(), b"world"])
        .expect("batch");
    let first = jobs.try_receive().expect("receive").expect("a job");
    jobs.ack(first.id).expect("ack");
    let second = jobs.try_receive().expect("receive").expect("a job");
    jobs.nack(second.id, true).expect("nack");
    let _held = mail.try_receive().expect("receive").expect("mail");
    if close {
        store.close().expect("close");
    }
    let end = store.stats().log_bytes;
    drop((jobs, mail, store));
    let mut bytes = vfs
        .read_file(&dir.join(segment_file_name(0)))
        .expect("segment 0 exists");
    bytes.truncate(end as usize);
    // The last frame is a delivery record (32 bytes) or, after close, a commit (16 bytes).
    let last = end - if close { 16 } else { 32 };
    (bytes, last)
}

fn open_dir_input(flags: u8, first_id: u8, split: u16, body: &[u8]) -> Vec<u8> {
    let mut input = vec![flags, first_id];
    input.extend(split.to_le_bytes());
    input.extend_from_slice(body);
    input
}

// Scripts for the `api_model` target (layout and op codes: `fuzz/src/api_model.rs`).
const PUBLISH: u8 = 0;
const BATCH: u8 = 2;
const RECEIVE: u8 = 3;
const ACK: u8 = 5;
const REQUEUE: u8 = 6;
const REJECT: u8 = 7;
const VIA_QUEUE: u8 = 8;
const SETTLE_ANY: u8 = 9;
const CONSUME: u8 = 10;
const CONSUMER_RECEIVE: u8 = 11;
const CONSUMER_SETTLE: u8 = 12;
const REOPEN: u8 = 13;
const SYNC: u8 = 14;
const CONSUMER_CLOSE: u8 = 15;

/// Publishes, receives, acks, requeues, rejects, every settle error, reopens both ways.
fn api_basic() -> Vec<u8> {
    let mut s = vec![4]; // MemVfs, FsyncPolicy::Always
    s.extend([PUBLISH, 0, 10, PUBLISH, 0, 20, PUBLISH, 0, 255]); // #0-#2 to a
    s.extend([BATCH, 1, 3, 5]); // #3-#5 to b
    s.extend([RECEIVE, 0, RECEIVE, 0]); // #0, #1 out
    s.extend([ACK, 0, REQUEUE, 0]); // ack #0, requeue #1
    s.extend([RECEIVE, 0]); // #1 again, redelivered
    s.extend([VIA_QUEUE, 1, 0, 0]); // ack #1 through b: WrongQueue
    s.extend([SETTLE_ANY, 0, 0, SETTLE_ANY, 200, 0, SETTLE_ANY, 5, 1]); // settled, unknown, waiting
    s.extend([BATCH, 0, 0, 0]); // EmptyBatch
    s.extend([RECEIVE, 1, RECEIVE, 1, REJECT, 1]); // #3, #4 out; reject #3
    s.extend([REOPEN, 0]); // #1, #4 come back, redelivered
    s.extend([RECEIVE, 0, RECEIVE, 0, VIA_QUEUE, 0, 0, 0]);
    s.extend([SYNC, 0, REOPEN, 1]); // close and reopen
    s.extend([RECEIVE, 0, RECEIVE, 1, RECEIVE, 1, ACK, 0, ACK, 0, ACK, 0]);
    s
}

/// A consumer with prefetch 2, `ack_multiple`, `WrongConsumer`, `InvalidOptions`, a
/// consumer dropped with deliveries out, and a reopen.
fn api_consumer() -> Vec<u8> {
    let mut s = vec![0]; // MemVfs, FsyncPolicy::Never
    for len in [1, 2, 3, 4, 5, 6] {
        s.extend([PUBLISH, 0, len]);
    }
    s.extend([CONSUME, 0, 2]); // prefetch 2
    s.extend([CONSUMER_RECEIVE, CONSUMER_RECEIVE, CONSUMER_RECEIVE]); // the third gets nothing
    s.extend([VIA_QUEUE, 0, 0, 0]); // ack #0 through the queue: WrongConsumer
    s.extend([CONSUMER_SETTLE, 1, 3]); // ack_multiple up to #1
    s.extend([CONSUMER_RECEIVE, CONSUMER_RECEIVE, CONSUMER_SETTLE, 0, 1]); // requeue #2
    s.extend([CONSUME, 0, 0]); // prefetch 0: InvalidOptions; the old consumer returns #3
    s.extend([CONSUME, 0, 0x80]); // unlimited
    s.extend([
        CONSUMER_RECEIVE,
        CONSUMER_RECEIVE,
        CONSUMER_RECEIVE,
        CONSUMER_SETTLE,
        0,
        2,
    ]);
    s.extend([RECEIVE, 0, CONSUMER_SETTLE, 9, 0]); // a delivery of the queue handle
    s.extend([CONSUMER_CLOSE, 1, RECEIVE, 0, RECEIVE, 0]);
    s.extend([
        CONSUME,
        0,
        1,
        CONSUMER_RECEIVE,
        REOPEN,
        0,
        RECEIVE,
        0,
        RECEIVE,
        0,
    ]);
    s
}

/// Process crashes on a simulated disk with deliveries out through a queue handle and a
/// consumer, and without delivery records.
fn api_crash() -> Vec<u8> {
    let mut s = vec![1 | 2]; // SimVfs, persist_deliveries(false)
    s.extend([BATCH, 0, 3, 40, BATCH, 1, 3, 7]); // #0-#2 to a, #3-#5 to b
    s.extend([RECEIVE, 0, REQUEUE, 0, RECEIVE, 0, RECEIVE, 0]); // #0 requeued, out again
    s.extend([CONSUME, 1, 2, CONSUMER_RECEIVE, CONSUMER_RECEIVE]);
    s.extend([REOPEN, 2]); // crash
    s.extend([RECEIVE, 0, RECEIVE, 0, RECEIVE, 1, ACK, 0, REJECT, 0]);
    s.extend([CONSUME, 1, 0x80, CONSUMER_RECEIVE, CONSUMER_RECEIVE]);
    s.extend([REOPEN, 2]); // crash again
    s.extend([RECEIVE, 0, RECEIVE, 1, RECEIVE, 1, RECEIVE, 1]);
    s
}

/// Queue `b` with `max_deliveries(2)` and no delivery records: the second requeue drops.
fn api_delivery_limit() -> Vec<u8> {
    let mut s = vec![(2 << 3) | 2 | 4];
    s.extend([PUBLISH, 1, 9, PUBLISH, 1, 9]);
    s.extend([RECEIVE, 1, REQUEUE, 0, RECEIVE, 1, REQUEUE, 0]); // #0 dropped
    s.extend([RECEIVE, 1, RECEIVE, 1, REOPEN, 0, RECEIVE, 1, REQUEUE, 0]);
    s.extend([RECEIVE, 1, REQUEUE, 0, RECEIVE, 1]);
    s
}

/// Queue `b` with `max_deliveries(2)` and delivery records: a delivery out at a close with
/// its count at the limit is dropped by the next open; one out with the consumer at a reopen
/// is returned by it, and dropped when it comes back over the limit later.
fn api_limit_at_open() -> Vec<u8> {
    let mut s = vec![(2 << 3) | 4];
    s.extend([PUBLISH, 1, 3, PUBLISH, 1, 4]);
    s.extend([RECEIVE, 1, REQUEUE, 0, RECEIVE, 1]); // #0 out for the second time
    s.extend([REOPEN, 1]); // close; the open drops #0
    s.extend([CONSUME, 1, 0x80, CONSUMER_RECEIVE, REOPEN, 0]); // #1 returned by the consumer
    s.extend([CONSUME, 1, 1, CONSUMER_RECEIVE, CONSUMER_SETTLE, 0, 1]); // requeued: dropped
    s.extend([RECEIVE, 1]); // nothing left
    s
}

/// Compaction between operations: a sealed segment mostly acked has its stragglers
/// relocated and is deleted; a crash after that recovers from the checkpoint.
fn api_compact() -> Vec<u8> {
    let mut s = vec![1 | 4]; // SimVfs, FsyncPolicy::Always
    for _ in 0..15 {
        s.extend([BATCH, 0, 3, 255]); // 45 messages, 11 KiB: over 1/8 of a segment
    }
    s.extend([SYNC, 1]); // compact: seals segment 0
    for _ in 0..40 {
        s.extend([RECEIVE, 0, ACK, 0]);
    }
    s.extend([SYNC, 1]); // compact: 5 of 45 live, relocated; segment 0 deleted
    s.extend([REOPEN, 2]); // crash
    s.extend([RECEIVE, 0, RECEIVE, 0, ACK, 1, SYNC, 1, REOPEN, 1]);
    s.extend([RECEIVE, 0, RECEIVE, 0, RECEIVE, 0, RECEIVE, 0]);
    s
}

#[test]
#[ignore = "rewrites fuzz/corpus; run by hand"]
fn generate_seed_corpus() {
    let (closed, _) = real_segment(true);
    let (unacked, last) = real_segment(false);
    let torn = &unacked[..last as usize + 20];
    let one = script_one();
    let two_first = [0u8, 0, 1, 0, 0, 2, b'h', b'i', 5]; // declare, publish #0, seal
    let two_second = [1u8, 1, 0, 1, b'!', 4, 1, 1]; // publish #1, deliver #1
    let two: Vec<u8> = two_first.iter().chain(&two_second).copied().collect();
    let split = two_first.len() as u16;
    // Damage a byte of the first segment's publish: corruption in a sealed segment.
    let mut salvage = vec![8, 100, 0, 0xff];
    salvage.extend_from_slice(&two);
    let salvage_split = split + 4;
    // A frame lost in the middle, and a later frame whose mark proves it was durable.
    let proven = [0u8, 0, 1, 0, 0, 1, b'a', 9, 1, 0x41, 1, 0, 1, b'b'];

    let seeds: Vec<(&str, &str, Vec<u8>)> = vec![
        ("decode_frame", "seed-real-segment", closed.clone()),
        ("decode_frame", "seed-torn-tail", torn.to_vec()),
        ("decode_frame", "seed-script", one.clone()),
        (
            "open_dir",
            "seed-raw-closed",
            open_dir_input(0, 0, 0, &closed),
        ),
        (
            "open_dir",
            "seed-raw-unacked",
            open_dir_input(0, 0, 0, &unacked),
        ),
        (
            "open_dir",
            "seed-raw-torn-tail",
            open_dir_input(0, 0, 0, torn),
        ),
        (
            "open_dir",
            "seed-raw-torn-strict",
            open_dir_input(2, 0, 0, torn),
        ),
        ("open_dir", "seed-synth-one", open_dir_input(16, 0, 0, &one)),
        (
            "open_dir",
            "seed-synth-two",
            open_dir_input(17, 4, split, &two),
        ),
        (
            "open_dir",
            "seed-synth-proven-durable",
            open_dir_input(16, 0, 0, &proven),
        ),
        (
            "open_dir",
            "seed-synth-salvage",
            open_dir_input(16 | 4 | 1, 0, salvage_split, &salvage),
        ),
        ("api_model", "seed-basic", api_basic()),
        ("api_model", "seed-consumer", api_consumer()),
        ("api_model", "seed-crash", api_crash()),
        ("api_model", "seed-delivery-limit", api_delivery_limit()),
        ("api_model", "seed-limit-at-open", api_limit_at_open()),
        ("api_model", "seed-compact", api_compact()),
    ];
    for (target, name, bytes) in seeds {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).expect("create corpus directory");
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
}
