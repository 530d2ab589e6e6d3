//! Receiving: fair dispatch among blocked receivers, prefetch limits, leases, and reading
//! the payload back from the log.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::{lock, Store};
use crate::delivery::{time_from_ms, DeadLetter, DeadLetterReason, Delivery};
use crate::error::{Error, Result};
use crate::format::{
    DeliverBody, MoveReason, PublishBody, PublishHeader, RecordKind, RelocateBody,
    PUBLISH_HEADER_LEN, RELOCATE_HEADER_LEN,
};
use crate::ids::{MessageId, Position, QueueId};
use crate::log::Record;
use crate::queue::{InFlight, MsgState, State};

/// How long a receive may block.
#[derive(Debug, Clone, Copy)]
pub(super) enum Deadline {
    Now,
    Never,
    At(Instant),
}

/// What a receive took from the queue, to be turned into a [`Delivery`] outside the lock.
struct Taken {
    id: MessageId,
    count: u32,
    pos: Position,
    /// The payload length, from the message table.
    len: u32,
    queue: Arc<str>,
    expires_ms: Option<u64>,
    dead_letter: Option<DeadLetter>,
}

/// The longest a blocked receiver sleeps before re-checking timers (a clock that is moved
/// by hand cannot wake it).
const RECHECK: Duration = Duration::from_millis(250);

fn reason(reason: MoveReason) -> DeadLetterReason {
    match reason {
        MoveReason::Expired => DeadLetterReason::Expired,
        MoveReason::DeliveryLimit => DeadLetterReason::DeliveryLimit,
        MoveReason::Overflow => DeadLetterReason::Overflow,
        MoveReason::Rejected | MoveReason::Redrive => DeadLetterReason::Rejected,
    }
}

