//! The state of one queue: which messages are ready, in what order, and its counters.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Condvar};

use crate::ids::MessageId;

/// One queue. Lives inside the store's state mutex.
#[derive(Debug)]
pub(crate) struct QueueState {
    pub(crate) name: Arc<str>,
    /// Never-delivered ready messages, in publish order.
    pub(crate) ready: VecDeque<MessageId>,
    /// Ready messages that were delivered before (requeued, or out with a consumer at a
    /// crash); served first, oldest id first.
    pub(crate) requeued: BTreeSet<MessageId>,
    /// Woken when a message becomes ready or the store closes.
    pub(crate) available: Arc<Condvar>,
    pub(crate) unacked: u64,
    pub(crate) published: u64,
    pub(crate) acked: u64,
    pub(crate) rejected: u64,
}

impl QueueState {
    pub(crate) fn new(name: Arc<str>) -> Self {
        QueueState {
            name,
            ready: VecDeque::new(),
            requeued: BTreeSet::new(),
            available: Arc::new(Condvar::new()),
            unacked: 0,
            published: 0,
            acked: 0,
            rejected: 0,
        }
    }

    /// The next message to deliver: requeued ones first, then publish order.
    pub(crate) fn pop_next(&mut self) -> Option<MessageId> {
        self.requeued.pop_first().or_else(|| self.ready.pop_front())
    }

    /// Adds a newly published message in id order. Concurrent publishers confirm out of
    /// order now and then; inserting by id keeps live delivery order equal to log order
    /// (and so to the order after a reopen). Cost: O(1) when ids arrive in order, else the
    /// number of later ids already queued.
    pub(crate) fn insert_ready(&mut self, id: MessageId) {
        let at = self
            .ready
            .iter()
            .rposition(|&other| other < id)
            .map_or(0, |i| i + 1);
        self.ready.insert(at, id);
    }

    /// Puts a message back at the front of the delivery order it belongs to.
    pub(crate) fn push_back_undelivered(&mut self, id: MessageId, delivered_before: bool) {
        if delivered_before {
            self.requeued.insert(id);
        } else {
            self.ready.push_front(id);
        }
    }

    pub(crate) fn ready_len(&self) -> u64 {
        (self.ready.len() + self.requeued.len()) as u64
    }
}
