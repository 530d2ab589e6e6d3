//! The background thread of a log that does not sync every append (every policy but
//! `FsyncPolicy::Always`): it publishes the pending successor of each roll-over (see
//! `Shared::roll`), and syncs under `FsyncPolicy::Batch` and `FsyncPolicy::Interval`.

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
        // Before the shutdown check, so that a dropped log leaves no pending successor.
        if w.roll_pending() {
            let (guard, published) = shared.publish_pending(w);
            if published.is_err() {
                // The writer is poisoned; appenders see the error themselves.
                return;
            }
            w = guard;
            continue;
        }
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
            FsyncPolicy::Never => None,
            FsyncPolicy::Always => return,
        };
        match due {
            Some(at) if at <= now => {
                last_sync = now;
                if !w.is_dirty() {
                    // Synced meanwhile (by a roll-over's publication, say): nothing is due.
                    w.forget_unsynced();
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
                // Nothing to sync: sleep until an append or a roll-over wakes us (bounded, to
                // be robust).
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
