//! Rebuilding the queue state from the records recovery hands over, in log order.
//!
//! Every record is checked against what came before it: publish ids must be dense, settle and
//! move records must name published messages, queue ids must be declared. A violation is
//! corruption at that record's position; a checksum-valid record that breaks these rules
//! means the log is not what walq wrote.

use std::sync::Arc;

use super::{MsgState, Origin, QueueState, State};
use crate::error::{Error, Result};
use crate::format::{
    AckBody, Checkpoint, CheckpointError, CheckpointMessage, DeliverBody, Disposition, MoveBody,
    MoveReason, PublishBody, QueueDeclareBody, RecordKind, RelocateBody, RollbackBody, NO_QUEUE,
};
use crate::ids::{MessageId, Position, QueueId};
use crate::log::RecoveredRecord;

/// Accumulates state while recovery replays the log.
#[derive(Debug, Default)]
pub(crate) struct Replayer {
    state: State,
    /// Whether a publish record was seen yet (the first one fixes the table's base id).
    seen_publish: bool,
}

fn corrupt(pos: Position, reason: impl Into<String>) -> Error {
    Error::corruption(pos.segment, pos.offset, reason)
}

impl Replayer {
    /// Starts from a checkpoint instead of an empty store: the records to apply next are
    /// those after the checkpoint's position. `cp` holds the header and queues, `messages`
    /// yields its messages by increasing id (the caller validated them once already; a
    /// message that fails now is reported as corruption of the checkpoint).
    pub(crate) fn from_checkpoint(
        cp: &Checkpoint,
        messages: impl Iterator<Item = std::result::Result<CheckpointMessage, CheckpointError>>,
    ) -> Result<Replayer> {
        let bad = |e: CheckpointError| {
            Error::corruption(
                crate::ids::SegmentId(cp.segment),
                cp.offset,
                format!("checkpoint {}: {e}", cp.sequence),
            )
        };
        let mut state = State::default();
        for (i, q) in cp.queues.iter().enumerate() {
            let name: Arc<str> = q.name.as_str().into();
            state.by_name.insert(Arc::clone(&name), QueueId(i as u32));
            let mut queue = QueueState::new(name, q.settings);
            let [_, published, acked, rejected, expired, dead_lettered, dropped] = q.counters;
            queue.counters = super::state::Counters {
                unacked: 0,
                published,
                acked,
                rejected,
                expired,
                dead_lettered,
                dropped,
            };
            state.queues.push(queue);
        }
        let mut messages = messages.peekable();
        let base = match messages.peek() {
            Some(Ok(m)) => m.id,
            Some(Err(e)) => return Err(bad(e.clone())),
            None => cp.next_message_id,
        };
        state.table = super::MessageTable::starting_at(base);
        for id in base..cp.next_message_id {
            let next = messages.next_if(|m| m.as_ref().map_or(true, |m| m.id == id));
            let Some(m) = next.transpose().map_err(bad)? else {
                // Settled before the checkpoint; pruned once the messages before it settle.
                let nowhere = Position {
                    segment: crate::ids::SegmentId(0),
                    offset: 0,
                };
                state.table.push(nowhere, QueueId(0), 0, MsgState::Acked);
                continue;
            };
            let msg = MessageId(id);
            let pos = Position {
                segment: crate::ids::SegmentId(m.segment),
                offset: m.offset,
            };
            state
                .table
                .push(pos, QueueId(m.queue), m.len as usize, MsgState::Ready);
            if m.delivery_count > 0 {
                state.deliveries.insert(msg, m.delivery_count);
            }
            if m.expires_ms != 0 {
                state.expiries.insert(msg, m.expires_ms);
            }
            if m.not_before_ms != 0 {
                state.delays.insert(msg, m.not_before_ms);
            }
            if let Some((from, reason)) = m.origin {
                state.origins.insert(
                    msg,
                    Origin {
                        queue: QueueId(from),
                        reason,
                    },
                );
            }
        }
        if let Some(extra) = messages.next() {
            // Ids are checked below `next_message_id` as they are decoded.
            return Err(bad(extra
                .err()
                .unwrap_or(CheckpointError::Invalid("messages out of order"))));
        }
        state.acked_total = cp.acked_total;
        state.rejected_total = cp.rejected_total;
        Ok(Replayer {
            state,
            seen_publish: true,
        })
    }

    pub(crate) fn apply(&mut self, rec: RecoveredRecord<'_>) -> Result<()> {
        let pos = rec.position;
        let kind = RecordKind::from_u8(rec.kind)
            .ok_or_else(|| corrupt(pos, format!("unknown record kind {}", rec.kind)))?;
        match kind {
            RecordKind::QueueDeclare => self.declare(pos, rec.body),
            RecordKind::Publish => self.publish(pos, rec.body),
            RecordKind::Ack => self.ack(pos, rec.body),
            RecordKind::Rollback => self.rollback(pos, rec.body),
            RecordKind::Deliver => self.deliver(pos, rec.body),
            RecordKind::Move => self.relocate(pos, rec.body),
            RecordKind::Relocate => self.copy(pos, rec.body),
            RecordKind::Seal | RecordKind::Commit => Ok(()),
        }
    }

