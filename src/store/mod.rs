//! The public store: named queues sharing one log.
//!
//! `mod.rs` holds the store itself (open, declare, close, stats, redrive); the operations
//! live beside it: `publish.rs`, `receive.rs`, `settle.rs`, and the handles `Queue` and
//! `Consumer` in `handles.rs`.

mod browse;
mod checkpoints;
mod compact;
mod handles;
mod publish;
mod receive;
mod settle;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

pub use browse::PeekedMessage;
pub use compact::{CompactionReport, SegmentStats};
pub use handles::{Consumer, Queue};

use crate::delivery::{QueueStats, StoreStats};
use crate::error::{Error, Result};
use crate::format::{QueueDeclareBody, RecordKind, MAX_QUEUE_NAME_LEN};
use crate::ids::QueueId;
use crate::io::{DiskVfs, Vfs};
use crate::log::{Appended, Log, Record, RecoveryReport};
use crate::options::StoreOptions;
use crate::queue::{OwnedRecord, QueueState, Replayer, State};
use crate::queue_options::QueueOptions;

/// A durable store of named queues, all sharing one segmented log in one directory.
///
/// `Store` is a cheap handle (`Clone` is an `Arc` clone) that is `Send + Sync`: share it
/// between producer and consumer threads. The store stays open until the last handle (and
/// every [`Queue`] and [`Consumer`] made from it) is dropped, or until [`Store::close`].
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
    vfs: Arc<dyn Vfs>,
    opts: StoreOptions,
    state: Mutex<State>,
    /// Held shared by every operation whose state change is applied after its records are
    /// written (publish, settle, declare), from before the write until the change is
    /// applied; held exclusively while a checkpoint copies the state, which therefore
    /// matches the log up to its end exactly. Taken before every other lock.
    gate: RwLock<()>,
    /// Serialises id assignment and queue declarations with the order of their records in
    /// the log. Taken before `state` when both are needed.
    publish_lock: Mutex<()>,
    /// One compaction at a time.
    compacting: Mutex<()>,
    compaction: Mutex<compact::Compaction>,
    background: Arc<compact::Background>,
    report: RecoveryReport,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.background.stop();
    }
}

