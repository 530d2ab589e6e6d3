//! Settling deliveries: ack, nack (requeue, with or without delay, or reject), their
//! `_multiple` forms, lease extension, and returning a closed consumer's deliveries.

use super::{lock, Store};
use crate::error::{Error, Result};
use crate::format::{AckBody, MoveReason, RecordKind, MAX_ACK_RANGES};
use crate::ids::{MessageId, QueueId};
use crate::queue::{Fate, Lookup, MsgState, OwnedRecord, State};
use crate::queue_options::duration_ms;

/// Through which handle a settle comes, and so what it may settle.
#[derive(Debug, Clone, Copy)]
pub(super) struct Via {
    /// Only deliveries of this queue.
    pub(super) queue: Option<QueueId>,
    /// Only deliveries held by this consumer (0: those made through `Queue` handles).
    pub(super) consumer: Option<u64>,
}

impl Via {
    /// Any delivery of any queue (the store's own `ack` / `nack`).
    pub(super) const ANY: Via = Via {
        queue: None,
        consumer: None,
    };
}

/// What to do with the deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Ack,
    Requeue { delay_ms: u64 },
    Reject,
}

/// The decision for one delivery, made before its record is written.
#[derive(Debug, Clone, Copy)]
enum Plan {
    Ack,
    Back { count: u32, not_before: u64 },
    Fate { fate: Fate, reason: MoveReason },
}

/// Checks that `id` is a delivery `via` may settle.
fn check(state: &mut State, id: MessageId, via: Via) -> Result<QueueId> {
    let queue = match state.table.lookup(id) {
        Lookup::Settled => return Err(Error::AlreadySettled { id }),
        Lookup::Unknown => return Err(Error::UnknownMessage { id }),
        Lookup::Live(slot) => match slot.state {
            MsgState::InFlight => slot.queue,
            MsgState::Acked | MsgState::Dropped | MsgState::Settling => {
                return Err(Error::AlreadySettled { id })
            }
            MsgState::Ready | MsgState::Pending => return Err(Error::NotDelivered { id }),
        },
    };
    if let Some(expected) = via.queue {
        if expected != queue {
            let name = |q: QueueId| {
                state
                    .queue(q)
                    .map_or_else(String::new, |q| q.name.to_string())
            };
            return Err(Error::WrongQueue {
                id,
                expected: name(expected),
                actual: name(queue),
            });
        }
    }
    if let Some(consumer) = via.consumer {
        if state.inflight.get(&id).map(|f| f.consumer) != Some(consumer) {
            return Err(Error::WrongConsumer { id });
        }
    }
    Ok(queue)
}

/// Appends the ack records for `ids` (ascending) to `records`, as few as possible:
/// consecutive ids share a range.
fn ack_records(ids: impl Iterator<Item = MessageId>, records: &mut Vec<OwnedRecord>) {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for id in ids {
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == id.0 => *last = id.0,
            _ => ranges.push((id.0, id.0)),
        }
    }
    if ranges.is_empty() {
        return;
    }
    if ranges.len() <= MAX_ACK_RANGES {
        records.push(OwnedRecord {
            kind: RecordKind::Ack,
            body: AckBody { ranges }.encode(),
        });
        return;
    }
    records.extend(ranges.chunks(MAX_ACK_RANGES).map(|chunk| {
        OwnedRecord {
            kind: RecordKind::Ack,
            body: AckBody {
                ranges: chunk.to_vec(),
            }
            .encode(),
        }
    }));
}

