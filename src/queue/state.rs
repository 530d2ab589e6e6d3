//! The state of one queue: its settings, which messages are waiting and in what order, its
//! timers and its counters.

use std::collections::{BTreeSet, VecDeque};

use super::id_set::IdSet;
use std::sync::{Arc, Condvar};

use crate::format::{QueueSettings, NO_QUEUE};
use crate::ids::{MessageId, QueueId};

/// One queue. Lives inside the store's state mutex.
#[derive(Debug)]
pub(crate) struct QueueState {
    pub(crate) name: Arc<str>,
    pub(crate) settings: QueueSettings,
    /// Never-delivered ready messages, delivered in id (= publish) order.
    pub(crate) ready: IdSet,
    /// Ready messages that were delivered before (requeued, lease expired, or out with a
    /// consumer at a crash); served first, oldest id first.
    pub(crate) requeued: IdSet,
    /// Messages waiting for their delay, by due time.
    pub(crate) delayed: BTreeSet<(u64, MessageId)>,
    /// Messages with an expiry, by expiry time (waiting or out with a consumer).
    pub(crate) expiry: BTreeSet<(u64, MessageId)>,
    /// Deliveries with a lease, by deadline.
    pub(crate) leases: BTreeSet<(u64, MessageId)>,
    /// Ready (not delayed) messages.
    pub(crate) ready_count: u64,
    /// Payload bytes of waiting (ready or delayed) messages.
    pub(crate) waiting_bytes: u64,
    /// Messages written by a publish that has not returned yet (they count toward the
    /// limits so that concurrent publishers cannot overshoot them).
    pub(crate) pending: u64,
    /// Their payload bytes.
    pub(crate) pending_bytes: u64,
    /// Blocked receivers in arrival order (fair dispatch): only the first may take a message.
    pub(crate) tickets: VecDeque<u64>,
    /// Woken when a message becomes ready, a lease or delay may fire, or the store closes.
    /// Only through [`QueueState::wake_receivers`].
    pub(crate) available: Arc<Condvar>,
    /// How many receivers are blocked on `available` right now. Changed only under the
    /// store's state mutex, which every waiter holds from checking its condition until
    /// `wait` releases it, and every waker holds while it decides to wake: so a wake that
    /// finds no waiter can be skipped without losing a wake-up.
    pub(crate) waiters: u32,
    pub(crate) counters: Counters,
}

/// What happened in a queue, counted since the records still in the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) unacked: u64,
    pub(crate) published: u64,
    pub(crate) acked: u64,
    pub(crate) rejected: u64,
    pub(crate) expired: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) dropped: u64,
}

impl QueueState {
    pub(crate) fn new(name: Arc<str>, settings: QueueSettings) -> Self {
        QueueState {
            name,
            settings,
            ready: IdSet::default(),
            requeued: IdSet::default(),
            delayed: BTreeSet::new(),
            expiry: BTreeSet::new(),
            leases: BTreeSet::new(),
            ready_count: 0,
            waiting_bytes: 0,
            pending: 0,
            pending_bytes: 0,
            tickets: VecDeque::new(),
            available: Arc::new(Condvar::new()),
            waiters: 0,
            counters: Counters::default(),
        }
    }

    /// The dead-letter queue, if any.
    pub(crate) fn dead_letter_queue(&self) -> Option<QueueId> {
        (self.settings.dead_letter_queue != NO_QUEUE)
            .then_some(QueueId(self.settings.dead_letter_queue))
    }

    /// Adds a never-delivered message. Concurrent publishers confirm out of order now and
    /// then; the set keeps live delivery order equal to log order (and so to the order
    /// after a reopen). Cost: O(log n).
    pub(crate) fn insert_ready(&mut self, id: MessageId) {
        self.ready.insert(id);
    }

    /// Wakes every receiver blocked on this queue, if there is one. `notify_all` is a
    /// system call even when nobody waits; this skips it then. Call with the state mutex
    /// held (it is: `self` lives inside it).
    pub(crate) fn wake_receivers(&self) {
        if self.waiters > 0 {
            self.available.notify_all();
        }
    }

    /// Messages waiting: ready or delayed.
    pub(crate) fn waiting(&self) -> u64 {
        self.ready_count + self.delayed.len() as u64
    }

    /// The earliest time a timer of this queue fires, if any.
    pub(crate) fn next_timer(&self) -> Option<u64> {
        [
            self.delayed.first(),
            self.expiry.first(),
            self.leases.first(),
        ]
        .into_iter()
        .flatten()
        .map(|&(at, _)| at)
        .min()
    }
}
