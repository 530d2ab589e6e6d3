//! The public store: named queues sharing one log.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::delivery::{time_from_ms, Delivery, QueueStats, StoreStats};
use crate::error::{Error, Result};
use crate::format::{
    AckBody, DeliverBody, Disposition, PublishBody, PublishHeader, QueueDeclareBody, RecordKind,
    RollbackBody, MAX_QUEUE_NAME_LEN, PUBLISH_HEADER_LEN,
};
use crate::ids::{MessageId, Position, QueueId};
use crate::io::{DiskVfs, Vfs};
use crate::log::{Log, Record, RecoveryReport};
use crate::options::StoreOptions;
use crate::queue::{Lookup, MsgState, QueueState, Replayer, State};

/// A durable store of named queues, all sharing one segmented log in one directory.
///
/// `Store` is a cheap handle (`Clone` is an `Arc` clone) that is `Send + Sync`: share it
/// between producer and consumer threads. The store stays open until the last handle (and
/// every [`Queue`] made from it) is dropped, or until [`Store::close`].
///
/// ```
/// use walq::{Store, StoreOptions};
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), StoreOptions::new())?;
/// let jobs = store.declare_queue("jobs")?;
/// jobs.publish(b"resize image 42")?;
///
/// let delivery = jobs.try_receive()?.expect("a message is ready");
/// assert_eq!(delivery.payload, b"resize image 42");
/// jobs.ack(delivery.id)?;
/// store.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    log: Log,
    opts: StoreOptions,
    state: Mutex<State>,
    /// Serialises id assignment with the order of publish records in the log.
    publish_lock: Mutex<()>,
    report: RecoveryReport,
}

