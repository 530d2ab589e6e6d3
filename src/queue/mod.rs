//! Queue semantics over the log: per-message state, per-queue delivery order, timers (delays,
//! TTLs, leases), dead-lettering, consumers, and the replay that rebuilds it all on open.
//!
//! Everything here is pure state manipulation under the store's state mutex; the functions
//! that change what the log must say return the records to write ([`OwnedRecord`]) and the
//! store writes them.
//!
//! # What is kept in memory per message
//! - its [`table`] entry: about 7 bytes per id while most ids of its 1,024-id chunk are
//!   unsettled (offset, payload length, state, and an index into the chunk's palette of
//!   segments and queues), at most 32 bytes per unsettled message once a chunk is mostly
//!   settled, nothing for a chunk that is all settled. A payload of 64 KiB or more, or a
//!   chunk naming more than 16 (segment, queue) pairs, adds about 40 bytes for that message;
//! - while ready, one bit in its queue's ready or requeued [`id_set`] (about 0.3 bytes per
//!   message when ids are consecutive);
//! - while delivered or delivered before: an entry in the delivery-count map; while out
//!   with a consumer: an in-flight entry (and a lease entry with an ack timeout);
//! - only if it has one: an expiry entry, a delay entry, a dead-letter origin entry.
//!
//! Payloads are never kept: a delivery reads its payload back from the segment.

mod id_set;
mod replay;
mod snapshot;
mod state;
mod table;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

pub(crate) use replay::Replayer;
pub(crate) use snapshot::{Frozen, Snapshot};
pub(crate) use state::QueueState;
pub(crate) use table::{Lookup, MessageTable, MsgState};

use crate::format::{Disposition, MoveBody, MoveReason, RecordKind, RollbackBody};
use crate::ids::{IdMap, MessageId, QueueId};

/// A record the store must write for a state change made here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnedRecord {
    pub(crate) kind: RecordKind,
    pub(crate) body: Vec<u8>,
}

/// A delivery out with a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InFlight {
    /// The consumer holding it (0 for deliveries made through a `Queue` handle).
    pub(crate) consumer: u64,
    /// When its lease runs out, if it has one.
    pub(crate) lease: Option<u64>,
}

/// A consumer registered with the store.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerState {
    pub(crate) queue: QueueId,
    /// 0 for unlimited.
    pub(crate) prefetch: u32,
    pub(crate) outstanding: BTreeSet<MessageId>,
}

/// Where a dead-lettered message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) queue: QueueId,
    pub(crate) reason: MoveReason,
}

/// All queue state of a store; guarded by the store's state mutex.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) queues: Vec<QueueState>,
    pub(crate) by_name: HashMap<Arc<str>, QueueId>,
    pub(crate) table: MessageTable,
    /// Delivery counts of unsettled messages that were delivered at least once.
    pub(crate) deliveries: IdMap<MessageId, u32>,
    pub(crate) inflight: IdMap<MessageId, InFlight>,
    pub(crate) consumers: HashMap<u64, ConsumerState>,
    pub(crate) next_consumer: u64,
    pub(crate) next_ticket: u64,
    /// Dead-lettered messages: the queue they came from, and why.
    pub(crate) origins: IdMap<MessageId, Origin>,
    /// Delayed messages: when they become ready.
    pub(crate) delays: IdMap<MessageId, u64>,
    /// Messages with an expiry (while in the queue they were published to).
    pub(crate) expiries: IdMap<MessageId, u64>,
    pub(crate) acked_total: u64,
    pub(crate) rejected_total: u64,
    pub(crate) closed: bool,
    /// Two lists of queues the store's `after_change` reuses from call to call (empty
    /// between calls), so that the common operations allocate none.
    pub(crate) after_change_scratch: (Vec<QueueId>, Vec<QueueId>),
}

/// What became of a message whose time ran out or that was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Moved to this dead-letter queue.
    DeadLettered(QueueId),
    /// Discarded (no dead-letter queue).
    Dropped,
}

impl State {
    pub(crate) fn queue_mut(&mut self, id: QueueId) -> Option<&mut QueueState> {
        self.queues.get_mut(id.0 as usize)
    }

    pub(crate) fn queue(&self, id: QueueId) -> Option<&QueueState> {
        self.queues.get(id.0 as usize)
    }

    fn slot_len(&self, id: MessageId) -> u64 {
        self.table.get(id).map_or(0, |s| u64::from(s.len))
    }

    /// Whether `id` is a ready (or delayed) message of queue `q`.
    fn is_waiting_in(&self, id: MessageId, q: QueueId) -> bool {
        self.table
            .get(id)
            .is_some_and(|s| s.state == MsgState::Ready && s.queue == q)
    }

