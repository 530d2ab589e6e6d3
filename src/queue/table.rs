//! The message table: where each live message is and what state it is in.
//!
//! Message ids are dense, so the table is a deque indexed by `id - base`. Settled messages
//! at the front are popped as soon as they are settled, so the table spans from the oldest
//! unsettled message to the newest one.

use std::collections::VecDeque;

use crate::ids::{MessageId, Position, QueueId, SegmentId};

/// The life-cycle state of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MsgState {
    /// Written, waiting for its publish to be confirmed; not deliverable yet.
    Pending,
    /// Waiting in its queue.
    Ready,
    /// Delivered, not yet acked or nacked.
    InFlight,
    /// An ack or nack record for it is being written.
    Settling,
    /// Acknowledged.
    Acked,
    /// Rejected without requeue.
    Dropped,
}

impl MsgState {
    pub(crate) fn is_settled(self) -> bool {
        matches!(self, MsgState::Acked | MsgState::Dropped)
    }
}

/// Per-message entry: 24 bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub(crate) segment: u64,
    pub(crate) offset: u32,
    /// The queue it is in now (dead-lettering and redrive move it).
    pub(crate) queue: QueueId,
    /// Payload length, for `max_bytes`.
    pub(crate) len: u32,
    pub(crate) state: MsgState,
}

const _: () = assert!(std::mem::size_of::<Slot>() <= 24);

impl Slot {
    pub(crate) fn position(&self) -> Position {
        Position {
            segment: SegmentId(self.segment),
            offset: u64::from(self.offset),
        }
    }
}

/// How an id relates to the table.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    /// Below the table: settled long ago.
    Settled,
    /// Never assigned.
    Unknown,
    /// Live (or settled but not yet popped).
    Live(&'a mut Slot),
}

#[derive(Debug, Default)]
pub(crate) struct MessageTable {
    base: u64,
    slots: VecDeque<Slot>,
}

impl MessageTable {
    /// The id the next pushed message must have.
    pub(crate) fn next_id(&self) -> u64 {
        self.base + self.slots.len() as u64
    }

    /// An empty table whose first message will be `first`.
    pub(crate) fn starting_at(first: u64) -> Self {
        MessageTable {
            base: first,
            slots: VecDeque::new(),
        }
    }

    /// Appends the entry of message `next_id()`.
    pub(crate) fn push(&mut self, pos: Position, queue: QueueId, len: usize, state: MsgState) {
        // Offsets and payloads are below the 1 GiB segment limit.
        let offset = u32::try_from(pos.offset).unwrap_or(u32::MAX);
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        self.slots.push_back(Slot {
            segment: pos.segment.0,
            offset,
            queue,
            len,
            state,
        });
    }

    /// The slot of `id`, if live.
    pub(crate) fn get(&self, id: MessageId) -> Option<&Slot> {
        let index = id.0.checked_sub(self.base)?;
        self.slots.get(usize::try_from(index).ok()?)
    }

    pub(crate) fn lookup(&mut self, id: MessageId) -> Lookup<'_> {
        if id.0 < self.base {
            return Lookup::Settled;
        }
        match self.slots.get_mut((id.0 - self.base) as usize) {
            Some(slot) => Lookup::Live(slot),
            None => Lookup::Unknown,
        }
    }

    pub(crate) fn get_mut(&mut self, id: MessageId) -> Option<&mut Slot> {
        match self.lookup(id) {
            Lookup::Live(slot) => Some(slot),
            Lookup::Settled | Lookup::Unknown => None,
        }
    }

    /// Drops settled entries from the front.
    pub(crate) fn prune(&mut self) {
        while self.slots.front().is_some_and(|s| s.state.is_settled()) {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    /// Live entries with their ids, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (MessageId, &Slot)> {
        let base = self.base;
        self.slots
            .iter()
            .enumerate()
            .map(move |(i, s)| (MessageId(base + i as u64), s))
    }

    /// Number of entries held (settled ones not yet pruned included).
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}
