//! Recovery time against log size: `Store::open` of a store holding N unsettled 256-byte
//! messages (N = 10 000, 100 000, 400 000), as after a crash (the previous handle was
//! dropped without `close`). Throughput is in log bytes per second. The segment files are
//! in the page cache (just written or just read), so this measures walq's replay, not the
//! disk's read speed; each open also pays its fixed `fdatasync` and directory `fsync`.
//!
//!
//! `recovery_history`: `Store::open` of a store holding 1 000 unsettled messages after a
//! history of H acknowledged ones (H = 10 000, 100 000, 400 000), with and without a
//! compaction after the history. With the checkpoint, open time should not grow with H.
//!
//! ```text
//! cargo bench --bench recovery [-- --quick]
//! ```
//! Stores live under `WALQ_BENCH_DIR` if set (see `benches/common/mod.rs`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use walq::{CompactionOptions, FsyncPolicy, Store, StoreOptions};

const PAYLOAD: [u8; 256] = [0xa5; 256];

/// Builds a store of `messages` messages (in batches of 1000, under `Never`), closes it and
/// returns its directory and log size.
fn build(messages: u64) -> (tempfile::TempDir, u64) {
    let dir = common::bench_dir();
    let store = Store::open(dir.path(), options()).expect("open store");
    let queue = store.declare_queue("bench").expect("declare");
    let batch = vec![PAYLOAD; 1000];
    let mut left = messages;
    while left > 0 {
        let n = left.min(1000) as usize;
        queue.publish_batch(&batch[..n]).expect("publish");
        left -= n as u64;
    }
    let log_bytes = store.stats().log_bytes;
    store.close().expect("close");
    (dir, log_bytes)
}

fn options() -> StoreOptions {
    StoreOptions::new().fsync(FsyncPolicy::Never)
}

/// Opens the store at `dir` `iters` times, timing only the opens; `check` looks at each
/// opened store, which is then dropped without `close`.
fn time_opens(dir: &Path, iters: u64, check: impl Fn(&Store)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let store = Store::open(dir, options()).expect("reopen");
        total += start.elapsed();
        check(&store);
    }
    total
}

fn recovery(c: &mut Criterion) {
    let mut group = c.benchmark_group("recovery_open");
    common::disk_bound(&mut group);
    for messages in [10_000_u64, 100_000, 400_000] {
        let (dir, log_bytes) = build(messages);
        group.throughput(Throughput::Bytes(log_bytes));
        group.bench_with_input(
            BenchmarkId::new("messages", messages),
            &messages,
            |b, &messages| {
                // Dropped, not closed: the next open recovers as after a crash.
                b.iter_custom(|iters| {
                    time_opens(dir.path(), iters, |store| {
                        assert_eq!(store.stats().ready, messages);
                    })
                });
            },
        );
    }
    group.finish();
}

/// A store with `history` acked messages followed by 1 000 unacked ones, compacted or not.
fn build_history(history: u64, compacted: bool) -> tempfile::TempDir {
    let dir = common::bench_dir();
    let opts = options().compaction(CompactionOptions::new().background(None));
    let store = Store::open(dir.path(), opts).expect("open store");
    let queue = store.declare_queue("bench").expect("declare");
    let batch = vec![PAYLOAD; 1000];
    for _ in 0..history / 1000 {
        queue.publish_batch(&batch).expect("publish");
        let ids: Vec<_> = (0..1000)
            .map(|_| queue.try_receive().expect("receive").expect("ready").id)
            .collect();
        for id in ids {
            queue.ack(id).expect("ack");
        }
    }
    queue.publish_batch(&batch).expect("publish");
    if compacted {
        store.compact().expect("compact");
    }
    store.close().expect("close");
    dir
}

fn recovery_history(c: &mut Criterion) {
    let mut group = c.benchmark_group("recovery_history");
    common::disk_bound(&mut group);
    for compacted in [false, true] {
        for history in [10_000_u64, 100_000, 400_000] {
            let dir = build_history(history, compacted);
            let name = if compacted {
                "checkpoint"
            } else {
                "full_replay"
            };
            group.bench_with_input(BenchmarkId::new(name, history), &history, |b, _| {
                b.iter_custom(|iters| {
                    time_opens(dir.path(), iters, |store| {
                        assert_eq!(store.stats().ready, 1000);
                        assert_eq!(store.recovery_report().checkpoint.is_some(), compacted);
                    })
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, recovery, recovery_history);
criterion_main!(benches);