    /// Makes a `Ready` message wait in `q`: delayed until `not_before` if that is later than
    /// `now`, else ready (requeued order if it was delivered before).
    pub(crate) fn enqueue(&mut self, id: MessageId, q: QueueId, now: u64, not_before: u64) {
        let len = self.slot_len(id);
        self.enqueue_sized(id, q, len, now, not_before);
    }

    /// [`enqueue`](Self::enqueue) for a caller that has the message's payload length at hand.
    pub(crate) fn enqueue_sized(
        &mut self,
        id: MessageId,
        q: QueueId,
        len: u64,
        now: u64,
        not_before: u64,
    ) {
        let delivered_before = self.deliveries.contains_key(&id);
        let expiry = self.expiries.get(&id).copied();
        let Some(queue) = self.queues.get_mut(q.0 as usize) else {
            return;
        };
        if let Some(at) = expiry {
            // Taken out of the index while the message was out with a consumer.
            queue.expiry.insert((at, id));
        }
        queue.waiting_bytes += len;
        if not_before > now {
            self.delays.insert(id, not_before);
            queue.delayed.insert((not_before, id));
        } else {
            if delivered_before {
                queue.requeued.insert(id);
            } else {
                queue.insert_ready(id);
            }
            queue.ready_count += 1;
        }
    }

    /// Takes the next message to deliver from `q`: requeued ones first (oldest id first),
    /// then never-delivered ones in publish order. Skips stale entries.
    pub(crate) fn pop_ready(&mut self, q: QueueId) -> Option<MessageId> {
        loop {
            let queue = self.queues.get_mut(q.0 as usize)?;
            let id = queue
                .requeued
                .pop_first()
                .or_else(|| queue.ready.pop_first())?;
            if self.is_waiting_in(id, q) && !self.delays.contains_key(&id) {
                let len = self.slot_len(id);
                let queue = self.queues.get_mut(q.0 as usize)?;
                queue.ready_count -= 1;
                queue.waiting_bytes -= len;
                return Some(id);
            }
        }
    }

    /// Removes a waiting message from its queue's waiting structures.
    fn unwait(&mut self, id: MessageId, q: QueueId) {
        let len = self.slot_len(id);
        let delay = self.delays.remove(&id);
        let Some(queue) = self.queues.get_mut(q.0 as usize) else {
            return;
        };
        queue.waiting_bytes -= len;
        match delay {
            Some(at) => {
                queue.delayed.remove(&(at, id));
            }
            None => {
                queue.requeued.remove(id);
                queue.ready.remove(id);
                queue.ready_count -= 1;
            }
        }
    }

    /// Forgets a delivery: its in-flight entry, lease and consumer bookkeeping.
    pub(crate) fn end_delivery(&mut self, id: MessageId, q: QueueId) -> Option<InFlight> {
        let flight = self.inflight.remove(&id)?;
        if let Some(queue) = self.queues.get_mut(q.0 as usize) {
            queue.counters.unacked -= 1;
            if let Some(at) = flight.lease {
                queue.leases.remove(&(at, id));
            }
        }
        if let Some(consumer) = self.consumers.get_mut(&flight.consumer) {
            consumer.outstanding.remove(&id);
        }
        Some(flight)
    }

    /// Forgets a message's expiry entry (it settles or leaves its queue).
    fn drop_expiry(&mut self, id: MessageId, q: QueueId) {
        if let Some(at) = self.expiries.remove(&id) {
            if let Some(queue) = self.queues.get_mut(q.0 as usize) {
                queue.expiry.remove(&(at, id));
            }
        }
    }

    /// Where a message refused by `q` goes.
    pub(crate) fn fate_in(&self, q: QueueId) -> Fate {
        match self.queue(q).and_then(QueueState::dead_letter_queue) {
            Some(dlq) => Fate::DeadLettered(dlq),
            None => Fate::Dropped,
        }
    }

    /// The record that says a message of `q` met `fate` for `reason`.
    pub(crate) fn fate_record(&self, id: MessageId, fate: Fate, reason: MoveReason) -> OwnedRecord {
        match fate {
            Fate::DeadLettered(to) => OwnedRecord {
                kind: RecordKind::Move,
                body: MoveBody {
                    id: id.0,
                    to_queue: to.0,
                    reason,
                }
                .encode()
                .to_vec(),
            },
            Fate::Dropped => OwnedRecord {
                kind: RecordKind::Rollback,
                body: RollbackBody {
                    id: id.0,
                    delivery_count: self.deliveries.get(&id).copied().unwrap_or(0),
                    disposition: Disposition::Drop,
                    reason: Some(reason),
                    not_before_ms: 0,
                }
                .encode()
                .to_vec(),
            },
        }
    }