impl Store {
    /// Receives from queue `q` for `consumer` (0: a `Queue` handle, no prefetch limit).
    ///
    /// Fair dispatch: a receiver that has to wait takes a ticket, and while tickets are
    /// outstanding only the oldest may take a message, so blocked consumers are served in
    /// the order they started waiting. Non-blocking receives never wait in line: they take a
    /// message only when nobody is waiting.
    pub(super) fn receive_from(
        &self,
        q: QueueId,
        consumer: u64,
        deadline: Deadline,
    ) -> Result<Option<Delivery>> {
        // A poisoned store could not record the ack, so it hands nothing out either.
        self.inner.log.check_writable()?;
        let mut state = lock(&self.inner.state);
        let mut ticket: Option<u64> = None;
        let outcome = loop {
            if state.closed {
                break Err(Error::Closed);
            }
            let now = self.now();
            if let Err(e) = self.fire_timers(&mut state, q, now) {
                break Err(e);
            }
            let has_capacity = match state.consumers.get(&consumer) {
                Some(c) => c.prefetch == 0 || (c.outstanding.len() as u64) < u64::from(c.prefetch),
                None if consumer == 0 => true,
                None => break Err(Error::Closed),
            };
            if !has_capacity {
                // Never hold a place in line while unable to take a message.
                release_ticket(&mut state, q, &mut ticket);
            }
            let my_turn = match (ticket, state.queue(q)) {
                (_, None) => break Err(Error::Closed),
                (None, Some(queue)) => queue.tickets.is_empty(),
                (Some(t), Some(queue)) => queue.tickets.front() == Some(&t),
            };
            if has_capacity && my_turn {
                if let Some(id) = state.pop_ready(q) {
                    release_ticket(&mut state, q, &mut ticket);
                    break Ok(Some(self.take(&mut state, q, consumer, id, now)));
                }
            }
            let wait = match deadline {
                Deadline::Now => break Ok(None),
                Deadline::Never => RECHECK,
                Deadline::At(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break Ok(None);
                    }
                    left.min(RECHECK)
                }
            };
            if has_capacity && ticket.is_none() {
                let t = state.next_ticket;
                state.next_ticket += 1;
                if let Some(queue) = state.queue_mut(q) {
                    queue.tickets.push_back(t);
                }
                ticket = Some(t);
            }
            let Some(queue) = state.queue(q) else {
                break Err(Error::Closed);
            };
            let timer = queue
                .next_timer()
                .map(|at| Duration::from_millis(at.saturating_sub(now)));
            let available = Arc::clone(&queue.available);
            let wait = timer
                .map_or(wait, |t| t.min(wait))
                .max(Duration::from_millis(1));
            // Counted as a waiter from here (state lock held) until the lock is back, so
            // that no waker skips its notification while this receiver sleeps.
            if let Some(queue) = state.queue_mut(q) {
                queue.waiters += 1;
            }
            state = available
                .wait_timeout(state, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            if let Some(queue) = state.queue_mut(q) {
                queue.waiters = queue.waiters.saturating_sub(1);
            }
        };
        release_ticket(&mut state, q, &mut ticket);
        drop(state);
        match outcome {
            Ok(Some(taken)) => self.deliver(q, taken).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Marks `id` as delivered to `consumer` and gathers what the delivery needs.
    fn take(&self, state: &mut State, q: QueueId, consumer: u64, id: MessageId, now: u64) -> Taken {
        let count = {
            let c = state.deliveries.entry(id).or_insert(0);
            *c = c.saturating_add(1);
            *c
        };
        let lease_ms = state
            .queue(q)
            .map_or(0, |queue| queue.settings.ack_timeout_ms);
        let lease = (lease_ms > 0).then(|| now.saturating_add(lease_ms));
        state.inflight.insert(id, InFlight { consumer, lease });
        let origin = state.origins.get(&id).copied();
        let original_queue = origin
            .and_then(|o| state.queue(o.queue))
            .map(|queue| Arc::clone(&queue.name));
        let expires_ms = state.expiries.get(&id).copied();
        if let Some(c) = state.consumers.get_mut(&consumer) {
            c.outstanding.insert(id);
        }
        let name = match state.queue_mut(q) {
            Some(queue) => {
                queue.counters.unacked += 1;
                if let Some(at) = lease {
                    queue.leases.insert((at, id));
                }
                if queue.ready_count > 0 {
                    // Let the next receiver in line look.
                    queue.wake_receivers();
                }
                Arc::clone(&queue.name)
            }
            None => Arc::from(""),
        };
        let (pos, len) = state
            .table
            .update(id, |s| {
                s.state = MsgState::InFlight;
                (s.position(), s.len)
            })
            .unwrap_or((
                Position {
                    segment: crate::SegmentId(0),
                    offset: 0,
                },
                0,
            ));
        let dead_letter = origin
            .zip(original_queue)
            .map(|(o, original_queue)| DeadLetter {
                reason: reason(o.reason),
                original_queue,
            });
        Taken {
            id,
            count,
            pos,
            len,
            queue: name,
            expires_ms,
            dead_letter,
        }
    }

    /// Reads the payload and, if enabled, writes the (unsynced) delivery record. On failure
    /// the message goes back to where it was.
    fn deliver(&self, q: QueueId, taken: Taken) -> Result<Delivery> {
        let id = taken.id;
        match self.read_payload(&taken) {
            Ok(delivery) => Ok(delivery),
            Err(err) => {
                let mut state = lock(&self.inner.state);
                state.end_delivery(id, q);
                // Undo this delivery's count; keep the message's earlier deliveries.
                match state.deliveries.get_mut(&id) {
                    Some(c) if *c > 1 => *c -= 1,
                    _ => {
                        state.deliveries.remove(&id);
                    }
                }
                state.table.update(id, |s| s.state = MsgState::Ready);
                let now = self.now();
                state.enqueue(id, q, now, 0);
                if let Some(queue) = state.queue(q) {
                    queue.wake_receivers();
                }
                Err(err)
            }
        }
    }

    fn read_payload(&self, taken: &Taken) -> Result<Delivery> {
        let id = taken.id;
        let (header, payload) = self.read_message_of_len(id, taken.pos, Some(taken.len))?;
        let published_at = time_from_ms(header.published_ms);
        if self.inner.opts.persist_deliveries {
            let body = DeliverBody {
                id: id.0,
                delivery_count: taken.count,
            }
            .encode();
            self.inner.log.write_reporting(
                &[Record {
                    kind: RecordKind::Deliver.code(),
                    body: &[&body],
                }],
                &mut |_, _| {},
            )?;
        }
        Ok(Delivery {
            id,
            queue: Arc::clone(&taken.queue),
            payload,
            redelivered: taken.count > 1,
            delivery_count: taken.count,
            published_at,
            expires_at: taken.expires_ms.map(time_from_ms),
            dead_letter: taken.dead_letter.clone(),
        })
    }
}

impl Store {
    /// Reads message `id`'s payload record (a publish, or a relocated copy) at `pos` and
    /// returns its publish fields and payload.
    ///
    /// Compaction may relocate the message and delete the segment at `pos` between the
    /// caller taking `pos` from the state and this read: then the current position is
    /// looked up and read instead.
    pub(super) fn read_message(
        &self,
        id: MessageId,
        pos: Position,
    ) -> Result<(PublishHeader, Vec<u8>)> {
        self.read_message_of_len(id, pos, None)
    }

    /// Like [`Store::read_message`], given the payload length the message table holds:
    /// the publish record at `pos` is then read with one system call, not two. A record of
    /// another length (a relocated copy) is still read whole, with a second call.
    pub(super) fn read_message_of_len(
        &self,
        id: MessageId,
        pos: Position,
        len: Option<u32>,
    ) -> Result<(PublishHeader, Vec<u8>)> {
        let body_len = len.map(|len| PUBLISH_HEADER_LEN + len as usize);
        let record = match self.inner.log.read_expecting(pos, body_len) {
            Ok(record) => record,
            Err(err) => {
                let now = lock(&self.inner.state).table.get(id).map(|s| s.position());
                match now {
                    Some(moved) if moved != pos => self.inner.log.read(moved)?,
                    _ => return Err(err),
                }
            }
        };
        let bad = |why: String| Error::corruption(pos.segment, pos.offset, why);
        let (header, skip) = match RecordKind::from_u8(record.kind) {
            Some(RecordKind::Publish) => (
                PublishBody::decode(&record.body)
                    .map_err(|e| bad(e.into()))?
                    .header,
                PUBLISH_HEADER_LEN,
            ),
            Some(RecordKind::Relocate) => (
                RelocateBody::decode(&record.body)
                    .map_err(|e| bad(e.into()))?
                    .header,
                RELOCATE_HEADER_LEN,
            ),
            _ => return Err(bad(format!("expected the payload record of message {id}"))),
        };
        if header.id != id.0 {
            return Err(bad(format!("expected the payload record of message {id}")));
        }
        let mut payload = record.body;
        payload.drain(..skip);
        Ok((header, payload))
    }
}

/// Gives up a receiver's place in line and lets the next one look.
fn release_ticket(state: &mut State, q: QueueId, ticket: &mut Option<u64>) {
    if let Some(t) = ticket.take() {
        if let Some(queue) = state.queue_mut(q) {
            queue.tickets.retain(|&x| x != t);
            queue.wake_receivers();
        }
    }
}