/// A handle on one queue of a [`Store`]. Cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Queue {
    store: Store,
    id: QueueId,
    name: Arc<str>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store {
    /// Opens the store in `dir` on the real file system, creating the directory if needed,
    /// and recovers its queues from the log.
    ///
    /// Takes an exclusive lock on the directory: a second open, from this process or another,
    /// fails with [`Error::Locked`] until this store is dropped. After recovery every
    /// published, unacknowledged message is ready again; messages that were delivered and
    /// not settled come back with `redelivered = true`.
    ///
    /// Cost: one sequential read of the log. Errors: [`Error::Corruption`] (with segment and
    /// offset) for damaged records that were durable, [`Error::UnsupportedVersion`],
    /// [`Error::ForeignFile`], [`Error::InvalidOptions`], [`Error::Io`].
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        Store::open_with_vfs(Arc::new(DiskVfs), dir.as_ref(), options)
    }

    /// Like [`Store::open`], on any file system implementation (tests use
    /// [`MemVfs`](crate::io::MemVfs) or a fault-injecting one).
    pub fn open_with_vfs(vfs: Arc<dyn Vfs>, dir: &Path, options: StoreOptions) -> Result<Store> {
        options.validate()?;
        let mut replayer = Replayer::default();
        let (log, report) = Log::open(vfs, dir, options.log.clone(), &mut |rec| {
            replayer.apply(rec)
        })?;
        let state = replayer.finish();
        let inner = Inner {
            log,
            opts: options,
            state: Mutex::new(state),
            publish_lock: Mutex::new(()),
            report,
        };
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// What recovery found and did when this store was opened.
    #[must_use]
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// Returns the queue called `name`, declaring it (durably, under every fsync policy
    /// whose publishes would be durable) if it does not exist yet.
    ///
    /// Names are 1 to 255 bytes of UTF-8.
    pub fn declare_queue(&self, name: &str) -> Result<Queue> {
        self.check_open()?;
        if let Ok(queue) = self.queue(name) {
            return Ok(queue);
        }
        validate_queue_name(name)?;
        let _order = lock(&self.inner.publish_lock);
        // Re-check under the publish lock: another thread may have declared it meanwhile.
        if let Ok(queue) = self.queue(name) {
            return Ok(queue);
        }
        self.check_open()?;
        let id = QueueId(lock(&self.inner.state).queues.len() as u32);
        let body = QueueDeclareBody {
            queue_id: id.0,
            name: name.to_owned(),
        }
        .encode();
        let appended = self.inner.log.write(&[Record {
            kind: RecordKind::QueueDeclare.code(),
            body: &[&body],
        }])?;
        let name: Arc<str> = name.into();
        {
            let mut state = lock(&self.inner.state);
            state.by_name.insert(Arc::clone(&name), id);
            state.queues.push(QueueState::new(Arc::clone(&name)));
        }
        drop(_order);
        self.inner.log.commit(&appended)?;
        Ok(Queue {
            store: self.clone(),
            id,
            name,
        })
    }

    /// Returns the existing queue called `name`, or [`Error::QueueNotFound`].
    pub fn queue(&self, name: &str) -> Result<Queue> {
        let state = lock(&self.inner.state);
        let id = *state
            .by_name
            .get(name)
            .ok_or_else(|| Error::QueueNotFound {
                name: name.to_owned(),
            })?;
        let name = state
            .queue(id)
            .map(|q| Arc::clone(&q.name))
            .ok_or_else(|| Error::QueueNotFound {
                name: name.to_owned(),
            })?;
        Ok(Queue {
            store: self.clone(),
            id,
            name,
        })
    }

    /// The names of all declared queues, in declaration order.
    #[must_use]
    pub fn queue_names(&self) -> Vec<Arc<str>> {
        lock(&self.inner.state)
            .queues
            .iter()
            .map(|q| Arc::clone(&q.name))
            .collect()
    }

    /// Acknowledges a delivered message of any queue: it will never be delivered again.
    ///
    /// Under [`FsyncPolicy::Always`](crate::FsyncPolicy::Always) the ack is durable when this
    /// returns. Errors: [`Error::UnknownMessage`], [`Error::AlreadySettled`] (double ack),
    /// [`Error::NotDelivered`] (the message is waiting in its queue).
    pub fn ack(&self, id: MessageId) -> Result<()> {
        self.settle(id, None, Settle::Ack)
    }

    /// Rolls back a delivered message of any queue. With `requeue` it becomes ready again,
    /// ahead of never-delivered messages, and its next delivery has `delivery_count + 1`;
    /// without, it is rejected and dropped. Durable on return like [`Store::ack`].
    pub fn nack(&self, id: MessageId, requeue: bool) -> Result<()> {
        self.settle(
            id,
            None,
            if requeue {
                Settle::Requeue
            } else {
                Settle::Reject
            },
        )
    }

    /// Makes everything written so far durable (`fdatasync`), whatever the fsync policy.
    ///
    /// There is no separate `flush`: every call already hands its record to the operating
    /// system before returning, so there is never data buffered inside walq.
    pub fn sync(&self) -> Result<()> {
        self.check_open()?;
        self.inner.log.sync()
    }

    /// Counters of the store and each queue.
    #[must_use]
    pub fn stats(&self) -> StoreStats {
        let segments = self.inner.log.segments();
        let state = lock(&self.inner.state);
        let queues: Vec<QueueStats> = state.queues.iter().map(queue_stats).collect();
        StoreStats {
            ready: queues.iter().map(|q| q.ready).sum(),
            unacked: queues.iter().map(|q| q.unacked).sum(),
            queues,
            next_message_id: state.table.next_id(),
            acked: state.acked_total,
            rejected: state.rejected_total,
            segments: segments.len(),
            log_bytes: segments.iter().map(|s| s.data_end).sum(),
            bytes_on_disk: segments.iter().map(|s| s.file_len).sum(),
            tracked_messages: state.table.len(),
        }
    }

    /// Closes the store cleanly: syncs, writes a commit marker, and makes every later call
    /// on any handle fail with [`Error::Closed`] (blocked receivers wake up with it).
    ///
    /// Releases the directory lock, so another store may open the directory at once, even
    /// while handles on this one still exist.
    ///
    /// Dropping the last handle without `close` is safe too (nothing is lost that the fsync
    /// policy promised); what `close` adds is the commit marker, without which the next open
    /// cannot tell damage to the last records from a torn write and truncates them. Either
    /// way, messages that were out with consumers come back with `redelivered = true`.
    pub fn close(&self) -> Result<()> {
        {
            let mut state = lock(&self.inner.state);
            if state.closed {
                return Ok(());
            }
            state.closed = true;
            for q in &state.queues {
                q.available.notify_all();
            }
        }
        let _order = lock(&self.inner.publish_lock);
        self.inner.log.close()
    }

    /// The directory of the store.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.inner.log.dir()
    }

    fn check_open(&self) -> Result<()> {
        if lock(&self.inner.state).closed {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn publish_many(&self, queue: QueueId, payloads: &[&[u8]]) -> Result<Vec<MessageId>> {
        if payloads.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let max = self.inner.opts.effective_max_message_size();
        for payload in payloads {
            if payload.len() as u64 > max {
                return Err(Error::TooLarge {
                    what: "message",
                    len: payload.len() as u64,
                    max,
                });
            }
        }
        let published_ms = crate::clock::now_ms();
        let order = lock(&self.inner.publish_lock);
        self.check_open()?;
        let first = lock(&self.inner.state).table.next_id();
        let headers: Vec<[u8; PUBLISH_HEADER_LEN]> = (0..payloads.len())
            .map(|i| {
                PublishHeader {
                    id: first + i as u64,
                    queue_id: queue.0,
                    published_ms,
                    expires_ms: 0,
                }
                .encode()
            })
            .collect();
        let parts: Vec<[&[u8]; 2]> = headers
            .iter()
            .zip(payloads)
            .map(|(h, p)| [&h[..], *p])
            .collect();
        let records: Vec<Record<'_>> = parts
            .iter()
            .map(|body| Record {
                kind: RecordKind::Publish.code(),
                body,
            })
            .collect();
        let appended = self.inner.log.write(&records)?;
        {
            let mut state = lock(&self.inner.state);
            for &pos in &appended.positions {
                state.table.push(pos, queue, MsgState::Pending);
            }
        }
        drop(order);
        self.inner.log.commit(&appended)?;
        let ids: Vec<MessageId> = (0..payloads.len() as u64)
            .map(|i| MessageId(first + i))
            .collect();
        let mut state = lock(&self.inner.state);
        for &id in &ids {
            if let Some(slot) = state.table.get_mut(id) {
                slot.state = MsgState::Ready;
            }
        }
        if let Some(q) = state.queue_mut(queue) {
            for &id in &ids {
                q.insert_ready(id);
            }
            q.published += ids.len() as u64;
            if ids.len() == 1 {
                q.available.notify_one();
            } else {
                q.available.notify_all();
            }
        }
        Ok(ids)
    }

    fn receive_from(&self, queue: QueueId, deadline: Deadline) -> Result<Option<Delivery>> {
        // A poisoned store could not record the ack, so it hands nothing out either.
        self.inner.log.check_writable()?;
        let mut state = lock(&self.inner.state);
        let (id, count, pos, name) = loop {
            if state.closed {
                return Err(Error::Closed);
            }
            let q = state.queue_mut(queue).ok_or(Error::Closed)?;
            if let Some(id) = q.pop_next() {
                q.unacked += 1;
                let name = Arc::clone(&q.name);
                let more = q.ready_len() > 0;
                let available = Arc::clone(&q.available);
                let count = {
                    let c = state.deliveries.entry(id).or_insert(0);
                    *c = c.saturating_add(1);
                    *c
                };
                let Some(slot) = state.table.get_mut(id) else {
                    return Err(Error::UnknownMessage { id });
                };
                slot.state = MsgState::InFlight;
                let pos = slot.position();
                if more {
                    // Chain the wake-up in case several receivers were waiting.
                    available.notify_one();
                }
                break (id, count, pos, name);
            }
            let available = Arc::clone(&q.available);
            state = match deadline {
                Deadline::Now => return Ok(None),
                Deadline::Never => available
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Deadline::At(at) => {
                    let now = Instant::now();
                    if now >= at {
                        return Ok(None);
                    }
                    available
                        .wait_timeout(state, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        };
        drop(state);
        match self.deliver(id, count, pos, name) {
            Ok(delivery) => Ok(Some(delivery)),
            Err(err) => {
                let mut state = lock(&self.inner.state);
                if let Some(slot) = state.table.get_mut(id) {
                    slot.state = MsgState::Ready;
                }
                // Undo this delivery's count; keep the message's earlier deliveries.
                let before = match state.deliveries.get_mut(&id) {
                    Some(c) if *c > 1 => {
                        *c -= 1;
                        true
                    }
                    _ => {
                        state.deliveries.remove(&id);
                        false
                    }
                };
                if let Some(q) = state.queue_mut(queue) {
                    q.unacked -= 1;
                    q.push_back_undelivered(id, before);
                    q.available.notify_one();
                }
                Err(err)
            }
        }
    }

    /// Reads the payload and, if enabled, writes the (unsynced) delivery record.
    fn deliver(
        &self,
        id: MessageId,
        count: u32,
        pos: Position,
        queue: Arc<str>,
    ) -> Result<Delivery> {
        let record = self.inner.log.read(pos)?;
        let publish = PublishBody::decode(&record.body)
            .map_err(|e| Error::corruption(pos.segment, pos.offset, e))?;
        if record.kind != RecordKind::Publish.code() || publish.header.id != id.0 {
            return Err(Error::corruption(
                pos.segment,
                pos.offset,
                format!("expected the publish record of message {id}"),
            ));
        }
        let published_at = time_from_ms(publish.header.published_ms);
        if self.inner.opts.persist_deliveries {
            let body = DeliverBody {
                id: id.0,
                delivery_count: count,
            }
            .encode();
            self.inner.log.write(&[Record {
                kind: RecordKind::Deliver.code(),
                body: &[&body],
            }])?;
        }
        let mut payload = record.body;
        payload.drain(..PUBLISH_HEADER_LEN);
        Ok(Delivery {
            id,
            queue,
            payload,
            redelivered: count > 1,
            delivery_count: count,
            published_at,
        })
    }

    fn settle(&self, id: MessageId, queue: Option<&Queue>, how: Settle) -> Result<()> {
        let (owner, count) = {
            let mut state = lock(&self.inner.state);
            if state.closed {
                return Err(Error::Closed);
            }
            let owner = match state.table.lookup(id) {
                Lookup::Settled => return Err(Error::AlreadySettled { id }),
                Lookup::Unknown => return Err(Error::UnknownMessage { id }),
                Lookup::Live(slot) => {
                    match slot.state {
                        MsgState::InFlight => {}
                        MsgState::Acked | MsgState::Dropped | MsgState::Settling => {
                            return Err(Error::AlreadySettled { id })
                        }
                        MsgState::Ready | MsgState::Pending => {
                            return Err(Error::NotDelivered { id })
                        }
                    }
                    slot.queue
                }
            };
            if let Some(queue) = queue {
                if owner != queue.id {
                    let actual = state
                        .queue(owner)
                        .map_or_else(|| "?".into(), |q| q.name.to_string());
                    return Err(Error::WrongQueue {
                        id,
                        expected: queue.name.to_string(),
                        actual,
                    });
                }
            }
            if let Some(slot) = state.table.get_mut(id) {
                slot.state = MsgState::Settling;
            }
            (owner, state.deliveries.get(&id).copied().unwrap_or(1))
        };

        let result = match how {
            Settle::Ack => {
                let body = AckBody {
                    ranges: vec![(id.0, id.0)],
                }
                .encode();
                self.inner.log.append(&[Record {
                    kind: RecordKind::Ack.code(),
                    body: &[&body],
                }])
            }
            Settle::Requeue | Settle::Reject => {
                let disposition = if how == Settle::Requeue {
                    Disposition::Requeue
                } else {
                    Disposition::Drop
                };
                let body = RollbackBody {
                    id: id.0,
                    delivery_count: count,
                    disposition,
                    not_before_ms: 0,
                }
                .encode();
                self.inner.log.append(&[Record {
                    kind: RecordKind::Rollback.code(),
                    body: &[&body],
                }])
            }
        };

        let mut state = lock(&self.inner.state);
        let new_state = match (&result, how) {
            (Err(_), _) => MsgState::InFlight,
            (Ok(_), Settle::Ack) => MsgState::Acked,
            (Ok(_), Settle::Requeue) => MsgState::Ready,
            (Ok(_), Settle::Reject) => MsgState::Dropped,
        };
        if let Some(slot) = state.table.get_mut(id) {
            slot.state = new_state;
        }
        result?;
        if new_state.is_settled() {
            state.deliveries.remove(&id);
            if how == Settle::Ack {
                state.acked_total += 1;
            } else {
                state.rejected_total += 1;
            }
        }
        if let Some(q) = state.queue_mut(owner) {
            q.unacked -= 1;
            match how {
                Settle::Ack => q.acked += 1,
                Settle::Reject => q.rejected += 1,
                Settle::Requeue => {
                    q.requeued.insert(id);
                    q.available.notify_one();
                }
            }
        }
        state.table.prune();
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Requeue,
    Reject,
}

#[derive(Debug, Clone, Copy)]
enum Deadline {
    Now,
    Never,
    At(Instant),
}

fn queue_stats(q: &QueueState) -> QueueStats {
    QueueStats {
        name: Arc::clone(&q.name),
        ready: q.ready_len(),
        unacked: q.unacked,
        published: q.published,
        acked: q.acked,
        rejected: q.rejected,
    }
}

fn validate_queue_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_QUEUE_NAME_LEN {
        "it is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(Error::InvalidQueueName {
        name: name.chars().take(64).collect(),
        reason,
    })
}

impl Queue {
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
    /// survives a process crash) and becomes durable with the next sync. Concurrent publishers
    /// share fsyncs. Errors: [`Error::TooLarge`] (nothing written), [`Error::Poisoned`],
    /// [`Error::Closed`], [`Error::Io`].
    pub fn publish(&self, payload: &[u8]) -> Result<MessageId> {
        let ids = self.store.publish_many(self.id, &[payload])?;
        ids.first().copied().ok_or(Error::EmptyBatch)
    }

    /// Publishes several messages atomically: after a crash either all of them exist or none
    /// does. They get consecutive ids, returned in order. The batch must fit in one segment
    /// ([`Error::TooLarge`] otherwise, with nothing written).
    pub fn publish_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Vec<MessageId>> {
        let payloads: Vec<&[u8]> = payloads.iter().map(AsRef::as_ref).collect();
        self.store.publish_many(self.id, &payloads)
    }

    /// Takes the next ready message if there is one, without blocking.
    ///
    /// Order: messages that were delivered before and came back (requeued, or out with a
    /// consumer at a crash) first, oldest id first; then never-delivered messages in publish
    /// order.
    pub fn try_receive(&self) -> Result<Option<Delivery>> {
        self.store.receive_from(self.id, Deadline::Now)
    }

    /// Takes the next ready message, blocking until one is published or requeued.
    /// Fails with [`Error::Closed`] if the store is closed meanwhile.
    pub fn receive(&self) -> Result<Delivery> {
        self.store
            .receive_from(self.id, Deadline::Never)?
            .ok_or(Error::Closed)
    }

    /// Takes the next ready message, waiting at most `timeout`; `Ok(None)` on timeout.
    pub fn receive_timeout(&self, timeout: Duration) -> Result<Option<Delivery>> {
        let deadline = Instant::now()
            .checked_add(timeout)
            .map_or(Deadline::Never, Deadline::At);
        self.store.receive_from(self.id, deadline)
    }

    /// Acknowledges a message delivered from this queue. See [`Store::ack`]; additionally
    /// fails with [`Error::WrongQueue`] if the message belongs to another queue.
    pub fn ack(&self, id: MessageId) -> Result<()> {
        self.store.settle(id, Some(self), Settle::Ack)
    }

    /// Rolls back a message delivered from this queue. See [`Store::nack`]; additionally
    /// fails with [`Error::WrongQueue`] if the message belongs to another queue.
    pub fn nack(&self, id: MessageId, requeue: bool) -> Result<()> {
        self.store.settle(
            id,
            Some(self),
            if requeue {
                Settle::Requeue
            } else {
                Settle::Reject
            },
        )
    }

    /// This queue's counters.
    #[must_use]
    pub fn stats(&self) -> QueueStats {
        let state = lock(&self.store.inner.state);
        state
            .queue(self.id)
            .map(queue_stats)
            .unwrap_or_else(|| QueueStats {
                name: Arc::clone(&self.name),
                ready: 0,
                unacked: 0,
                published: 0,
                acked: 0,
                rejected: 0,
            })
    }
}
