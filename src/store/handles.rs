//! The handles applications hold: [`Queue`] and [`Consumer`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::receive::Deadline;
use super::settle::{Action, Via};
use super::{lock, queue_stats, Store};
use crate::delivery::{Delivery, QueueStats};
use crate::error::{Error, Result};
use crate::ids::{MessageId, QueueId};
use crate::queue_options::{duration_ms, ConsumerOptions, PublishOptions};

/// A handle on one queue of a [`Store`]. Cheap to clone, `Send + Sync`.
///
/// Deliveries received through a `Queue` handle belong to no consumer: any `Queue` handle
/// of the same queue may settle them, and no prefetch limit applies. Use a [`Consumer`] for
/// prefetch limits, `ack_multiple` and automatic return of unsettled deliveries.
#[derive(Debug, Clone)]
pub struct Queue {
    store: Store,
    pub(super) id: QueueId,
    name: Arc<str>,
}

fn deadline(timeout: Duration) -> Deadline {
    Instant::now()
        .checked_add(timeout)
        .map_or(Deadline::Never, Deadline::At)
}

fn requeue_after(delay: Duration) -> Result<Action> {
    Ok(Action::Requeue {
        delay_ms: duration_ms("requeue delay", delay)?,
    })
}

impl Queue {
    pub(super) fn new(store: Store, id: QueueId, name: Arc<str>) -> Queue {
        Queue { store, id, name }
    }

    fn via(&self) -> Via {
        Via {
            queue: Some(self.id),
            consumer: Some(0),
        }
    }

    /// The queue's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store this queue belongs to.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Publishes one message and returns its id.
    ///
    /// Under [`FsyncPolicy::Always`](crate::FsyncPolicy::Always) the message is durable when
    /// this returns; under the other policies it is written to the operating system (it
    /// survives a process crash) and becomes durable with the next sync. Concurrent
    /// publishers share fsyncs. Errors: [`Error::TooLarge`] (nothing written),
    /// [`Error::QueueFull`], [`Error::Poisoned`], [`Error::Closed`], [`Error::Io`].
    pub fn publish(&self, payload: &[u8]) -> Result<MessageId> {
        self.publish_with(payload, &PublishOptions::new())
    }

    /// Publishes one message with a time to live and/or a delay.
    pub fn publish_with(&self, payload: &[u8], options: &PublishOptions) -> Result<MessageId> {
        self.store.publish_many(self.id, &[payload], options)
    }

    /// Publishes several messages atomically: after a crash either all of them exist or none
    /// does. They get consecutive ids, returned in order. The batch must fit in one segment
    /// ([`Error::TooLarge`] otherwise, with nothing written).
    pub fn publish_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Vec<MessageId>> {
        self.publish_batch_with(payloads, &PublishOptions::new())
    }

    /// Publishes several messages atomically, all with the same options.
    pub fn publish_batch_with<P: AsRef<[u8]>>(
        &self,
        payloads: &[P],
        options: &PublishOptions,
    ) -> Result<Vec<MessageId>> {
        let payloads: Vec<&[u8]> = payloads.iter().map(AsRef::as_ref).collect();
        let first = self.store.publish_many(self.id, &payloads, options)?;
        Ok((first.0..).take(payloads.len()).map(MessageId).collect())
    }

    /// Takes the next ready message if there is one, without blocking.
    ///
    /// Order: messages that were delivered before and came back (requeued, lease expired,
    /// or out with a consumer at a crash) first, oldest id first; then never-delivered
    /// messages in publish order. Expired messages are never delivered. While receivers are
    /// blocked waiting on this queue, they are served first and this returns `None`.
    pub fn try_receive(&self) -> Result<Option<Delivery>> {
        self.store.receive_from(self.id, 0, Deadline::Now)
    }

    /// Takes the next ready message, blocking until one is published or comes back.
    /// Fails with [`Error::Closed`] if the store is closed meanwhile.
    pub fn receive(&self) -> Result<Delivery> {
        self.store
            .receive_from(self.id, 0, Deadline::Never)?
            .ok_or(Error::Closed)
    }

