//! Publish throughput of 256-byte messages under each fsync policy, and a full
//! publish -> receive -> ack cycle, on a real directory.
//!
//! ```text
//! cargo bench --bench publish               # full run
//! cargo bench --bench publish -- --quick    # a fast estimate
//! cargo bench --bench publish -- never      # only the benchmarks whose name matches
//! ```
//! The store lives in a temporary directory on the default temp file system, or under
//! `WALQ_BENCH_DIR` if set (point it at the disk you care about: `FsyncPolicy::Always`
//! measures that disk's `fdatasync` latency).

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use walq::{FsyncPolicy, Queue, Store, StoreOptions};

const PAYLOAD: [u8; 256] = [0xa5; 256];

/// A fresh store in its own temporary directory (removed when the guard drops).
fn store(policy: FsyncPolicy) -> (Store, Queue, tempfile::TempDir) {
    let dir = match std::env::var_os("WALQ_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(PathBuf::from(base)),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory");
    let store = Store::open(dir.path(), StoreOptions::new().fsync(policy)).expect("open store");
    let queue = store.declare_queue("bench").expect("declare");
    (store, queue, dir)
}

fn policies() -> [(&'static str, FsyncPolicy); 4] {
    [
        ("always", FsyncPolicy::Always),
        (
            "batch_64_2ms",
            FsyncPolicy::Batch {
                max_messages: 64,
                max_delay: Duration::from_millis(2),
            },
        ),
        (
            "interval_10ms",
            FsyncPolicy::Interval(Duration::from_millis(10)),
        ),
        ("never", FsyncPolicy::Never),
    ]
}

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_256B");
    group.throughput(Throughput::Elements(1));
    for (name, policy) in policies() {
        if policy == FsyncPolicy::Always {
            // One fdatasync per publish: keep the disk-bound case short.
            group.sample_size(10);
            group.warm_up_time(Duration::from_millis(500));
            group.measurement_time(Duration::from_secs(3));
        } else {
            group.sample_size(30);
            group.warm_up_time(Duration::from_secs(1));
            group.measurement_time(Duration::from_secs(3));
        }
        let (store, queue, _dir) = store(policy);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| queue.publish(&PAYLOAD).expect("publish"));
        });
        store.close().expect("close");
    }
    group.finish();
}

fn cycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("cycle_256B");
    group.throughput(Throughput::Elements(1));
    group.sample_size(30);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let (store, queue, _dir) = store(FsyncPolicy::Never);
    group.bench_function("publish_receive_ack/never", |b| {
        b.iter(|| {
            let id = queue.publish(&PAYLOAD).expect("publish");
            let delivery = queue.try_receive().expect("receive").expect("ready");
            assert_eq!(delivery.id, id);
            queue.ack(delivery.id).expect("ack");
        });
    });
    store.close().expect("close");
    group.finish();
}

criterion_group!(benches, publish, cycle);
criterion_main!(benches);
