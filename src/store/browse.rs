//! Browsing: looking at the messages waiting in a queue without taking them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use super::{lock, Queue};
use crate::delivery::{time_from_ms, DeadLetter, DeadLetterReason};
use crate::error::{Error, Result};
use crate::format::MoveReason;
use crate::ids::{MessageId, Position, QueueId};
use crate::queue::{MsgState, State};

/// A waiting message seen by [`Queue::peek`]: like a [`Delivery`](crate::Delivery), but
/// nothing was delivered, so there is nothing to settle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeekedMessage {
    /// The message's id.
    pub id: MessageId,
    /// The queue it waits in.
    pub queue: Arc<str>,
    /// The payload, read back from the log.
    pub payload: Vec<u8>,
    /// How many times it has been delivered so far (0 if never); its next delivery will
    /// have `delivery_count + 1`.
    pub delivery_count: u32,
    /// When it was published (millisecond precision).
    pub published_at: SystemTime,
    /// When it expires, if it has a time to live.
    pub expires_at: Option<SystemTime>,
    /// Set if it was dead-lettered into this queue: why, and from where.
    pub dead_letter: Option<DeadLetter>,
}

/// What `peek` gathers under the state lock, to read outside it.
struct Seen {
    id: MessageId,
    pos: Position,
    count: u32,
    expires_ms: Option<u64>,
    dead_letter: Option<DeadLetter>,
}

fn dead_letter_reason(reason: MoveReason) -> DeadLetterReason {
    match reason {
        MoveReason::Expired => DeadLetterReason::Expired,
        MoveReason::DeliveryLimit => DeadLetterReason::DeliveryLimit,
        MoveReason::Overflow => DeadLetterReason::Overflow,
        MoveReason::Rejected | MoveReason::Redrive => DeadLetterReason::Rejected,
    }
}

/// Whether `id` is ready (not delayed, not expired at `now`) in queue `q`.
fn is_ready_in(state: &State, id: MessageId, q: QueueId, now: u64) -> bool {
    state
        .table
        .get(id)
        .is_some_and(|s| s.state == MsgState::Ready && s.queue == q)
        && !state.delays.contains_key(&id)
        && state.expiries.get(&id).is_none_or(|&at| at > now)
}

impl Queue {
    /// Returns up to `max` of the messages ready in this queue, in the order receives would
    /// take them (messages delivered before first, oldest id first; then never-delivered
    /// ones in publish order), without taking them.
    ///
    /// Nothing is written and nothing changes: no delivery is counted, no record is appended
    /// and no timer fires, so a later receive gets the same messages. Delayed messages and
    /// messages whose time to live has run out are left out. The result is a snapshot: a
    /// concurrent receive may take a message right after it was peeked.
    ///
    /// Cost: one pass over the queue's ready list under the store's state lock (up to `max`
    /// entries, plus stale ones), then one positioned read per message outside the lock.
    /// Errors: [`Error::Closed`], [`Error::Corruption`] if a payload fails its checksum,
    /// [`Error::Io`].
    pub fn peek(&self, max: usize) -> Result<Vec<PeekedMessage>> {
        let store = self.store();
        let seen: Vec<Seen> = {
            let state = lock(&store.inner.state);
            if state.closed {
                return Err(Error::Closed);
            }
            let now = store.now();
            let Some(queue) = state.queue(self.id) else {
                return Ok(Vec::new());
            };
            let mut taken = HashSet::new();
            queue
                .requeued
                .iter()
                .chain(queue.ready.iter())
                .filter(|&id| is_ready_in(&state, id, self.id, now) && taken.insert(id))
                .take(max)
                .filter_map(|id| {
                    let slot = state.table.get(id)?;
                    let origin = state.origins.get(&id).copied();
                    let dead_letter = origin.and_then(|o| {
                        let from = state.queue(o.queue)?;
                        Some(DeadLetter {
                            reason: dead_letter_reason(o.reason),
                            original_queue: Arc::clone(&from.name),
                        })
                    });
                    Some(Seen {
                        id,
                        pos: slot.position(),
                        count: state.deliveries.get(&id).copied().unwrap_or(0),
                        expires_ms: state.expiries.get(&id).copied(),
                        dead_letter,
                    })
                })
                .collect()
        };
        let mut out = Vec::with_capacity(seen.len());
        for message in seen {
            match self.read_peeked(&message) {
                Ok(peeked) => out.push(peeked),
                Err(err) => {
                    // Settled and gone since the snapshot (its segment may have been
                    // removed): skip it. Still waiting: the read failure is real.
                    let state = lock(&store.inner.state);
                    let still_there = state
                        .table
                        .get(message.id)
                        .is_some_and(|s| s.queue == self.id && !s.state.is_settled());
                    if still_there {
                        return Err(err);
                    }
                }
            }
        }
        Ok(out)
    }

    fn read_peeked(&self, seen: &Seen) -> Result<PeekedMessage> {
        let (header, payload) = self.store().read_message(seen.id, seen.pos)?;
        Ok(PeekedMessage {
            id: seen.id,
            queue: Arc::from(self.name()),
            payload,
            delivery_count: seen.count,
            published_at: time_from_ms(header.published_ms),
            expires_at: seen.expires_ms.map(time_from_ms),
            dead_letter: seen.dead_letter.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{Store, StoreOptions};

    #[test]
    fn peek_shows_ready_messages_in_receive_order_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::new()).unwrap();
        let jobs = store.declare_queue("jobs").unwrap();
        jobs.publish_batch(&[b"a", b"b", b"c"]).unwrap();
        // "b" is delivered and requeued: it comes first now, with one delivery counted.
        let a = jobs.try_receive().unwrap().unwrap();
        let b = jobs.try_receive().unwrap().unwrap();
        jobs.nack(b.id, true).unwrap();
        let before = store.stats();

        let peeked = jobs.peek(10).unwrap();
        let payloads: Vec<&[u8]> = peeked.iter().map(|p| p.payload.as_slice()).collect();
        assert_eq!(payloads, [&b"b"[..], b"c"]);
        assert_eq!(peeked[0].delivery_count, 1);
        assert_eq!(peeked[1].delivery_count, 0);
        assert_eq!(jobs.peek(1).unwrap().len(), 1);
        assert_eq!(store.stats(), before, "peek changed the store");

        // The peeked messages are still there, in the same order.
        let next = jobs.try_receive().unwrap().unwrap();
        assert_eq!((next.id, next.delivery_count), (b.id, 2));
        assert_eq!(jobs.try_receive().unwrap().unwrap().payload, b"c");
        jobs.ack(a.id).unwrap();
        assert!(jobs.peek(10).unwrap().is_empty());
        store.close().unwrap();
        assert!(matches!(jobs.peek(1), Err(crate::Error::Closed)));
    }
}