    /// Takes the next ready message, waiting at most `timeout`; `Ok(None)` on timeout.
    pub fn receive_timeout(&self, timeout: Duration) -> Result<Option<Delivery>> {
        self.store.receive_from(self.id, 0, deadline(timeout))
    }

    /// Acknowledges a message delivered through a `Queue` handle of this queue.
    ///
    /// Errors: [`Error::UnknownMessage`], [`Error::AlreadySettled`], [`Error::NotDelivered`],
    /// [`Error::WrongQueue`] (another queue's message), [`Error::WrongConsumer`] (a
    /// [`Consumer`] holds it: settle it there).
    pub fn ack(&self, id: MessageId) -> Result<()> {
        self.store.settle(&[id], self.via(), Action::Ack)
    }

    /// Rolls back a message delivered through a `Queue` handle of this queue: with
    /// `requeue` it waits again, ahead of never-delivered messages, and its next delivery
    /// has `delivery_count + 1` (or it is dead-lettered once it reached the queue's
    /// `max_deliveries`); without, it is rejected (dead-lettered, or dropped without a
    /// dead-letter queue). Errors as for [`Queue::ack`].
    pub fn nack(&self, id: MessageId, requeue: bool) -> Result<()> {
        let action = if requeue {
            Action::Requeue { delay_ms: 0 }
        } else {
            Action::Reject
        };
        self.store.settle(&[id], self.via(), action)
    }

    /// Requeues a delivered message that must not be delivered again before `delay` has
    /// passed (retry with backoff). The delay survives a crash.
    pub fn requeue_after(&self, id: MessageId, delay: Duration) -> Result<()> {
        self.store.settle(&[id], self.via(), requeue_after(delay)?)
    }

    /// Renews the lease of a delivery: it now runs out `by` from now (also for queues
    /// without an ack timeout, which then gives it one).
    pub fn extend(&self, id: MessageId, by: Duration) -> Result<()> {
        self.store.extend(id, self.via(), by)
    }

    /// A consumer of this queue with its own prefetch limit and deliveries.
    pub fn consumer(&self, options: ConsumerOptions) -> Result<Consumer> {
        let prefetch = match options.prefetch {
            Some(0) => return Err(Error::InvalidOptions("prefetch must be at least 1".into())),
            Some(n) => n,
            None => 0,
        };
        let id = self.store.register_consumer(self.id, prefetch)?;
        Ok(Consumer {
            queue: self.clone(),
            id,
        })
    }

    /// This queue's counters. Due timers fire first.
    #[must_use]
    pub fn stats(&self) -> QueueStats {
        let mut state = lock(&self.store.inner.state);
        let now = self.store.now();
        let _ = self.store.fire_timers(&mut state, self.id, now);
        state
            .queue(self.id)
            .map(queue_stats)
            .unwrap_or_else(|| QueueStats {
                name: Arc::clone(&self.name),
                ready: 0,
                delayed: 0,
                bytes: 0,
                unacked: 0,
                published: 0,
                acked: 0,
                rejected: 0,
                expired: 0,
                dead_lettered: 0,
                dropped: 0,
            })
    }
}

/// A consumer of one queue: it holds its own deliveries, at most `prefetch` of them unsettled
/// at a time, and settles them itself. `Send + Sync`; not `Clone` (it owns its registration).
///
/// Dropping a consumer, or [`Consumer::close`], returns its unsettled deliveries to the
/// queue, redelivered, as AMQP does when a channel closes.
///
/// ```
/// use walq::{ConsumerOptions, Store, StoreOptions};
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), StoreOptions::new())?;
/// let jobs = store.declare_queue("jobs")?;
/// jobs.publish_batch(&[b"a", b"b", b"c"])?;
///
/// let worker = jobs.consumer(ConsumerOptions::new().prefetch(2))?;
/// let first = worker.try_receive()?.expect("ready");
/// let second = worker.try_receive()?.expect("ready");
/// assert!(worker.try_receive()?.is_none(), "prefetch limit reached");
/// worker.ack_multiple(second.id)?; // settles both
/// assert!(worker.try_receive()?.is_some());
/// # let _ = first;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Consumer {
    queue: Queue,
    id: u64,
}