impl Store {
    /// Settles `ids` (all or none: every id is checked first) and writes one atomic group;
    /// durable on return under `FsyncPolicy::Always`.
    pub(super) fn settle(&self, ids: &[MessageId], via: Via, action: Action) -> Result<()> {
        // Sorted and without duplicates; a single id (the usual case) is used as given.
        let sorted: Vec<MessageId>;
        let ids = if ids.windows(2).all(|w| w[0] < w[1]) {
            ids
        } else {
            let mut owned = ids.to_vec();
            owned.sort_unstable();
            owned.dedup();
            sorted = owned;
            &sorted
        };
        if ids.is_empty() {
            return Ok(());
        }
        let now = self.now();
        let not_before = match action {
            Action::Requeue { delay_ms } if delay_ms > 0 => {
                now.checked_add(delay_ms).ok_or(Error::InvalidDuration {
                    what: "requeue delay",
                    reason: "ends too far in the future",
                })?
            }
            _ => 0,
        };
        let _gate = super::gate(&self.inner);
        let (plans, records) = {
            let mut state = lock(&self.inner.state);
            if state.closed {
                return Err(Error::Closed);
            }
            // A lease that ran out is over even if nothing else touched the queue since.
            self.fire_timers_of(&mut state, ids, now)?;
            // Every id is checked before anything changes; the plans are filled in after.
            let mut plans: Vec<(MessageId, QueueId, Plan)> = ids
                .iter()
                .map(|&id| check(&mut state, id, via).map(|q| (id, q, Plan::Ack)))
                .collect::<Result<_>>()?;
            let mut records = Vec::new();
            for (id, q, planned) in &mut plans {
                let (id, q) = (*id, *q);
                state.table.update(id, |s| s.state = MsgState::Settling);
                let plan = match action {
                    Action::Ack => Plan::Ack,
                    Action::Requeue { .. } => {
                        let count = state.deliveries.get(&id).copied().unwrap_or(1);
                        let limit = state
                            .queue(q)
                            .map_or(0, |queue| queue.settings.max_deliveries);
                        if limit > 0 && count >= limit {
                            Plan::Fate {
                                fate: state.fate_in(q),
                                reason: MoveReason::DeliveryLimit,
                            }
                        } else {
                            Plan::Back { count, not_before }
                        }
                    }
                    Action::Reject => Plan::Fate {
                        fate: state.fate_in(q),
                        reason: MoveReason::Rejected,
                    },
                };
                match plan {
                    Plan::Ack => {}
                    Plan::Back { count, not_before } => records.push(OwnedRecord {
                        kind: RecordKind::Rollback,
                        body: crate::format::RollbackBody {
                            id: id.0,
                            delivery_count: count,
                            disposition: crate::format::Disposition::Requeue,
                            reason: None,
                            not_before_ms: not_before,
                        }
                        .encode()
                        .to_vec(),
                    }),
                    Plan::Fate { fate, reason } => {
                        records.push(state.fate_record(id, fate, reason))
                    }
                }
                *planned = plan;
            }
            // `plans` follows `ids`, which are ascending.
            let acked = plans
                .iter()
                .filter(|(_, _, plan)| matches!(plan, Plan::Ack))
                .map(|&(id, _, _)| id);
            ack_records(acked, &mut records);
            (plans, records)
        };

        let result = super::with_log_records(&records, |group| {
            let appended = self.inner.log.write_reporting(group, &mut |_, _| {})?;
            self.inner.log.commit(&appended)
        });

        let mut state = lock(&self.inner.state);
        if let Err(err) = result {
            for &(id, _, _) in &plans {
                state.table.update(id, |s| s.state = MsgState::InFlight);
            }
            return Err(err);
        }
        let now = self.now();
        // Acks wake only their own queues (capacity freed), in order: no list needed.
        let all_acks = plans.iter().all(|(_, _, plan)| matches!(plan, Plan::Ack));
        let mut woken = Vec::new();
        for &(id, q, plan) in &plans {
            state.end_delivery(id, q);
            match plan {
                Plan::Ack => state.mark_acked(id, q),
                Plan::Back { not_before, .. } => {
                    state.table.update(id, |s| s.state = MsgState::Ready);
                    state.enqueue(id, q, now, not_before);
                    woken.push(q);
                }
                Plan::Fate { fate, reason } => {
                    woken.extend(state.apply_fate(id, q, fate, reason, now));
                }
            }
            // Capacity freed: a consumer blocked on its prefetch limit may go on.
            if !all_acks {
                woken.push(q);
            }
        }
        if all_acks {
            self.after_change(&mut state, plans.iter().map(|&(_, q, _)| q), now)
        } else {
            self.after_change(&mut state, woken, now)
        }
    }