    /// Applies `fate` to a message of `from` that is neither waiting nor in flight any more:
    /// moves it to the dead-letter queue (as a fresh, never-delivered message there) or
    /// drops it. Returns the queue to wake, if any.
    pub(crate) fn apply_fate(
        &mut self,
        id: MessageId,
        from: QueueId,
        fate: Fate,
        reason: MoveReason,
        now: u64,
    ) -> Option<QueueId> {
        self.drop_expiry(id, from);
        self.deliveries.remove(&id);
        if let Some(queue) = self.queues.get_mut(from.0 as usize) {
            let c = &mut queue.counters;
            match reason {
                MoveReason::Rejected => c.rejected += 1,
                MoveReason::Expired => c.expired += 1,
                MoveReason::DeliveryLimit | MoveReason::Overflow | MoveReason::Redrive => {}
            }
            match fate {
                Fate::DeadLettered(_) => c.dead_lettered += 1,
                Fate::Dropped => c.dropped += 1,
            }
        }
        if reason == MoveReason::Rejected {
            self.rejected_total += 1;
        }
        match fate {
            Fate::DeadLettered(to) => {
                self.table.update(id, |s| {
                    s.queue = to;
                    s.state = MsgState::Ready;
                });
                self.origins.insert(
                    id,
                    Origin {
                        queue: from,
                        reason,
                    },
                );
                self.enqueue(id, to, now, 0);
                Some(to)
            }
            Fate::Dropped => {
                self.table.update(id, |s| s.state = MsgState::Dropped);
                self.origins.remove(&id);
                self.table.prune();
                None
            }
        }
    }