impl Consumer {
    fn via(&self) -> Via {
        Via {
            queue: Some(self.queue.id),
            consumer: Some(self.id),
        }
    }

    /// The queue this consumer reads.
    #[must_use]
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Takes the next ready message without blocking; `None` if there is none, or if this
    /// consumer already holds `prefetch` unsettled deliveries.
    pub fn try_receive(&self) -> Result<Option<Delivery>> {
        self.queue
            .store
            .receive_from(self.queue.id, self.id, Deadline::Now)
    }

    /// Takes the next ready message, blocking while there is none or while the prefetch
    /// limit is reached. Blocked consumers are served in the order they started waiting.
    pub fn receive(&self) -> Result<Delivery> {
        self.queue
            .store
            .receive_from(self.queue.id, self.id, Deadline::Never)?
            .ok_or(Error::Closed)
    }

    /// Like [`Consumer::receive`], waiting at most `timeout`; `Ok(None)` on timeout.
    pub fn receive_timeout(&self, timeout: Duration) -> Result<Option<Delivery>> {
        self.queue
            .store
            .receive_from(self.queue.id, self.id, deadline(timeout))
    }

    /// Acknowledges one of this consumer's deliveries ([`Error::WrongConsumer`] for others).
    pub fn ack(&self, id: MessageId) -> Result<()> {
        self.queue.store.settle(&[id], self.via(), Action::Ack)
    }

    /// Rolls back one of this consumer's deliveries; see [`Queue::nack`].
    pub fn nack(&self, id: MessageId, requeue: bool) -> Result<()> {
        let action = if requeue {
            Action::Requeue { delay_ms: 0 }
        } else {
            Action::Reject
        };
        self.queue.store.settle(&[id], self.via(), action)
    }

    /// Requeues one of this consumer's deliveries, not to be delivered before `delay`.
    pub fn requeue_after(&self, id: MessageId, delay: Duration) -> Result<()> {
        self.queue
            .store
            .settle(&[id], self.via(), requeue_after(delay)?)
    }

    /// Acknowledges every delivery this consumer holds with an id up to `up_to` (AMQP's
    /// `basic.ack` with `multiple`), in one atomic record group. Returns how many.
    pub fn ack_multiple(&self, up_to: MessageId) -> Result<usize> {
        let ids = self.queue.store.outstanding_up_to(self.id, up_to);
        self.queue.store.settle(&ids, self.via(), Action::Ack)?;
        Ok(ids.len())
    }

    /// Rolls back every delivery this consumer holds with an id up to `up_to`, in one atomic
    /// record group. Returns how many.
    pub fn nack_multiple(&self, up_to: MessageId, requeue: bool) -> Result<usize> {
        let ids = self.queue.store.outstanding_up_to(self.id, up_to);
        let action = if requeue {
            Action::Requeue { delay_ms: 0 }
        } else {
            Action::Reject
        };
        self.queue.store.settle(&ids, self.via(), action)?;
        Ok(ids.len())
    }

    /// Renews the lease of one of this consumer's deliveries; see [`Queue::extend`].
    pub fn extend(&self, id: MessageId, by: Duration) -> Result<()> {
        self.queue.store.extend(id, self.via(), by)
    }

    /// How many deliveries this consumer holds unsettled.
    #[must_use]
    pub fn unacked(&self) -> usize {
        let state = lock(&self.queue.store.inner.state);
        state
            .consumers
            .get(&self.id)
            .map_or(0, |c| c.outstanding.len())
    }

    /// Closes the consumer, returning its unsettled deliveries to the queue. Dropping it does
    /// the same but cannot report an error.
    pub fn close(mut self) -> Result<()> {
        let id = std::mem::take(&mut self.id);
        self.queue.store.release_consumer(id)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.id != 0 {
            let _ = self.queue.store.release_consumer(self.id);
        }
    }
}
