//! Shared by the delivery-semantics tests: stores on a hand-driven clock, in memory or on a
//! simulated disk, and small helpers for durations and draining a queue.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use walq::io::{MemVfs, Vfs};
use walq::{FsyncPolicy, ManualClock, MessageId, Queue, Store, StoreOptions};

/// The clock's start: a realistic time in milliseconds since the Unix epoch.
pub const T0: u64 = 1_700_000_000_000;

/// The store directory inside the simulated file system.
pub fn dir() -> &'static Path {
    Path::new("/store")
}

/// Fsync always, 64 KiB segments, timers driven by `clock`.
pub fn options(clock: &ManualClock) -> StoreOptions {
    StoreOptions::new()
        .fsync(FsyncPolicy::Always)
        .segment_size(64 << 10)
        .clock(Arc::new(clock.clone()))
}

/// A new store in memory on `clock`.
pub fn mem_store(clock: &ManualClock) -> Store {
    Store::open_with_vfs(Arc::new(MemVfs::new()), dir(), options(clock)).unwrap()
}

/// Opens (or reopens) the store on `vfs` (a `MemVfs` or a `SimVfs`) on `clock`.
pub fn open<V: Vfs + Clone + 'static>(vfs: &V, clock: &ManualClock) -> Store {
    let vfs: Arc<dyn Vfs> = Arc::new(vfs.clone());
    Store::open_with_vfs(vfs, dir(), options(clock)).unwrap()
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Receives every ready message of `queue`: ids in order.
pub fn drain(queue: &Queue) -> Vec<MessageId> {
    let mut ids = Vec::new();
    while let Some(d) = queue.try_receive().unwrap() {
        ids.push(d.id);
    }
    ids
}

/// A new store in memory on a new clock at `ms`.
pub fn store_at(ms: u64) -> (Store, ManualClock) {
    let clock = ManualClock::new(ms);
    (open(&MemVfs::new(), &clock), clock)
}
