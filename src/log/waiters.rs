//! Appenders waiting for durability, parked off the writer lock.
//!
//! A group commit ends with many threads waiting for the same `fdatasync`. Woken through a
//! `Condvar`, each would first have to take the writer lock back, only to learn that its
//! records are durable: N threads queue on one mutex, and on a small machine every step of
//! that queue is a context switch. Parked here instead, each thread is told its outcome in
//! its own [`Waiter`] and wakes straight into it:
//!
//! - [`DONE`]: its records are durable; it returns without touching the lock;
//! - [`RECHECK`]: it must take the lock and look again, because the log was poisoned, or
//!   because no `fdatasync` is running and it was *called to lead* the next one.
//!
//! # Invariants (all kept under the writer lock)
//! - An entry is in [`Parked`] only while its thread waits, and is removed when it is told.
//! - Whenever the lock is released with entries parked and no `fdatasync` running, one
//!   thread has been called to lead and has not yet taken the lock (`leader_called`); the
//!   called thread leads a round even if a roll-over already made its own records durable.
//!   So no entry waits for a sync that nobody will run.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::{self, Thread};

use crate::ids::Position;

/// The waiter has not been told anything yet.
const WAITING: u8 = 0;
/// The waiter's target is durable.
pub(super) const DONE: u8 = 1;
/// The waiter must take the writer lock and look again.
pub(super) const RECHECK: u8 = 2;

/// One thread's mailbox. Each thread reuses its own, so parking allocates nothing.
#[derive(Debug)]
pub(super) struct Waiter {
    status: AtomicU8,
    thread: Thread,
}

impl Waiter {
    /// Blocks until told, and returns what: [`DONE`] or [`RECHECK`].
    ///
    /// `thread::park` may return spuriously (or for an `unpark` meant for an earlier wait of
    /// this thread), so it loops on the status, which only the writer-lock holder sets.
    pub(super) fn wait(&self) -> u8 {
        loop {
            match self.status.load(Ordering::Acquire) {
                WAITING => thread::park(),
                told => return told,
            }
        }
    }

    fn tell(&self, status: u8) {
        self.status.store(status, Ordering::Release);
    }

    /// Wakes the thread. Call after releasing the writer lock where possible: the woken thread
    /// must not find the lock still held by its waker.
    pub(super) fn unpark(&self) {
        self.thread.unpark();
    }
}

thread_local! {
    static WAITER: Arc<Waiter> = Arc::new(Waiter {
        status: AtomicU8::new(WAITING),
        thread: thread::current(),
    });
}

/// The parked appenders of one log, with the position each waits for.
#[derive(Debug, Default)]
pub(super) struct Parked {
    entries: Vec<(Position, Arc<Waiter>)>,
    /// A thread has been called to lead the next round and has not taken the lock yet.
    leader_called: bool,
}

impl Parked {
    /// Parks the calling thread until `target` is durable; returns its waiter, to
    /// [`Waiter::wait`] on once the writer lock is released.
    pub(super) fn register(&mut self, target: Position) -> Arc<Waiter> {
        let waiter = WAITER.with(Arc::clone);
        waiter.tell(WAITING);
        self.entries.push((target, Arc::clone(&waiter)));
        waiter
    }

    /// The call to lead is answered: the called thread has taken the lock, or a round has
    /// started. Until then nobody else is called.
    pub(super) fn call_answered(&mut self) {
        self.leader_called = false;
    }

    /// Whether anyone waits for a sync while none runs (so a thread called to lead must).
    pub(super) fn need_leader(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Tells every entry what the writer state now means for it, moving the told ones to
    /// `wake`: [`DONE`] if `durable` covers its target; otherwise [`RECHECK`] for all of them
    /// if the log is `poisoned`, or for the first one, to lead, if no sync is `running` and
    /// nobody has been called yet.
    pub(super) fn settle(
        &mut self,
        durable: Position,
        poisoned: bool,
        running: bool,
        wake: &mut Vec<Arc<Waiter>>,
    ) {
        self.entries.retain(|(target, waiter)| {
            if *target <= durable || poisoned {
                waiter.tell(if *target <= durable { DONE } else { RECHECK });
                wake.push(Arc::clone(waiter));
                false
            } else {
                true
            }
        });
        if !poisoned && !running && !self.leader_called && !self.entries.is_empty() {
            let (_, waiter) = self.entries.remove(0);
            waiter.tell(RECHECK);
            wake.push(waiter);
            self.leader_called = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SegmentId;

    fn pos(offset: u64) -> Position {
        Position {
            segment: SegmentId(1),
            offset,
        }
    }

    /// Parks `n` threads at targets 100, 200, ... and returns what each was told.
    fn scenario(n: u64, steps: impl FnOnce(&std::sync::Mutex<Parked>)) -> Vec<u8> {
        let parked = std::sync::Mutex::new(Parked::default());
        let (tx, rx) = std::sync::mpsc::channel();
        thread::scope(|s| {
            let handles: Vec<_> = (1..=n)
                .map(|i| {
                    let parked = &parked;
                    let tx = tx.clone();
                    s.spawn(move || {
                        let waiter = parked.lock().unwrap().register(pos(i * 100));
                        tx.send(()).unwrap();
                        waiter.wait()
                    })
                })
                .collect();
            for _ in 0..n {
                rx.recv().unwrap();
            }
            steps(&parked);
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn settle(parked: &std::sync::Mutex<Parked>, durable: u64, poisoned: bool, running: bool) {
        let mut wake = Vec::new();
        parked
            .lock()
            .unwrap()
            .settle(pos(durable), poisoned, running, &mut wake);
        for waiter in wake {
            waiter.unpark();
        }
    }

    #[test]
    fn a_round_tells_those_it_covers_and_calls_one_leader_for_the_rest() {
        let told = scenario(4, |parked| {
            // Covers the first two; a sync still runs, so nobody is called.
            settle(parked, 250, false, true);
            assert_eq!(parked.lock().unwrap().entries.len(), 2);
            // The round ended: one of the two left is called to lead, only one.
            settle(parked, 250, false, false);
            settle(parked, 250, false, false);
            assert_eq!(parked.lock().unwrap().entries.len(), 1);
            // The called thread starts a round, which covers everyone.
            parked.lock().unwrap().call_answered();
            settle(parked, 400, false, false);
            assert!(!parked.lock().unwrap().need_leader());
        });
        let mut told = told;
        told.sort_unstable();
        assert_eq!(told, [DONE, DONE, DONE, RECHECK]);
    }

    #[test]
    fn poison_tells_everyone_not_covered_to_look_again() {
        let told = scenario(3, |parked| settle(parked, 150, true, false));
        assert_eq!(told, [DONE, RECHECK, RECHECK]);
    }
}
