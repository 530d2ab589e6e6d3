//! What the benchmarks share: where stores live, and the fsync policies measured.
//!
//! Every store lives in its own temporary directory (removed when its guard drops) under
//! `WALQ_BENCH_DIR` if set, else under the system's temporary directory. Point
//! `WALQ_BENCH_DIR` at the disk you care about: `FsyncPolicy::Always` measures that disk's
//! `fdatasync` latency.

#![allow(dead_code)] // Each benchmark uses part of this module.

use std::path::PathBuf;
use std::time::Duration;

use criterion::BenchmarkGroup;
use walq::{FsyncPolicy, Queue, Store, StoreOptions};

/// A fresh temporary directory under `WALQ_BENCH_DIR` or the system's temporary directory.
pub fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("WALQ_BENCH_DIR") {
        Some(base) => {
            let base = PathBuf::from(base);
            std::fs::create_dir_all(&base).expect("create WALQ_BENCH_DIR");
            tempfile::tempdir_in(base)
        }
        None => tempfile::tempdir(),
    }
    .expect("temporary directory")
}

/// A fresh store with one queue, `bench`, in its own temporary directory.
pub fn store(policy: FsyncPolicy) -> (Store, Queue, tempfile::TempDir) {
    let dir = bench_dir();
    let store = Store::open(dir.path(), StoreOptions::new().fsync(policy)).expect("open store");
    let queue = store.declare_queue("bench").expect("declare");
    (store, queue, dir)
}

/// The four fsync policies, with the names the benchmark ids use.
pub fn policies() -> [(&'static str, FsyncPolicy); 4] {
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

/// Few, short samples for benchmarks that wait for the disk (an `fdatasync` per iteration,
/// or big files): they are slow per iteration and their noise is the disk's.
pub fn disk_bound<M: criterion::measurement::Measurement>(group: &mut BenchmarkGroup<'_, M>) {
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(2));
}

/// Settings for benchmarks that mostly run in memory and the page cache.
pub fn cpu_bound<M: criterion::measurement::Measurement>(group: &mut BenchmarkGroup<'_, M>) {
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
}

/// A payload size as a benchmark parameter: `64B`, `1KiB`, `64KiB`.
pub fn size_name(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{}KiB", bytes / 1024)
    } else {
        format!("{bytes}B")
    }
}