    fn declare(&mut self, pos: Position, body: &[u8]) -> Result<()> {
        let decl = QueueDeclareBody::decode(body).map_err(|e| corrupt(pos, e))?;
        let expected = self.state.queues.len() as u32;
        if decl.queue_id != expected {
            return Err(corrupt(
                pos,
                format!(
                    "queue id {} declared where {expected} was expected",
                    decl.queue_id
                ),
            ));
        }
        let dlq = decl.settings.dead_letter_queue;
        if dlq != NO_QUEUE && dlq >= expected {
            return Err(corrupt(
                pos,
                format!("dead-letter queue {dlq} is not declared before queue {expected}"),
            ));
        }
        let name: Arc<str> = decl.name.into();
        if self.state.by_name.contains_key(&name) {
            return Err(corrupt(pos, format!("queue {name:?} declared twice")));
        }
        self.state
            .by_name
            .insert(Arc::clone(&name), QueueId(decl.queue_id));
        self.state.queues.push(QueueState::new(name, decl.settings));
        Ok(())
    }

    fn publish(&mut self, pos: Position, body: &[u8]) -> Result<()> {
        let publish = PublishBody::decode(body).map_err(|e| corrupt(pos, e))?;
        let header = publish.header;
        if !self.seen_publish {
            // The oldest surviving publish fixes where ids start (later, once compaction
            // deletes whole segments, this need not be 0).
            self.state.table = super::MessageTable::starting_at(header.id);
            self.seen_publish = true;
        }
        let expected = self.state.table.next_id();
        if header.id != expected {
            return Err(corrupt(
                pos,
                format!(
                    "message id {} where {expected} was expected (a record or segment is missing)",
                    header.id
                ),
            ));
        }
        let queue = QueueId(header.queue_id);
        let q = self
            .state
            .queue_mut(queue)
            .ok_or_else(|| corrupt(pos, format!("publish to undeclared queue {}", queue.0)))?;
        q.counters.published += 1;
        let id = MessageId(header.id);
        self.state
            .table
            .push(pos, queue, publish.payload.len(), MsgState::Ready);
        if header.expires_ms != 0 {
            self.state.expiries.insert(id, header.expires_ms);
        }
        if header.not_before_ms != 0 {
            self.state.delays.insert(id, header.not_before_ms);
        }
        Ok(())
    }

    /// The queue and state of the message a record refers to; `None` if already settled.
    fn target(&mut self, pos: Position, id: u64) -> Result<Option<(QueueId, MsgState)>> {
        match self.state.table.lookup(MessageId(id)) {
            super::Lookup::Settled => Ok(None),
            super::Lookup::Unknown => Err(corrupt(
                pos,
                format!("record refers to message {id}, which was never published"),
            )),
            super::Lookup::Live(slot) if slot.state.is_settled() => Ok(None),
            super::Lookup::Live(slot) => Ok(Some((slot.queue, slot.state))),
        }
    }

    /// Forgets everything about a message that leaves the table.
    fn forget(&mut self, id: MessageId, state: MsgState) {
        self.state.table.update(id, |s| s.state = state);
        self.state.deliveries.remove(&id);
        self.state.expiries.remove(&id);
        self.state.delays.remove(&id);
        self.state.origins.remove(&id);
    }

    fn ack(&mut self, pos: Position, body: &[u8]) -> Result<()> {
        let ack = AckBody::decode(body).map_err(|e| corrupt(pos, e))?;
        for (first, last) in ack.ranges {
            if last >= self.state.table.next_id() {
                return Err(corrupt(
                    pos,
                    format!("ack of message {last}, which was never published"),
                ));
            }
            for id in first..=last {
                if let Some((queue, _)) = self.target(pos, id)? {
                    self.forget(MessageId(id), MsgState::Acked);
                    self.state.acked_total += 1;
                    if let Some(q) = self.state.queue_mut(queue) {
                        q.counters.acked += 1;
                    }
                }
            }
        }
        self.state.table.prune();
        Ok(())
    }

    fn count_fate(&mut self, queue: QueueId, reason: MoveReason, dead_lettered: bool) {
        if reason == MoveReason::Rejected {
            self.state.rejected_total += 1;
        }
        if let Some(q) = self.state.queue_mut(queue) {
            let c = &mut q.counters;
            match reason {
                MoveReason::Rejected => c.rejected += 1,
                MoveReason::Expired => c.expired += 1,
                MoveReason::DeliveryLimit | MoveReason::Overflow | MoveReason::Redrive => {}
            }
            if dead_lettered {
                c.dead_lettered += 1;
            } else {
                c.dropped += 1;
            }
        }
    }

