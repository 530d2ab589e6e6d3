//! The background thread that syncs under `FsyncPolicy::Batch` and `FsyncPolicy::Interval`.

use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Shared;
use crate::error::{Error, Result};
use crate::options::FsyncPolicy;

/// Starts the flusher. It exits when the log is dropped or poisoned.
pub(super) fn spawn(shared: Arc<Shared>) -> Result<JoinHandle<()>> {
    let shared_dir = shared.dir.clone();
    std::thread::Builder::new()
        .name("walq-flusher".into())
        .spawn(move || run(&shared))
        .map_err(|e| Error::io("spawn flusher thread", &shared_dir, e))
}

fn run(shared: &Shared) {
    let mut last_sync = Instant::now();
    let mut w = shared.lock_writer();
    loop {
        if w.shutdown {
            return;
        }
        let now = Instant::now();
        let due: Option<Instant> = match shared.opts.fsync {
            FsyncPolicy::Batch {
                max_messages,
                max_delay,
            } => {
                if w.unsynced_records >= u64::from(max_messages) {
                    Some(now)
                } else {
                    w.first_unsynced_at.map(|t| t + max_delay)
                }
            }
            FsyncPolicy::Interval(every) => Some(last_sync + every),
            FsyncPolicy::Always | FsyncPolicy::Never => return,
        };
        match due {
            Some(at) if at <= now => {
                last_sync = now;
                if !w.is_dirty() {
                    continue;
                }
                let target = w.end();
                drop(w);
                if shared.wait_durable(target).is_err() {
                    // The writer is poisoned; appenders see the error themselves.
                    return;
                }
                w = shared.lock_writer();
            }
            Some(at) => {
                let timeout = at.saturating_duration_since(now);
                w = shared
                    .flusher_wake
                    .wait_timeout(w, timeout)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            None => {
                // Nothing unsynced: sleep until an append wakes us (bounded, to be robust).
                let timeout = Duration::from_secs(1);
                w = shared
                    .flusher_wake
                    .wait_timeout(w, timeout)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }
}