    /// Fires the due timers of `q` at `now`: delayed messages become ready, expired waiting
    /// messages are dead-lettered or dropped, and expired leases return their deliveries to
    /// the queue (or dead-letter them once `max_deliveries` is reached). Returns the records
    /// to write and whether any queue gained ready messages (so receivers should wake).
    pub(crate) fn run_timers(&mut self, q: QueueId, now: u64) -> (Vec<OwnedRecord>, Vec<QueueId>) {
        let mut records = Vec::new();
        let mut woken = Vec::new();
        let Some(queue) = self.queue(q) else {
            return (records, woken);
        };
        if queue.next_timer().is_none_or(|at| at > now) {
            return (records, woken);
        }
        // Delays.
        while let Some(&(at, id)) = self.queue(q).and_then(|queue| queue.delayed.first()) {
            if at > now {
                break;
            }
            if let Some(queue) = self.queue_mut(q) {
                queue.delayed.pop_first();
            }
            self.delays.remove(&id);
            let len = self.slot_len(id);
            if let Some(queue) = self.queue_mut(q) {
                queue.waiting_bytes -= len;
            }
            if self.is_waiting_in(id, q) {
                self.enqueue(id, q, now, 0);
                woken.push(q);
            }
        }
        // Leases, before expiries: a delivery that comes back already expired must expire,
        // not be delivered again.
        while let Some(&(at, id)) = self.queue(q).and_then(|queue| queue.leases.first()) {
            if at > now {
                break;
            }
            if let Some(queue) = self.queue_mut(q) {
                queue.leases.pop_first();
            }
            // A delivery being acked or nacked right now keeps its lease: the settle decides.
            let current = self.inflight.get(&id).is_some_and(|f| f.lease == Some(at))
                && self
                    .table
                    .get(id)
                    .is_some_and(|s| s.state == MsgState::InFlight);
            if !current {
                continue;
            }
            let count = self.deliveries.get(&id).copied().unwrap_or(0);
            if let Some(flight) = self.inflight.get_mut(&id) {
                flight.lease = None; // already removed from the lease set
            }
            self.end_delivery(id, q);
            records.extend(self.settle_back(id, q, count, now, 0, &mut woken));
        }
        // Expiries: due entries of waiting messages fire; those out with a consumer stay
        // until the message comes back.
        let due: Vec<(u64, MessageId)> = self
            .queue(q)
            .map(|queue| {
                queue
                    .expiry
                    .range(..=(now, MessageId(u64::MAX)))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        for (at, id) in due {
            let slot = self.table.get(id);
            match slot {
                Some(s) if s.queue == q && s.state == MsgState::Ready => {
                    self.unwait(id, q);
                    let fate = self.fate_in(q);
                    records.push(self.fate_record(id, fate, MoveReason::Expired));
                    woken.extend(self.apply_fate(id, q, fate, MoveReason::Expired, now));
                }
                Some(s) if s.queue == q && !s.state.is_settled() => {
                    // Out with a consumer (or being settled): leave the index, so that a
                    // blocked receiver does not wake for it over and over; `enqueue` puts
                    // it back if the message returns.
                    if let Some(queue) = self.queue_mut(q) {
                        queue.expiry.remove(&(at, id));
                    }
                }
                _ => {
                    self.expiries.remove(&id);
                    if let Some(queue) = self.queue_mut(q) {
                        queue.expiry.remove(&(at, id));
                    }
                }
            }
        }
        (records, woken)
    }

    /// A delivery of `q` comes back (nack with requeue or an expired lease): requeued after
    /// `not_before`, or dead-lettered if it has reached the queue's delivery limit. The
    /// message must already be out of flight. Returns the record to write.
    pub(crate) fn settle_back(
        &mut self,
        id: MessageId,
        q: QueueId,
        count: u32,
        now: u64,
        not_before: u64,
        woken: &mut Vec<QueueId>,
    ) -> Option<OwnedRecord> {
        let limit = self
            .queue(q)
            .map_or(0, |queue| queue.settings.max_deliveries);
        if limit > 0 && count >= limit {
            let fate = self.fate_in(q);
            let record = self.fate_record(id, fate, MoveReason::DeliveryLimit);
            woken.extend(self.apply_fate(id, q, fate, MoveReason::DeliveryLimit, now));
            return Some(record);
        }
        self.table.update(id, |s| s.state = MsgState::Ready);
        self.enqueue(id, q, now, not_before);
        woken.push(q);
        Some(OwnedRecord {
            kind: RecordKind::Rollback,
            body: RollbackBody {
                id: id.0,
                delivery_count: count,
                disposition: Disposition::Requeue,
                reason: None,
                not_before_ms: not_before,
            }
            .encode()
            .to_vec(),
        })
    }

    /// Makes room in `q` for `messages` more messages of `bytes` payload bytes under its
    /// `max_length` / `max_bytes`. Under drop-head, dead-letters or drops the oldest waiting
    /// messages and returns their records; under reject-publish, or if the new messages
    /// alone exceed the limit, returns the limit that is exceeded.
    pub(crate) fn make_room(
        &mut self,
        q: QueueId,
        messages: u64,
        bytes: u64,
        now: u64,
        woken: &mut Vec<QueueId>,
    ) -> Result<Vec<OwnedRecord>, &'static str> {
        let Some(queue) = self.queue(q) else {
            return Ok(Vec::new());
        };
        let s = queue.settings;
        // Reject-publish counts other publishers' messages that are written but not yet
        // confirmed, so that concurrent publishers cannot overshoot the limit together;
        // drop-head does not (it could not push them out yet) and trims after they land.
        let (pending, pending_bytes) = if s.overflow == 1 {
            (queue.pending, queue.pending_bytes)
        } else {
            (0, 0)
        };
        let over = |queue: &QueueState| -> Option<&'static str> {
            if s.max_length > 0 && queue.waiting() + pending + messages > s.max_length {
                Some("max_length")
            } else if s.max_bytes > 0 && queue.waiting_bytes + pending_bytes + bytes > s.max_bytes {
                Some("max_bytes")
            } else {
                None
            }
        };
        let Some(limit) = over(queue) else {
            return Ok(Vec::new());
        };
        if s.overflow == 1
            || (s.max_length > 0 && messages > s.max_length)
            || (s.max_bytes > 0 && bytes > s.max_bytes)
        {
            return Err(limit);
        }
        let mut records = Vec::new();
        while self.queue(q).and_then(over).is_some() {
            let victim = match self.pop_ready(q) {
                Some(id) => id,
                None => {
                    // Only delayed messages left: the one due first goes.
                    let Some(&(_, id)) = self.queue(q).and_then(|queue| queue.delayed.first())
                    else {
                        return Err(limit);
                    };
                    self.unwait(id, q);
                    id
                }
            };
            let fate = self.fate_in(q);
            records.push(self.fate_record(victim, fate, MoveReason::Overflow));
            woken.extend(self.apply_fate(victim, q, fate, MoveReason::Overflow, now));
        }
        Ok(records)
    }