    fn rollback(&mut self, pos: Position, body: &[u8]) -> Result<()> {
        let rb = RollbackBody::decode(body).map_err(|e| corrupt(pos, e))?;
        let Some((queue, _)) = self.target(pos, rb.id)? else {
            return Ok(());
        };
        let id = MessageId(rb.id);
        match rb.disposition {
            Disposition::Requeue => {
                let count = self.state.deliveries.entry(id).or_insert(0);
                *count = (*count).max(rb.delivery_count);
                if rb.not_before_ms != 0 {
                    self.state.delays.insert(id, rb.not_before_ms);
                } else {
                    self.state.delays.remove(&id);
                }
            }
            Disposition::Drop => {
                self.forget(id, MsgState::Dropped);
                self.count_fate(queue, rb.reason.unwrap_or(MoveReason::Rejected), false);
                self.state.table.prune();
            }
        }
        Ok(())
    }

    fn deliver(&mut self, pos: Position, body: &[u8]) -> Result<()> {
        let d = DeliverBody::decode(body).map_err(|e| corrupt(pos, e))?;
        if self.target(pos, d.id)?.is_some() {
            let count = self.state.deliveries.entry(MessageId(d.id)).or_insert(0);
            *count = (*count).max(d.delivery_count);
        }
        Ok(())
    }

    fn relocate(&mut self, pos: Position, body: &[u8]) -> Result<()> {
        let mv = MoveBody::decode(body).map_err(|e| corrupt(pos, e))?;
        if self.state.queue(QueueId(mv.to_queue)).is_none() {
            return Err(corrupt(
                pos,
                format!("move to undeclared queue {}", mv.to_queue),
            ));
        }
        let Some((from, _)) = self.target(pos, mv.id)? else {
            return Ok(());
        };
        let id = MessageId(mv.id);
        // A moved message starts afresh in its new queue: no delivery count, no delay, no
        // expiry (a queue's TTL applies from publication, in the queue published to).
        self.state.deliveries.remove(&id);
        self.state.expiries.remove(&id);
        self.state.delays.remove(&id);
        self.state
            .table
            .update(id, |s| s.queue = QueueId(mv.to_queue));
        if mv.reason == MoveReason::Redrive {
            self.state.origins.remove(&id);
        } else {
            self.state.origins.insert(
                id,
                Origin {
                    queue: from,
                    reason: mv.reason,
                },
            );
            self.count_fate(from, mv.reason, true);
        }
        Ok(())
    }

    /// A relocated copy: the message's payload now lives at `pos`, and its state is the
    /// copy's.
    fn copy(&mut self, pos: Position, body: &[u8]) -> Result<()> {
        let copy = RelocateBody::decode(body).map_err(|e| corrupt(pos, e))?;
        let header = copy.header;
        let queue = QueueId(header.queue_id);
        let declared = |q: u32| self.state.queue(QueueId(q)).is_some();
        if !declared(queue.0) || copy.origin.is_some_and(|(from, _)| !declared(from)) {
            return Err(corrupt(pos, "relocated message in an undeclared queue"));
        }
        let id = MessageId(header.id);
        if self.target(pos, header.id)?.is_none() {
            return Err(corrupt(
                pos,
                format!("relocated copy of message {id}, which was already settled"),
            ));
        }
        self.state.table.update(id, |s| {
            s.segment = pos.segment.0;
            s.offset = u32::try_from(pos.offset).unwrap_or(u32::MAX);
            s.queue = queue;
            s.len = u32::try_from(copy.payload.len()).unwrap_or(u32::MAX);
        });
        let s = &mut self.state;
        match copy.delivery_count {
            0 => s.deliveries.remove(&id),
            n => s.deliveries.insert(id, n),
        };
        match header.expires_ms {
            0 => s.expiries.remove(&id),
            at => s.expiries.insert(id, at),
        };
        match header.not_before_ms {
            0 => s.delays.remove(&id),
            at => s.delays.insert(id, at),
        };
        match copy.origin {
            None => s.origins.remove(&id),
            Some((from, reason)) => s.origins.insert(
                id,
                Origin {
                    queue: QueueId(from),
                    reason,
                },
            ),
        };
        Ok(())
    }

    /// Builds the waiting structures at time `now`: every unsettled message is waiting again
    /// (delayed if its delay is still running); messages delivered before are served first,
    /// then the rest in publish order. Timers that are already due fire on first use.
    pub(crate) fn finish(mut self, now: u64) -> State {
        let delays = std::mem::take(&mut self.state.delays);
        let expiries = std::mem::take(&mut self.state.expiries);
        let mut live: Vec<(MessageId, QueueId, u32)> =
            Vec::with_capacity(usize::try_from(self.state.table.live_count()).unwrap_or(0));
        // `for_each` walks the chunks with internal iteration, which the compiler turns
        // into plain loops (an `extend` of the same iterator costs half as much again).
        self.state.table.live().for_each(|(id, slot)| {
            if slot.state == MsgState::Ready {
                live.push((id, slot.queue, slot.len));
            }
        });
        for (id, queue, len) in live {
            let not_before = delays.get(&id).copied().unwrap_or(0);
            self.state
                .enqueue_sized(id, queue, u64::from(len), now, not_before);
            if let Some(&at) = expiries.get(&id) {
                self.state.set_expiry(id, queue, at);
            }
        }
        self.state
    }
}
