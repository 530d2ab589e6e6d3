//! Publish throughput under each fsync policy at 64 B, 1 KiB and 64 KiB, and batch publish
//! (1000 messages of 1 KiB per call) under each policy, on a real directory.
//!
//! ```text
//! cargo bench --bench publish               # full run
//! cargo bench --bench publish -- --quick    # a fast estimate
//! cargo bench --bench publish -- never      # only the benchmarks whose name matches
//! ```
//! The stores live in temporary directories on the default temp file system, or under
//! `WALQ_BENCH_DIR` if set (point it at the disk you care about: `FsyncPolicy::Always`
//! measures that disk's `fdatasync` latency). Throughput is reported in payload bytes.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use walq::FsyncPolicy;

const SIZES: [usize; 3] = [64, 1024, 64 * 1024];

fn publish(c: &mut Criterion) {
    for (name, policy) in common::policies() {
        let mut group = c.benchmark_group(format!("publish_{name}"));
        if policy == FsyncPolicy::Always {
            // One fdatasync per publish.
            common::disk_bound(&mut group);
        } else {
            common::cpu_bound(&mut group);
        }
        for size in SIZES {
            let payload = vec![0xa5_u8; size];
            group.throughput(Throughput::Bytes(size as u64));
            // A fresh store per size, so that one size's log does not slow the next.
            let (store, queue, _dir) = common::store(policy);
            group.bench_with_input(
                BenchmarkId::from_parameter(common::size_name(size)),
                &payload,
                |b, payload| b.iter(|| queue.publish(payload).expect("publish")),
            );
            store.close().expect("close");
        }
        group.finish();
    }
}

fn publish_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_batch_1000x1KiB");
    // A 1 MiB group per call: disk-bound under every policy once the page cache fills.
    common::disk_bound(&mut group);
    group.throughput(Throughput::Bytes(1000 * 1024));
    let batch: Vec<Vec<u8>> = (0..1000).map(|i| vec![i as u8; 1024]).collect();
    for (name, policy) in common::policies() {
        let (store, queue, _dir) = common::store(policy);
        group.bench_with_input(BenchmarkId::from_parameter(name), &batch, |b, batch| {
            b.iter(|| queue.publish_batch(batch).expect("publish batch"));
        });
        store.close().expect("close");
    }
    group.finish();
}

criterion_group!(benches, publish, publish_batch);
criterion_main!(benches);
