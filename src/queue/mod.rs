//! Queue semantics over the log: per-message state, per-queue delivery order, and the
//! replay that rebuilds them from the log on open.
//!
//! # What is kept in memory per message
//! - one 24-byte [`table`] slot (position of its publish record, queue, state) from the
//!   oldest unsettled message to the newest one, so a long-unacked message also keeps the
//!   slots of the settled messages after it until it settles;
//! - 8 bytes (its id) in its queue's ready deque while ready;
//! - an entry in the delivery-count map while it has been delivered and is not settled.
//!
//! Payloads are never kept: a delivery reads its payload back from the segment.

mod replay;
mod state;
mod table;

use std::collections::HashMap;
use std::sync::Arc;

pub(crate) use replay::Replayer;
pub(crate) use state::QueueState;
pub(crate) use table::{Lookup, MessageTable, MsgState};

use crate::ids::{MessageId, QueueId};

/// All queue state of a store; guarded by the store's state mutex.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) queues: Vec<QueueState>,
    pub(crate) by_name: HashMap<Arc<str>, QueueId>,
    pub(crate) table: MessageTable,
    /// Delivery counts of unsettled messages that were delivered at least once.
    pub(crate) deliveries: HashMap<MessageId, u32>,
    pub(crate) acked_total: u64,
    pub(crate) rejected_total: u64,
    pub(crate) closed: bool,
}

impl State {
    pub(crate) fn queue_mut(&mut self, id: QueueId) -> Option<&mut QueueState> {
        self.queues.get_mut(id.0 as usize)
    }

    pub(crate) fn queue(&self, id: QueueId) -> Option<&QueueState> {
        self.queues.get(id.0 as usize)
    }
}
