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
//! # Group sizes
//! [`Parked`] also counts how many distinct threads the last two rounds covered
//! ([`Parked::active`]): the appenders that are publishing right now. A leader may wait for
//! that many to be parked before it syncs (`writer.rs`, the commit delay). Counting two
//! rounds matters: with cohorts that alternate (half the appenders write while the other
//! half's sync runs), one round covers only half of them.
//!
//! # Invariants (all kept under the writer lock)
//! - An entry is in [`Parked`] only while its thread waits, and is removed when it is told.
//! - Whenever the lock is released with entries parked and no `fdatasync` running, one
//!   thread has been called to lead and has not yet taken the lock (`leader_called`); the
//!   called thread leads a round even if a roll-over already made its own records durable.
//!   So no entry waits for a sync that nobody will run.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
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
    /// The last round that covered this thread ([`Parked`]'s round counter). Read and
    /// written only under the writer lock.
    served: AtomicU64,
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
        served: AtomicU64::new(0),
    });
}

/// The parked appenders of one log, with the position each waits for.
#[derive(Debug, Default)]
pub(super) struct Parked {
    entries: Vec<(Position, Arc<Waiter>)>,
    /// A thread has been called to lead the next round and has not taken the lock yet.
    leader_called: bool,
    groups: Groups,
}

/// Counts the threads that sync rounds cover (see "Group sizes" in the module docs).
///
/// An estimate: a thread that appends to two logs carries one `served` stamp for both and
/// may be miscounted, which costs at most one bounded commit delay per round.
#[derive(Debug)]
struct Groups {
    /// Numbers the rounds. Starts at 2, so that a thread never covered (`served` = 0) does
    /// not look covered by the previous round.
    round: u64,
    /// Threads the current round has covered so far.
    covered: usize,
    /// Those of them that the previous round had not covered.
    fresh: usize,
    /// Threads the previous round covered.
    last_covered: usize,
    /// Distinct threads the last two rounds covered.
    active: usize,
}

impl Default for Groups {
    fn default() -> Self {
        Groups {
            round: 2,
            covered: 0,
            fresh: 0,
            last_covered: 0,
            active: 0,
        }
    }
}

impl Groups {
    /// Counts `waiter` as covered by the current round (once).
    fn cover(&mut self, waiter: &Waiter) {
        let served = waiter.served.load(Ordering::Relaxed);
        if served == self.round {
            return;
        }
        if served != self.round.wrapping_sub(1) {
            self.fresh += 1;
        }
        self.covered += 1;
        waiter.served.store(self.round, Ordering::Relaxed);
    }

    fn end_round(&mut self) {
        // The union of the two rounds: all of the previous one plus the fresh ones.
        self.active = self.last_covered + self.fresh;
        self.last_covered = self.covered;
        self.covered = 0;
        self.fresh = 0;
        self.round = self.round.wrapping_add(1);
    }
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

    /// How many threads are parked.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// How many distinct threads the last two rounds covered: about the number of threads
    /// appending now (see the module docs). 0 before the first round.
    pub(super) fn active(&self) -> usize {
        self.groups.active
    }

    /// Ends a sync round, after its [`settle`](Self::settle). `leader_covered`: the round
    /// made the calling thread's (its leader's) own records durable, so the leader counts as
    /// one of the threads it covered.
    pub(super) fn end_round(&mut self, leader_covered: bool) {
        if leader_covered {
            WAITER.with(|waiter| self.groups.cover(waiter));
        }
        self.groups.end_round();
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
        let groups = &mut self.groups;
        self.entries.retain(|(target, waiter)| {
            if *target <= durable {
                waiter.tell(DONE);
                groups.cover(waiter);
            } else if poisoned {
                waiter.tell(RECHECK);
            } else {
                return true;
            }
            wake.push(Arc::clone(waiter));
            false
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

    #[test]
    fn active_counts_the_distinct_threads_of_the_last_two_rounds() {
        let waiters: Vec<Waiter> = (0..3)
            .map(|_| Waiter {
                status: AtomicU8::new(WAITING),
                thread: thread::current(),
                served: AtomicU64::new(0),
            })
            .collect();
        let (a, b, c) = (&waiters[0], &waiters[1], &waiters[2]);
        let mut groups = Groups::default();
        let mut round = |covered: &[&Waiter]| {
            for waiter in covered {
                groups.cover(waiter);
                groups.cover(waiter); // counted once per round
            }
            groups.end_round();
            groups.active
        };
        assert_eq!(round(&[a]), 1, "a lone thread");
        assert_eq!(round(&[a]), 1, "the same thread again");
        // Two cohorts that alternate: each round covers one, the two rounds both.
        assert_eq!(round(&[b]), 2);
        assert_eq!(round(&[a]), 2);
        assert_eq!(round(&[b, c]), 3);
        assert_eq!(round(&[a, b, c]), 3);
        // The others stop: the count falls back within two rounds.
        assert_eq!(round(&[a]), 3);
        assert_eq!(round(&[a]), 1);
        assert_eq!(round(&[]), 1);
        assert_eq!(round(&[]), 0);
    }
}