    /// Fires the due timers of the queues the messages `ids` are in.
    fn fire_timers_of(&self, state: &mut State, ids: &[MessageId], now: u64) -> Result<()> {
        let queue_of = |state: &State, id: MessageId| state.table.get(id).map(|s| s.queue);
        let mut known = ids.iter().filter_map(|&id| queue_of(state, id));
        if let Some(first) = known.next() {
            if known.all(|q| q == first) {
                // All in one queue (a single id, usually): no list needed.
                return self.fire_timers(state, first, now);
            }
        } else {
            return Ok(());
        }
        let mut queues: Vec<QueueId> = ids
            .iter()
            .filter_map(|&id| state.table.get(id).map(|s| s.queue))
            .collect();
        queues.sort_unstable();
        queues.dedup();
        for q in queues {
            self.fire_timers(state, q, now)?;
        }
        Ok(())
    }

    /// The deliveries of `consumer` in queue `q` with ids up to `up_to`.
    pub(super) fn outstanding_up_to(&self, consumer: u64, up_to: MessageId) -> Vec<MessageId> {
        let state = lock(&self.inner.state);
        state
            .consumers
            .get(&consumer)
            .map(|c| c.outstanding.range(..=up_to).copied().collect())
            .unwrap_or_default()
    }

    /// Renews the lease of a delivery: it now runs out `by` from now.
    pub(super) fn extend(&self, id: MessageId, via: Via, by: std::time::Duration) -> Result<()> {
        let ms = duration_ms("lease extension", by)?;
        let mut state = lock(&self.inner.state);
        if state.closed {
            return Err(Error::Closed);
        }
        self.fire_timers_of(&mut state, &[id], self.now())?;
        let q = check(&mut state, id, via)?;
        let until = self.now().checked_add(ms).ok_or(Error::InvalidDuration {
            what: "lease extension",
            reason: "ends too far in the future",
        })?;
        let old = state
            .inflight
            .get_mut(&id)
            .and_then(|f| f.lease.replace(until));
        if let Some(queue) = state.queue_mut(q) {
            if let Some(old) = old {
                queue.leases.remove(&(old, id));
            }
            queue.leases.insert((until, id));
        }
        Ok(())
    }

    /// Registers a consumer of queue `q`; returns its id.
    pub(super) fn register_consumer(&self, q: QueueId, prefetch: u32) -> Result<u64> {
        let mut state = lock(&self.inner.state);
        if state.closed {
            return Err(Error::Closed);
        }
        state.next_consumer = state.next_consumer.max(1);
        let id = state.next_consumer;
        state.next_consumer += 1;
        state.consumers.insert(
            id,
            crate::queue::ConsumerState {
                queue: q,
                prefetch,
                outstanding: Default::default(),
            },
        );
        Ok(id)
    }

    /// Unregisters a consumer and returns its unsettled deliveries to their queue
    /// (redelivered; dead-lettered if that was their last allowed delivery). Their records
    /// are written without waiting for durability: after a crash they come back anyway.
    pub(super) fn release_consumer(&self, consumer: u64) -> Result<()> {
        let mut state = lock(&self.inner.state);
        let Some(c) = state.consumers.remove(&consumer) else {
            return Ok(());
        };
        if state.closed {
            return Ok(());
        }
        let now = self.now();
        let mut records = Vec::new();
        let mut woken = vec![c.queue];
        for id in c.outstanding {
            if state
                .table
                .get(id)
                .is_some_and(|s| s.state == MsgState::InFlight)
            {
                let count = state.deliveries.get(&id).copied().unwrap_or(1);
                state.end_delivery(id, c.queue);
                records.extend(state.settle_back(id, c.queue, count, now, 0, &mut woken));
            }
        }
        self.write_owned(&records)?;
        self.after_change(&mut state, woken, now)
    }
}
