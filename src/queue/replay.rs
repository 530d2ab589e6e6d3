//! Rebuilding the queue state from the records recovery hands over, in log order.
//!
//! Every record is checked against what came before it: publish ids must be dense, acks and
//! rollbacks must name published messages, queue ids must be declared. A violation is
//! corruption at that record's position; a checksum-valid record that breaks these rules
//! means the log is not what walq wrote.

use std::sync::Arc;

use super::{MsgState, QueueState, State};
use crate::error::{Error, Result};
use crate::format::{
    AckBody, DeliverBody, Disposition, PublishBody, QueueDeclareBody, RecordKind, RollbackBody,
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
        let name: Arc<str> = decl.name.into();
        if self.state.by_name.contains_key(&name) {
            return Err(corrupt(pos, format!("queue {name:?} declared twice")));
        }
        let id = QueueId(decl.queue_id);
        self.state.by_name.insert(Arc::clone(&name), id);
        self.state.queues.push(QueueState::new(name));
        Ok(())
    }

    fn publish(&mut self, pos: Position, body: &[u8]) -> Result<()> {
        let publish = PublishBody::decode(body).map_err(|e| corrupt(pos, e))?;
        let id = publish.header.id;
        if !self.seen_publish {
            // The oldest surviving publish fixes where ids start (later, once compaction
            // deletes whole segments, this need not be 0).
            self.state.table = super::MessageTable::starting_at(id);
            self.seen_publish = true;
        }
        let expected = self.state.table.next_id();
        if id != expected {
            return Err(corrupt(pos, format!("message id {id} where {expected} was expected (a record or segment is missing)")));
        }
        let queue = QueueId(publish.header.queue_id);
        let q = self
            .state
            .queue_mut(queue)
            .ok_or_else(|| corrupt(pos, format!("publish to undeclared queue {}", queue.0)))?;
        q.published += 1;
        self.state.table.push(pos, queue, MsgState::Ready);
        Ok(())
    }

    /// Looks up a message a settle record refers to; `None` if it is already settled.
    fn settle_target(&mut self, pos: Position, id: u64) -> Result<Option<(QueueId, MsgState)>> {
        match self.state.table.lookup(MessageId(id)) {
            super::Lookup::Settled => Ok(None),
            super::Lookup::Unknown => Err(corrupt(
                pos,
                format!("record refers to message {id}, which was never published"),
            )),
            super::Lookup::Live(slot) => Ok(Some((slot.queue, slot.state))),
        }
    }

    fn set_state(&mut self, id: u64, state: MsgState) {
        if let Some(slot) = self.state.table.get_mut(MessageId(id)) {
            slot.state = state;
        }
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
                if let Some((queue, state)) = self.settle_target(pos, id)? {
                    if !state.is_settled() {
                        self.set_state(id, MsgState::Acked);
                        self.state.deliveries.remove(&MessageId(id));
                        self.state.acked_total += 1;
                        if let Some(q) = self.state.queue_mut(queue) {
                            q.acked += 1;
                        }
                    }
                }
            }
        }
        self.state.table.prune();
        Ok(())
    }

    fn rollback(&mut self, pos: Position, body: &[u8]) -> Result<()> {
        let rb = RollbackBody::decode(body).map_err(|e| corrupt(pos, e))?;
        let Some((queue, state)) = self.settle_target(pos, rb.id)? else {
            return Ok(());
        };
        if state.is_settled() {
            return Ok(());
        }
        match rb.disposition {
            Disposition::Requeue => {
                let count = self.state.deliveries.entry(MessageId(rb.id)).or_insert(0);
                *count = (*count).max(rb.delivery_count);
            }
            Disposition::Drop | Disposition::DeadLetter => {
                self.set_state(rb.id, MsgState::Dropped);
                self.state.deliveries.remove(&MessageId(rb.id));
                self.state.rejected_total += 1;
                if let Some(q) = self.state.queue_mut(queue) {
                    q.rejected += 1;
                }
                self.state.table.prune();
            }
        }
        Ok(())
    }

    fn deliver(&mut self, pos: Position, body: &[u8]) -> Result<()> {
        let d = DeliverBody::decode(body).map_err(|e| corrupt(pos, e))?;
        if let Some((_, state)) = self.settle_target(pos, d.id)? {
            if !state.is_settled() {
                let count = self.state.deliveries.entry(MessageId(d.id)).or_insert(0);
                *count = (*count).max(d.delivery_count);
            }
        }
        Ok(())
    }

    /// Builds the ready queues: messages delivered before (in flight at the crash, or
    /// requeued) are served first, then the rest in publish order.
    pub(crate) fn finish(mut self) -> State {
        let State {
            queues,
            table,
            deliveries,
            ..
        } = &mut self.state;
        for (id, slot) in table.iter() {
            if slot.state != MsgState::Ready {
                continue;
            }
            if let Some(q) = queues.get_mut(slot.queue.0 as usize) {
                if deliveries.contains_key(&id) {
                    q.requeued.insert(id);
                } else {
                    q.ready.push_back(id);
                }
            }
        }
        self.state
    }
}