/// Takes the gate shared (see `Inner::gate`).
fn gate(inner: &Inner) -> std::sync::RwLockReadGuard<'_, ()> {
    inner.gate.read().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store {
    /// Opens the store in `dir` on the real file system, creating the directory if needed,
    /// and recovers its queues from the log.
    ///
    /// Takes an exclusive lock on the directory: a second open, from this process or another,
    /// fails with [`Error::Locked`] until this store is closed or dropped. After recovery
    /// every published, unsettled message is waiting again; messages that were delivered and
    /// not settled come back with `redelivered = true`. Timers that ran out while the store
    /// was closed (TTLs, delays) fire now.
    ///
    /// Cost: one sequential read of the log. Errors: [`Error::Corruption`] (with segment and
    /// offset) for damaged records that were durable, [`Error::UnsupportedVersion`],
    /// [`Error::ForeignFile`], [`Error::InvalidOptions`], [`Error::Io`].
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        Store::open_with_vfs(Arc::new(DiskVfs), dir.as_ref(), options)
    }

    /// Like [`Store::open`], on any file system implementation (tests use
    /// [`MemVfs`](crate::io::MemVfs) or [`SimVfs`](crate::io::SimVfs)).
    pub fn open_with_vfs(vfs: Arc<dyn Vfs>, dir: &Path, options: StoreOptions) -> Result<Store> {
        options.validate()?;
        let loaded = checkpoints::load(vfs.as_ref(), dir)?;
        let mut candidates: Vec<checkpoints::LoadedCheckpoint> =
            loaded.newest.into_iter().chain(loaded.older_full).collect();
        if candidates.is_empty() && !loaded.rejected.is_empty() {
            refuse_full_replay(vfs.as_ref(), dir, &loaded.rejected)?;
        }
        let mut first_error = None;
        let mut opened = None;
        let mut used = None;
        for (i, cp) in candidates.iter().enumerate() {
            match open_log(&vfs, dir, &options, Some(cp)) {
                Ok(done) => {
                    opened = Some(done);
                    used = Some(i);
                    break;
                }
                Err(err @ Error::Corruption { .. }) => {
                    first_error.get_or_insert(err);
                }
                Err(err) => return Err(first_error.unwrap_or(err)),
            }
        }
        let (log, mut report, state) = match (opened, first_error) {
            (Some(done), _) => done,
            (None, Some(err)) => return Err(err),
            (None, None) => open_log(&vfs, dir, &options, None)?,
        };
        report.rejected_checkpoints = loaded.rejected;
        let mut compaction = compact::Compaction {
            next_sequence: loaded.max_sequence + 1,
            ..Default::default()
        };
        if let Some(i) = used {
            let cp = candidates.swap_remove(i);
            report.checkpoint = Some(cp.head.sequence);
            compaction.newest = Some(cp.kept);
            // The one before it stays the fallback, unless it is the one that failed.
            if i == 0 {
                compaction.older = candidates.into_iter().next().map(|c| c.kept);
            }
        }
        let background = Arc::new(compact::Background::default());
        let inner = Inner {
            log,
            vfs,
            opts: options,
            state: Mutex::new(state),
            gate: RwLock::new(()),
            publish_lock: Mutex::new(()),
            compacting: Mutex::new(()),
            compaction: Mutex::new(compaction),
            background,
            report,
        };
        let store = Store {
            inner: Arc::new(inner),
        };
        {
            let mut state = lock(&store.inner.state);
            let now = store.now();
            let (records, woken) = state.enforce_delivery_limits(now);
            store.write_owned(&records)?;
            store.after_change(&mut state, woken, now)?;
            for q in 0..state.queues.len() {
                store.fire_timers(&mut state, QueueId(q as u32), now)?;
            }
        }
        if let Some(every) = store.inner.opts.compaction.background {
            compact::spawn_background(
                Arc::downgrade(&store.inner),
                Arc::clone(&store.inner.background),
                every,
            )?;
        }
        Ok(store)
    }

    /// What recovery found and did when this store was opened.
    #[must_use]
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// Returns the queue called `name`, declaring it with default options (no limits) if it
    /// does not exist yet. An existing queue is returned as it is, whatever its options.
    ///
    /// Names are 1 to 255 bytes of UTF-8. The declaration is durable when the store's fsync
    /// policy makes publishes durable.
    pub fn declare_queue(&self, name: &str) -> Result<Queue> {
        self.check_open()?;
        if let Ok(queue) = self.queue(name) {
            return Ok(queue);
        }
        self.declare_queue_with(name, QueueOptions::new())
    }

    /// Returns the queue called `name`, declaring it with `options` if it does not exist.
    /// If it exists with other options, fails with [`Error::QueueConfigMismatch`] (options
    /// are fixed at declaration, as in AMQP). A dead-letter queue named in the options is
    /// declared with default options if it does not exist.
    ///
    /// Errors also: [`Error::DeadLetterCycle`], [`Error::InvalidDuration`],
    /// [`Error::InvalidOptions`], [`Error::InvalidQueueName`].
    pub fn declare_queue_with(&self, name: &str, options: QueueOptions) -> Result<Queue> {
        self.check_open()?;
        validate_queue_name(name)?;
        if options.dead_letter_queue.as_deref() == Some(name) {
            return Err(Error::DeadLetterCycle {
                queue: name.to_owned(),
            });
        }
        if let Some(dlq) = &options.dead_letter_queue {
            validate_queue_name(dlq)?;
        }
        options.to_settings(None)?;
        let _gate = gate(&self.inner);
        let order = lock(&self.inner.publish_lock);
        let mut pending = Vec::new();
        let queue = self.declare_locked(name, &options, &mut pending);
        drop(order);
        // Whatever was declared (a dead-letter queue, even if a later step failed) is
        // committed like any other write.
        if let Some(appended) = pending.last() {
            self.inner.log.commit(appended)?;
        }
        queue
    }

    /// Declares `name` (and its dead-letter queue first) with the publish lock held; the
    /// written groups are collected in `pending` for the caller to commit.
    fn declare_locked(
        &self,
        name: &str,
        options: &QueueOptions,
        pending: &mut Vec<Appended>,
    ) -> Result<Queue> {
        if let Ok(existing) = self.queue(name) {
            // Compare without declaring anything: an existing queue whose dead-letter queue
            // does not exist cannot have been declared with it.
            let dlq = match &options.dead_letter_queue {
                Some(dlq) => self.queue(dlq).ok().map(|q| q.id.0),
                None => None,
            };
            let same = options.dead_letter_queue.is_none() || dlq.is_some();
            let settings = options.to_settings(dlq)?;
            let state = lock(&self.inner.state);
            return if same
                && state
                    .queue(existing.id)
                    .is_some_and(|q| q.settings == settings)
            {
                Ok(existing)
            } else {
                Err(Error::QueueConfigMismatch {
                    queue: name.to_owned(),
                })
            };
        }
        let dlq = match &options.dead_letter_queue {
            Some(dlq) => Some(match self.queue(dlq) {
                Ok(queue) => queue.id,
                Err(_) => self.declare_locked(dlq, &QueueOptions::new(), pending)?.id,
            }),
            None => None,
        };
        let settings = options.to_settings(dlq.map(|q| q.0))?;
        self.check_open()?;
        let id = QueueId(lock(&self.inner.state).queues.len() as u32);
        let body = QueueDeclareBody {
            queue_id: id.0,
            settings,
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
            state
                .queues
                .push(QueueState::new(Arc::clone(&name), settings));
        }
        pending.push(appended);
        Ok(Queue::new(self.clone(), id, name))
    }

    /// Returns the existing queue called `name`, or [`Error::QueueNotFound`].
    pub fn queue(&self, name: &str) -> Result<Queue> {
        let state = lock(&self.inner.state);
        let not_found = || Error::QueueNotFound {
            name: name.to_owned(),
        };
        let id = *state.by_name.get(name).ok_or_else(not_found)?;
        let name = state
            .queue(id)
            .map(|q| Arc::clone(&q.name))
            .ok_or_else(not_found)?;
        Ok(Queue::new(self.clone(), id, name))
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

    /// Acknowledges a delivered message of any queue, whichever consumer holds it (an
    /// operator's override): it will never be delivered again.
    ///
    /// Under [`FsyncPolicy::Always`](crate::FsyncPolicy::Always) the ack is durable when this
    /// returns. Errors: [`Error::UnknownMessage`], [`Error::AlreadySettled`] (double ack),
    /// [`Error::NotDelivered`] (the message is waiting in its queue).
    pub fn ack(&self, id: crate::MessageId) -> Result<()> {
        self.settle(&[id], settle::Via::ANY, settle::Action::Ack)
    }

    /// Rolls back a delivered message of any queue, whichever consumer holds it. With
    /// `requeue` it waits again, ahead of never-delivered messages (or is dead-lettered once
    /// it reached its queue's `max_deliveries`); without, it is rejected: dead-lettered, or
    /// dropped if the queue has no dead-letter queue. Durable on return like
    /// [`Store::ack`].
    pub fn nack(&self, id: crate::MessageId, requeue: bool) -> Result<()> {
        let action = if requeue {
            settle::Action::Requeue { delay_ms: 0 }
        } else {
            settle::Action::Reject
        };
        self.settle(&[id], settle::Via::ANY, action)
    }

    /// Moves every waiting message of the dead-letter queue `dlq` that was dead-lettered
    /// back to the queue it came from, as a fresh message (delivery count reset) that keeps
    /// its id. Messages published to `dlq` directly, and those out with consumers, stay.
    /// Returns how many moved; durable on return under `FsyncPolicy::Always`.
    pub fn redrive(&self, dlq: &str) -> Result<u64> {
        let queue = self.queue(dlq)?;
        let mut state = lock(&self.inner.state);
        if state.closed {
            return Err(Error::Closed);
        }
        let now = self.now();
        let (records, woken) = state.redrive(queue.id, now);
        let moved = records.len() as u64;
        let appended = self.write_owned(&records)?;
        self.after_change(&mut state, woken, now)?;
        drop(state);
        if let Some(appended) = appended {
            self.inner.log.commit(&appended)?;
        }
        Ok(moved)
    }

    /// Makes everything written so far durable (`fdatasync`), whatever the fsync policy.
    ///
    /// There is no separate `flush`: every call already hands its record to the operating
    /// system before returning, so there is never data buffered inside walq.
    pub fn sync(&self) -> Result<()> {
        self.check_open()?;
        self.inner.log.sync()
    }

    /// Counters of the store and each queue. Due timers fire first (best effort: if writing
    /// their records fails, the store is poisoned and the next operation reports it).
    #[must_use]
    pub fn stats(&self) -> StoreStats {
        let segments = self.inner.log.segments();
        let mut state = lock(&self.inner.state);
        let now = self.now();
        for q in 0..state.queues.len() {
            let _ = self.fire_timers(&mut state, QueueId(q as u32), now);
        }
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

    /// Closes the store cleanly: syncs, writes a commit marker, releases the directory lock
    /// and makes every later call on any handle fail with [`Error::Closed`] (blocked
    /// receivers wake up with it).
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
                q.wake_receivers();
            }
        }
        self.inner.background.stop();
        let _order = lock(&self.inner.publish_lock);
        self.inner.log.close()
    }

    /// The directory of the store.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.inner.log.dir()
    }

    fn now(&self) -> u64 {
        self.inner.opts.clock.now_ms()
    }

    fn check_open(&self) -> Result<()> {
        if lock(&self.inner.state).closed {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Writes records produced by a state change as one group, without waiting for
    /// durability (the caller commits if it must). Called with the state lock held, so the
    /// records land in the log in the order the changes were made.
    ///
    /// The records are independent of each other (each settles or moves one message), so
    /// they are written in as many groups as it takes to fit each in a segment; a mass
    /// expiry can produce more than one segment holds. Returns the last group written.
    fn write_owned(&self, records: &[OwnedRecord]) -> Result<Option<Appended>> {
        let max = self.inner.log.max_group_len();
        let mut last = None;
        let mut rest = records;
        while !rest.is_empty() {
            let mut size = 0u64;
            let take = rest
                .iter()
                .take_while(|r| {
                    size += crate::format::frame_len(r.body.len()) as u64;
                    size <= max
                })
                .count()
                .max(1);
            let (chunk, tail) = rest.split_at(take.min(rest.len()));
            rest = tail;
            let appended = with_log_records(chunk, |group| {
                self.inner.log.write_reporting(group, &mut |_, _| {})
            })?;
            last = Some(appended);
        }
        Ok(last)
    }

    /// Fires the due timers of queue `q` (see `State::run_timers`), writes what they changed
    /// and wakes receivers of every queue that gained ready messages.
    fn fire_timers(&self, state: &mut State, q: QueueId, now: u64) -> Result<()> {
        let (records, woken) = state.run_timers(q, now);
        if records.is_empty() && woken.is_empty() {
            return Ok(()); // nothing was due: the usual case
        }
        self.write_owned(&records)?;
        self.after_change(state, woken, now)
    }

    /// Finishes a state change that gave messages to the queues in `woken`: trims those
    /// over a drop-head limit (which can cascade into their dead-letter queues; dead-letter
    /// queues are always declared before the queues that use them, so this ends), writes
    /// the records, and wakes their receivers.
    ///
    /// The two lists of queues it needs are the state's reused `after_change_scratch`.
    fn after_change(
        &self,
        state: &mut State,
        woken: impl IntoIterator<Item = QueueId>,
        now: u64,
    ) -> Result<()> {
        let (mut pending, mut touched) = std::mem::take(&mut state.after_change_scratch);
        pending.clear();
        touched.clear();
        pending.extend(woken);
        let mut records = Vec::new();
        while let Some(q) = pending.pop() {
            if touched.contains(&q) {
                continue;
            }
            touched.push(q);
            let mut more = Vec::new();
            records.extend(state.trim(q, now, &mut more));
            pending.extend(more.into_iter().filter(|m| !touched.contains(m)));
        }
        let written = self.write_owned(&records);
        wake(state, &touched);
        state.after_change_scratch = (pending, touched);
        written.map(drop)
    }
}

/// Calls `f` with `records` as log records. A single record (the usual case) needs no
/// allocation.
fn with_log_records<R>(records: &[OwnedRecord], f: impl FnOnce(&[Record<'_>]) -> R) -> R {
    if let [one] = records {
        let body = [one.body.as_slice()];
        return f(&[Record {
            kind: one.kind.code(),
            body: &body,
        }]);
    }
    let parts: Vec<[&[u8]; 1]> = records.iter().map(|r| [r.body.as_slice()]).collect();
    let group: Vec<Record<'_>> = records
        .iter()
        .zip(&parts)
        .map(|(r, body)| Record {
            kind: r.kind.code(),
            body,
        })
        .collect();
    f(&group)
}

/// Wakes every receiver blocked on each queue in `queues`.
fn wake(state: &State, queues: &[QueueId]) {
    for &q in queues {
        if let Some(queue) = state.queue(q) {
            queue.wake_receivers();
        }
    }
}

fn queue_stats(q: &QueueState) -> QueueStats {
    let c = q.counters;
    QueueStats {
        name: Arc::clone(&q.name),
        ready: q.ready_count,
        delayed: q.delayed.len() as u64,
        bytes: q.waiting_bytes,
        unacked: c.unacked,
        published: c.published,
        acked: c.acked,
        rejected: c.rejected,
        expired: c.expired,
        dead_lettered: c.dead_lettered,
        dropped: c.dropped,
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

/// Opens the log, replaying from `checkpoint` if given, and rebuilds the state.
fn open_log(
    vfs: &Arc<dyn Vfs>,
    dir: &Path,
    options: &StoreOptions,
    checkpoint: Option<&checkpoints::LoadedCheckpoint>,
) -> Result<(Log, RecoveryReport, State)> {
    let (mut replayer, start) = match checkpoint {
        Some(cp) => (
            Replayer::from_checkpoint(&cp.head, cp.messages())?,
            Some(cp.kept.position),
        ),
        None => (Replayer::default(), None),
    };
    let (log, report) = Log::open_from(
        Arc::clone(vfs),
        dir,
        options.log.clone(),
        start,
        &mut |rec| replayer.apply(rec),
    )?;
    Ok((log, report, replayer.finish(options.clock.now_ms())))
}

/// Every checkpoint file failed to decode. Replaying the whole log instead is only right if
/// no segment was ever reclaimed, that is, if the log still starts at segment 0 (a missing
/// segment later in the chain is caught by the seal check).
fn refuse_full_replay(
    vfs: &dyn Vfs,
    dir: &Path,
    rejected: &[(std::path::PathBuf, String)],
) -> Result<()> {
    let first = vfs
        .list(dir)
        .map_err(|e| Error::io("list directory", dir, e))?
        .iter()
        .filter_map(|name| crate::format::parse_segment_file_name(name))
        .min();
    match first {
        Some(first) if first > 0 => {
            let why: Vec<String> = rejected
                .iter()
                .map(|(path, why)| format!("{}: {why}", path.display()))
                .collect();
            Err(Error::corruption(
                crate::ids::SegmentId(first),
                0,
                format!(
                    "no checkpoint is readable ({}) and the segments before this one were \
                     reclaimed, so their acknowledgements exist only in a checkpoint: restore \
                     the checkpoint files from a backup",
                    why.join("; ")
                ),
            ))
        }
        _ => Ok(()),
    }
}
