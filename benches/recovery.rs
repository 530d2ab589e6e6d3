//! Recovery time against log size: `Store::open` of a store holding N unsettled 256-byte
//! messages (N = 10 000, 100 000, 400 000), as after a crash (the previous handle was
//! dropped without `close`). Throughput is in log bytes per second. The segment files are
//! in the page cache (just written or just read), so this measures walq's replay, not the
//! disk's read speed; each open also pays its fixed `fdatasync` and directory `fsync`.
//!
//! ```text
//! cargo bench --bench recovery [-- --quick]
//! ```
//! Stores live under `WALQ_BENCH_DIR` if set (see `benches/common/mod.rs`).

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use walq::{FsyncPolicy, Store, StoreOptions};

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
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let store = Store::open(dir.path(), options()).expect("reopen");
                        total += start.elapsed();
                        assert_eq!(store.stats().ready, messages);
                        // Dropped, not closed: the next open recovers as after a crash.
                        drop(store);
                    }
                    total
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, recovery);
criterion_main!(benches);