    /// Enforces a drop-head queue's `max_length` / `max_bytes` on what is already waiting
    /// (after requeues, dead-letters into it, redrives, or concurrent publishes): the
    /// oldest waiting messages are dead-lettered or dropped with reason `Overflow`. Queues
    /// with reject-publish are left alone (only publishing is refused there).
    pub(crate) fn trim(
        &mut self,
        q: QueueId,
        now: u64,
        woken: &mut Vec<QueueId>,
    ) -> Vec<OwnedRecord> {
        let mut records = Vec::new();
        let Some(settings) = self.queue(q).map(|queue| queue.settings) else {
            return records;
        };
        if settings.overflow != 0 {
            return records;
        }
        let over = |queue: &QueueState| {
            (settings.max_length > 0 && queue.waiting() > settings.max_length)
                || (settings.max_bytes > 0 && queue.waiting_bytes > settings.max_bytes)
        };
        while self.queue(q).is_some_and(over) {
            let victim = match self.pop_ready(q) {
                Some(id) => id,
                None => match self
                    .queue(q)
                    .and_then(|queue| queue.delayed.first())
                    .copied()
                {
                    Some((_, id)) => {
                        self.unwait(id, q);
                        id
                    }
                    None => break,
                },
            };
            let fate = self.fate_in(q);
            records.push(self.fate_record(victim, fate, MoveReason::Overflow));
            woken.extend(self.apply_fate(victim, q, fate, MoveReason::Overflow, now));
        }
        records
    }

    /// Dead-letters (or drops) every waiting message that has used up its queue's
    /// `max_deliveries`: at open, a message that was out with a consumer when the process
    /// died comes back with its persisted delivery count, and a poison message that kills
    /// its worker every time must still reach the dead-letter queue.
    pub(crate) fn enforce_delivery_limits(&mut self, now: u64) -> (Vec<OwnedRecord>, Vec<QueueId>) {
        let mut records = Vec::new();
        let mut woken = Vec::new();
        let mut over: Vec<(MessageId, QueueId)> = self
            .deliveries
            .iter()
            .filter_map(|(&id, &count)| {
                let slot = self.table.get(id)?;
                let limit = self.queue(slot.queue)?.settings.max_deliveries;
                (slot.state == MsgState::Ready && limit > 0 && count >= limit)
                    .then_some((id, slot.queue))
            })
            .collect();
        over.sort_unstable();
        for (id, q) in over {
            self.unwait(id, q);
            let fate = self.fate_in(q);
            records.push(self.fate_record(id, fate, MoveReason::DeliveryLimit));
            woken.extend(self.apply_fate(id, q, fate, MoveReason::DeliveryLimit, now));
        }
        (records, woken)
    }

    /// Registers a message's expiry in its queue.
    pub(crate) fn set_expiry(&mut self, id: MessageId, q: QueueId, at: u64) {
        if at == 0 {
            return;
        }
        self.expiries.insert(id, at);
        if let Some(queue) = self.queue_mut(q) {
            queue.expiry.insert((at, id));
        }
    }

    /// Records the ack of a message that is out of flight.
    pub(crate) fn mark_acked(&mut self, id: MessageId, q: QueueId) {
        self.drop_expiry(id, q);
        self.deliveries.remove(&id);
        self.origins.remove(&id);
        self.table.update(id, |s| s.state = MsgState::Acked);
        self.acked_total += 1;
        if let Some(queue) = self.queue_mut(q) {
            queue.counters.acked += 1;
        }
        self.table.prune();
    }

    /// Moves every waiting message of `dlq` that was dead-lettered back to the queue it came
    /// from, as a fresh message there. Returns the records, the number moved and the queues
    /// to wake.
    pub(crate) fn redrive(&mut self, dlq: QueueId, now: u64) -> (Vec<OwnedRecord>, Vec<QueueId>) {
        let mut candidates: Vec<MessageId> = self
            .origins
            .iter()
            .filter(|(id, _)| self.is_waiting_in(**id, dlq))
            .map(|(id, _)| *id)
            .collect();
        candidates.sort_unstable();
        let mut records = Vec::new();
        let mut woken = Vec::new();
        for id in candidates {
            let Some(origin) = self.origins.remove(&id) else {
                continue;
            };
            self.unwait(id, dlq);
            self.deliveries.remove(&id);
            self.table.update(id, |s| s.queue = origin.queue);
            self.enqueue(id, origin.queue, now, 0);
            records.push(OwnedRecord {
                kind: RecordKind::Move,
                body: MoveBody {
                    id: id.0,
                    to_queue: origin.queue.0,
                    reason: MoveReason::Redrive,
                }
                .encode()
                .to_vec(),
            });
            woken.push(origin.queue);
        }
        (records, woken)
    }
}
