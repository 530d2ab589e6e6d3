//! Group commit: 1, 4, 16 and 32 threads publishing 256-byte messages at once under
//! `FsyncPolicy::Always`. Throughput is in messages; with group commit it should grow
//! almost linearly with the number of producers while each publish still waits for its own
//! record to be durable.
//!
//! ```text
//! cargo bench --bench concurrent [-- --quick]
//! ```
//! Stores live under `WALQ_BENCH_DIR` if set (see `benches/common/mod.rs`).

mod common;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use walq::{FsyncPolicy, Queue};

const PAYLOAD: [u8; 256] = [0xa5; 256];

/// Publishes `messages` messages from `threads` threads (split as evenly as possible) and
/// returns the time from the common start until the last one returned. Spawning the threads
/// is not timed.
fn run(queue: &Queue, threads: usize, messages: u64) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|t| {
                let share = messages / threads as u64 + u64::from(t < messages % threads as u64);
                let queue = queue.clone();
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    for _ in 0..share {
                        queue.publish(&PAYLOAD).expect("publish");
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for handle in handles {
            handle.join().expect("producer");
        }
        start.elapsed()
    })
}

fn concurrent(c: &mut Criterion) {
    let mut group = c.benchmark_group("concurrent_publish_always_256B");
    common::disk_bound(&mut group);
    group.throughput(Throughput::Elements(1));
    for threads in [1, 4, 16, 32] {
        let (store, queue, _dir) = common::store(FsyncPolicy::Always);
        group.bench_with_input(
            BenchmarkId::new("producers", threads),
            &threads,
            |b, &threads| b.iter_custom(|iters| run(&queue, threads, iters)),
        );
        store.close().expect("close");
    }
    group.finish();
}

criterion_group!(benches, concurrent);
criterion_main!(benches);
