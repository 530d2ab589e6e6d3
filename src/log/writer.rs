//! The write path: framing, segment roll-over, group commit and poisoning.
//!
//! # Group commit
//! Appenders write their frames under the writer lock (one write per group) and then, if
//! the policy asks for durability, wait for the durable position to pass the end of their
//! group. Whoever finds no `fdatasync` in progress becomes the leader: it records the current
//! end of the log, releases the lock, syncs, and on success advances the durable position to
//! that end. Appenders that find a sync running park (`waiters.rs`). When the round ends, the
//! leader tells those it covered that they are done, and they return without taking the lock
//! again; of those that wrote while it was syncing, it calls one to lead the next round,
//! which covers the rest. So N concurrent appenders cost about two `fdatasync`s, not N, and
//! each wakes once.
//!
//! # Commit delay
//! Left alone, steady appenders split into two cohorts: those a round wakes write again
//! while the next round (for the others) syncs, so each `fdatasync` covers about half of
//! them. So before a round, a leader waits, with the lock released, until as many threads
//! are parked as were appending lately (`waiters.rs`, "Group sizes"), but never longer than
//! half the last `fdatasync` took (and at most [`MAX_COMMIT_DELAY`]): the one who parks
//! last wakes it. A lone appender never waits (nobody else is counted), and when appenders
//! stop coming the count falls back within two rounds.
//!
//! # Poisoning
//! If a write or an `fdatasync` fails, the writer records the failure and refuses every later
//! write and every wait that is not already satisfied. A failed `fdatasync` is never retried:
//! Linux may have dropped the dirty pages and a second call would report success.

use std::sync::Arc;
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use super::segment::TEMP_SUFFIX;
use super::waiters::{Parked, Waiter, DONE};
use super::{frame_header, Record, Segment, Shared};
use super::{CLOSED_FILE, FIRST_USER_KIND};
use crate::error::{Error, Result};
use crate::format::{
    encode_frame, frame_len, ClosedMarker, RecordKind, SealBody, SEGMENT_HEADER_LEN,
};
use crate::ids::{Position, SegmentId};
use crate::io::write_all_at;
use crate::options::{FsyncPolicy, SEAL_RESERVE};

/// How many `fdatasync` rounds one caller of [`Shared::wait_durable`] runs back to back at
/// most before calling another thread to lead: the first for itself, the rest for threads
/// that parked behind it.
const ROUNDS_PER_LEADER: u32 = 2;

/// The longest a leader waits for its group to park before it syncs (see "Commit delay").
const MAX_COMMIT_DELAY: Duration = Duration::from_millis(2);

#[derive(Debug)]
pub(crate) struct WriterState {
    pub(super) active: Arc<Segment>,
    /// Where the next frame goes in the active segment.
    pub(super) write_offset: u64,
    /// Everything before this position is durable.
    pub(super) durable: Position,
    /// A leader is running `fdatasync`.
    sync_in_progress: bool,
    /// Appenders parked until a sync covers their records.
    parked: Parked,
    /// A leader delaying its round until this many appenders are parked (`gather`).
    gathering: Option<(usize, Thread)>,
    /// How long the last round's `fdatasync` took.
    last_sync: Duration,
    /// Threads blocked on `Shared::synced` right now. Changed only under the writer lock,
    /// held by every waiter from checking its condition until `wait` releases it and by
    /// every waker while it changes what waiters wait for: a wake that finds none is
    /// skipped (`Shared::wake_synced`) without losing a wake-up.
    sync_waiters: u32,
    /// A roll-over in flight (see [`Shared::roll`]): the sealed segment, not yet known
    /// durable, and its successor (the active segment), not yet published.
    sealing: Option<(Arc<Segment>, Arc<Segment>)>,
    /// A thread is running [`Shared::publish_pending`]'s I/O for `sealing`.
    publishing: bool,
    /// Set by the first I/O failure; never cleared.
    poisoned: Option<String>,
    closed: bool,
    pub(super) shutdown: bool,
    /// Records written since the last sync started (for `FsyncPolicy::Batch`).
    pub(super) unsynced_records: u64,
    /// When the oldest of those was written.
    pub(super) first_unsynced_at: Option<Instant>,
    /// Reused frame buffer.
    buf: Vec<u8>,
}

impl WriterState {
    pub(super) fn new(active: Arc<Segment>) -> Self {
        let write_offset = active.data_end();
        WriterState {
            durable: Position {
                segment: active.id,
                offset: write_offset,
            },
            active,
            write_offset,
            sync_in_progress: false,
            parked: Parked::default(),
            gathering: None,
            last_sync: Duration::ZERO,
            sync_waiters: 0,
            sealing: None,
            publishing: false,
            poisoned: None,
            closed: false,
            shutdown: false,
            unsynced_records: 0,
            first_unsynced_at: None,
            buf: Vec::new(),
        }
    }

    /// The position after the last written frame.
    pub(super) fn end(&self) -> Position {
        Position {
            segment: self.active.id,
            offset: self.write_offset,
        }
    }

    pub(super) fn is_dirty(&self) -> bool {
        self.durable < self.end()
    }

    /// Forgets the records counted for the flusher (`FsyncPolicy::Batch`): a sync that
    /// covers them has started or finished.
    pub(super) fn forget_unsynced(&mut self) {
        self.unsynced_records = 0;
        self.first_unsynced_at = None;
    }

    /// Whether a roll-over's successor waits to be published.
    pub(super) fn roll_pending(&self) -> bool {
        self.sealing.is_some() && !self.publishing
    }

    /// The segments below this id are sealed, durable and followed by a published
    /// successor: the only ones that may be deleted or trimmed.
    fn settled_below(&self) -> SegmentId {
        self.sealing
            .as_ref()
            .map_or(self.active.id, |(sealed, _)| sealed.id)
    }

    pub(super) fn check_writable(&self) -> Result<()> {
        if let Some(cause) = &self.poisoned {
            return Err(Error::Poisoned {
                cause: cause.clone(),
            });
        }
        if self.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// The durable mark for a frame written now in the active segment.
    fn mark(&self) -> u32 {
        if self.durable.segment == self.active.id {
            // Segment sizes are capped at 1 GiB, so offsets fit in 32 bits.
            u32::try_from(self.durable.offset).unwrap_or(u32::MAX)
        } else {
            0
        }
    }

    fn poison(&mut self, err: &Error) {
        if self.poisoned.is_none() {
            self.poisoned = Some(err.to_string());
        }
    }
}

impl Shared {
    /// Blocks on `synced`, counted in `sync_waiters` while blocked.
    fn wait_synced<'a>(
        &self,
        mut w: std::sync::MutexGuard<'a, WriterState>,
    ) -> std::sync::MutexGuard<'a, WriterState> {
        w.sync_waiters += 1;
        let mut w = self
            .synced
            .wait(w)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.sync_waiters -= 1;
        w
    }

    /// Wakes the threads blocked on `synced`, if any (`notify_all` is a system call even
    /// when nobody waits), and tells the parked appenders what the durable position, poison
    /// and sync state now mean for them. Takes the writer state to show that its lock is
    /// held; used where that state changes off the group-commit path (roll-over, failures,
    /// truncation), so the parked threads are woken under the lock.
    fn wake_synced(&self, w: &mut WriterState) {
        if w.sync_waiters > 0 {
            self.synced.notify_all();
        }
        for waiter in self.settle_parked(w) {
            waiter.unpark();
        }
    }

    /// Tells the parked appenders what the writer state now means for them; returns those
    /// to unpark.
    fn settle_parked(&self, w: &mut WriterState) -> Vec<Arc<Waiter>> {
        let mut wake = Vec::new();
        let (durable, poisoned, running) = (w.durable, w.poisoned.is_some(), w.sync_in_progress);
        w.parked.settle(durable, poisoned, running, &mut wake);
        wake
    }

    /// Writes `records` as one group; once the write has succeeded, calls `on_position`
    /// with each record's index and position. Returns the end of the group.
    pub(super) fn write(
        &self,
        records: &[Record<'_>],
        on_position: &mut dyn FnMut(usize, Position),
    ) -> Result<Position> {
        if records.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let max_body = self.opts.max_body_len();
        let mut total = 0u64;
        for record in records {
            let len = record.body_len() as u64;
            if len > max_body {
                return Err(Error::TooLarge {
                    what: "record",
                    len,
                    max: max_body,
                });
            }
            total += frame_len(record.body_len()) as u64;
        }
        let capacity = self.opts.segment_size - SEGMENT_HEADER_LEN as u64 - SEAL_RESERVE;
        if total > capacity {
            return Err(Error::TooLarge {
                what: "record group",
                len: total,
                max: capacity,
            });
        }

        let mut w = self.lock_writer();
        w.check_writable()?;
        if w.write_offset + total + SEAL_RESERVE > self.opts.segment_size {
            let (guard, published) = self.publish_pending(w);
            w = guard;
            published?;
            self.roll(&mut w)?;
        }
        let segment = Arc::clone(&w.active);
        let start = w.write_offset;
        let mark = w.mark();
        let mut buf = std::mem::take(&mut w.buf);
        buf.clear();
        for (i, record) in records.iter().enumerate() {
            let offset = start + buf.len() as u64;
            let header = frame_header(record.kind, i + 1 < records.len(), mark);
            encode_frame(
                &mut buf,
                segment.salt,
                segment.id.0,
                offset,
                header,
                record.body,
            );
        }
        let result = write_all_at(segment.file.as_ref(), &buf, start);
        w.buf = buf;
        if let Err(e) = result {
            let err = Error::io("write", &segment.path, e);
            w.poison(&err);
            self.wake_synced(&mut w);
            return Err(err);
        }
        w.write_offset = start + total;
        segment.set_data_end(w.write_offset);
        let first_unsynced = w.unsynced_records == 0;
        if first_unsynced {
            w.first_unsynced_at = Some(Instant::now());
        }
        w.unsynced_records += records.len() as u64;
        if let FsyncPolicy::Batch { max_messages, .. } = self.opts.fsync {
            // Wake the flusher to start the delay clock, or because the batch is full.
            if first_unsynced || w.unsynced_records >= u64::from(max_messages) {
                self.flusher_wake.notify_one();
            }
        }
        let end = w.end();
        drop(w);
        // Each frame is `frame_len` bytes long: the offsets the loop above encoded at.
        let mut offset = start;
        for (i, record) in records.iter().enumerate() {
            on_position(
                i,
                Position {
                    segment: segment.id,
                    offset,
                },
            );
            offset += frame_len(record.body_len()) as u64;
        }
        Ok(end)
    }

    /// Rolls over now if the active segment holds more than `min_data` bytes of records.
    /// Returns whether it rolled.
    pub(super) fn roll_if_over(&self, min_data: u64) -> Result<bool> {
        let mut w = self.lock_writer();
        w.check_writable()?;
        if w.write_offset.saturating_sub(SEGMENT_HEADER_LEN as u64) <= min_data {
            return Ok(false);
        }
        let (guard, published) = self.publish_pending(w);
        w = guard;
        published?;
        self.roll(&mut w)?;
        Ok(true)
    }

    /// Seals the active segment and opens the next one. Called with the writer lock held and
    /// no roll-over in flight (see [`Shared::publish_pending`]).
    ///
    /// Under [`FsyncPolicy::Always`], where every append waits for durability anyway, each
    /// step completes before the next: write the seal record, `fdatasync` the old segment,
    /// create the new one (see [`Segment::create`]).
    ///
    /// Under the other policies, the old segment holds up to a whole segment of unsynced
    /// records, and its `fdatasync` (tens of milliseconds) would stall this append. So: write
    /// the seal record, create the new segment as a *pending successor*
    /// ([`Segment::create_pending`]), append to it at once, and leave the rest to
    /// [`Shared::publish_pending`], which the background thread (`flusher.rs`) runs: sync the
    /// old segment, then publish the new one. Until then the durable position stays in the
    /// old segment, so no wait for a record in the new one returns, and recovery adopts a
    /// pending successor only behind a valid seal (`docs/format.md`, "Segment lifecycle").
    ///
    /// Either way, a segment with a published successor is sealed and durable.
    fn roll(&self, w: &mut WriterState) -> Result<()> {
        let old = Arc::clone(&w.active);
        let next_id = SegmentId(old.id.0 + 1);
        let seal = SealBody {
            next_segment_id: next_id.0,
        }
        .encode();
        let mut frame = Vec::with_capacity(SEAL_RESERVE as usize);
        let header = frame_header(RecordKind::Seal.code(), false, w.mark());
        encode_frame(
            &mut frame,
            old.salt,
            old.id.0,
            w.write_offset,
            header,
            &[&seal],
        );
        let waits = matches!(self.opts.fsync, FsyncPolicy::Always);
        let result = write_all_at(old.file.as_ref(), &frame, w.write_offset)
            .map_err(|e| Error::io("write seal record", &old.path, e))
            .and_then(|()| {
                if waits {
                    old.file
                        .sync_data()
                        .map_err(|e| Error::io("fdatasync", &old.path, e))
                } else {
                    Ok(())
                }
            });
        if let Err(err) = result {
            w.poison(&err);
            self.wake_synced(w);
            return Err(err);
        }
        old.file.finish_writes();
        w.write_offset += frame.len() as u64;
        old.set_data_end(w.write_offset);
        if waits {
            w.durable = w.end();
            w.forget_unsynced();
            self.wake_synced(w);
        }

        let (vfs, size, preallocate) = (
            self.vfs.as_ref(),
            self.opts.segment_size,
            self.opts.preallocate,
        );
        let created = if waits {
            Segment::create(vfs, &self.dir, next_id, size, preallocate)
        } else {
            Segment::create_pending(vfs, &self.dir, next_id, size, preallocate)
        };
        let new = match created {
            Ok(segment) => Arc::new(segment),
            Err(err) => {
                w.poison(&err);
                self.wake_synced(w);
                return Err(err);
            }
        };
        self.segments
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(new.id, Arc::clone(&new));
        w.write_offset = new.data_end();
        if waits {
            w.durable = Position {
                segment: new.id,
                offset: w.write_offset,
            };
        } else {
            w.sealing = Some((old, Arc::clone(&new)));
            self.flusher_wake.notify_one();
        }
        w.active = new;
        Ok(())
    }

    /// Finishes the roll-over in flight, if any (see [`Shared::roll`]): syncs the sealed
    /// segment, then publishes its successor ([`Segment::publish`]) and moves the durable
    /// position to the successor's first record. If another thread is already doing so,
    /// waits for it instead. Returns, with the lock, once no roll-over is in flight, or the
    /// error that poisoned the log.
    pub(super) fn publish_pending<'a>(
        &'a self,
        mut w: std::sync::MutexGuard<'a, WriterState>,
    ) -> (std::sync::MutexGuard<'a, WriterState>, Result<()>) {
        loop {
            if let Err(err) = w.check_writable() {
                return (w, Err(err));
            }
            let Some((sealed, successor)) = w.sealing.clone() else {
                return (w, Ok(()));
            };
            if w.publishing {
                w = self.wait_synced(w);
                continue;
            }
            w.publishing = true;
            drop(w);
            let result = sealed
                .file
                .sync_data()
                .map_err(|e| Error::io("fdatasync", &sealed.path, e))
                .and_then(|()| successor.publish(self.vfs.as_ref(), &self.dir));
            w = self.lock_writer();
            w.publishing = false;
            w.sealing = None;
            match result {
                Ok(()) => {
                    let published = Position {
                        segment: successor.id,
                        offset: SEGMENT_HEADER_LEN as u64,
                    };
                    if w.durable < published {
                        w.durable = published;
                    }
                    if !w.is_dirty() {
                        w.forget_unsynced();
                    }
                    self.wake_synced(&mut w);
                }
                Err(err) => {
                    w.poison(&err);
                    self.wake_synced(&mut w);
                    return (w, Err(err));
                }
            }
        }
    }

    /// Blocks until the log is durable up to `target`, leading an `fdatasync` if none is in
    /// progress (group commit; see the module docs).
    pub(super) fn wait_durable(&self, target: Position) -> Result<()> {
        self.wait_durable_locked(self.lock_writer(), target)
    }

    fn wait_durable_locked<'a>(
        &'a self,
        mut w: std::sync::MutexGuard<'a, WriterState>,
        target: Position,
    ) -> Result<()> {
        // Set when this thread was woken to look again, possibly called to lead.
        let mut called = false;
        loop {
            // A thread called to lead does so even if its own records became durable
            // meanwhile (by a roll-over), unless the log is poisoned: then nobody leads.
            let must_lead =
                called && !w.sync_in_progress && w.poisoned.is_none() && w.parked.need_leader();
            if called {
                w.parked.call_answered();
            }
            if w.durable >= target && !must_lead {
                return Ok(());
            }
            if let Some(cause) = &w.poisoned {
                return Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            if w.sync_in_progress {
                let waiter = w.parked.register(target);
                let gathered = match &w.gathering {
                    Some((want, _)) if w.parked.len() >= *want => w.gathering.take(),
                    _ => None,
                };
                drop(w);
                if let Some((_, leader)) = gathered {
                    leader.unpark();
                }
                if waiter.wait() == DONE {
                    return Ok(());
                }
                called = true;
                w = self.lock_writer();
                continue;
            }
            return self.lead(w, target);
        }
    }

    /// Runs `fdatasync` rounds as the leader (see the module docs), called with the writer
    /// lock held and no sync running, until `target` is durable. A leader that finds threads
    /// parked behind its round when it ends runs one more round for them at once, which
    /// saves the time another thread would take to wake and start it; after
    /// [`ROUNDS_PER_LEADER`] it calls one of them to lead instead, so no caller stays leader
    /// for long.
    fn lead<'a>(
        &'a self,
        mut w: std::sync::MutexGuard<'a, WriterState>,
        target: Position,
    ) -> Result<()> {
        w.sync_in_progress = true;
        w.parked.call_answered();
        let mut rounds = 0;
        loop {
            w = self.gather(w);
            // Records in a pending successor become durable only once it is published.
            w = self.publish_pending(w).0;
            if w.poisoned.is_some() {
                // Nobody syncs a poisoned log; every waiter learns of it from the settle.
                w.sync_in_progress = false;
                self.wake_synced(&mut w);
                return self.wait_durable_locked(w, target);
            }
            let segment = Arc::clone(&w.active);
            let to = w.end();
            let own_pending = w.durable < target;
            w.forget_unsynced();
            drop(w);
            let started = Instant::now();
            let result = segment.file.sync_data();
            let took = started.elapsed();
            w = self.lock_writer();
            if let Err(e) = result {
                w.sync_in_progress = false;
                let err = Error::io("fdatasync", &segment.path, e);
                w.poison(&err);
                self.wake_synced(&mut w);
                return Err(err);
            }
            rounds += 1;
            w.last_sync = took;
            if to > w.durable {
                w.durable = to;
            }
            if w.sync_waiters > 0 {
                self.synced.notify_all();
            }
            let again = rounds < ROUNDS_PER_LEADER && w.is_dirty() && w.parked.need_leader();
            w.sync_in_progress = again;
            // Wake the parked outside the lock, so that none wakes into a held lock.
            let wake = self.settle_parked(&mut w);
            w.parked.end_round(own_pending && to >= target);
            drop(w);
            for waiter in &wake {
                waiter.unpark();
            }
            if !again {
                if to >= target {
                    return Ok(());
                }
                // The log was cut below `target` meanwhile: look again, as any waiter would.
                return self.wait_durable_locked(self.lock_writer(), target);
            }
            w = self.lock_writer();
        }
    }

    /// The commit delay (see the module docs): returns once as many appenders are parked as
    /// were appending lately, less the leader itself, or once the delay bound has passed.
    /// Called by a leader with the writer lock held and `sync_in_progress` set, so that
    /// appenders park meanwhile.
    fn gather<'a>(
        &'a self,
        mut w: std::sync::MutexGuard<'a, WriterState>,
    ) -> std::sync::MutexGuard<'a, WriterState> {
        let want = w.parked.active().saturating_sub(1);
        if w.parked.len() >= want {
            return w;
        }
        let deadline = Instant::now() + (w.last_sync / 2).min(MAX_COMMIT_DELAY);
        w.gathering = Some((want, thread::current()));
        loop {
            drop(w);
            // May return early (an `unpark` meant for an earlier wait): the loop rechecks.
            thread::park_timeout(deadline.saturating_duration_since(Instant::now()));
            w = self.lock_writer();
            if w.gathering.is_none() || w.poisoned.is_some() || Instant::now() >= deadline {
                w.gathering = None;
                return w;
            }
        }
    }

    pub(super) fn truncate_from(&self, pos: Position) -> Result<()> {
        let mut w = self.lock_writer();
        w.check_writable()?;
        while w.sync_in_progress || w.sealing.is_some() {
            if w.sync_in_progress {
                w = self.wait_synced(w);
            } else {
                let (guard, published) = self.publish_pending(w);
                w = guard;
                published?;
            }
        }
        let target = self.segment(pos.segment).ok_or_else(|| {
            Error::corruption(
                pos.segment,
                pos.offset,
                "truncation point in a missing segment",
            )
        })?;
        // The end of the active segment, or a record of the caller's (never the log's own
        // seal or commit records: cutting "after" a seal would leave appends behind it,
        // where recovery never looks).
        let is_active = target.id == w.active.id;
        let valid_boundary = (is_active && pos.offset == w.write_offset)
            || (pos.offset >= SEGMENT_HEADER_LEN as u64
                && pos.offset < target.data_end()
                && self
                    .read_frame_kind(&target, pos.offset)
                    .is_some_and(|k| k >= FIRST_USER_KIND));
        if !valid_boundary {
            return Err(Error::InvalidOptions(format!(
                "{pos} is not a record boundary of the log"
            )));
        }
        let result = self.cut(&mut w, &target, pos);
        if let Err(err) = &result {
            w.poison(err);
            self.wake_synced(&mut w);
        }
        result
    }

    fn read_frame_kind(&self, segment: &Segment, offset: u64) -> Option<u8> {
        let mut head = [0u8; crate::format::FRAME_HEADER_LEN];
        crate::io::read_exact_at(segment.file.as_ref(), &mut head, offset).ok()?;
        let len = u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]]));
        let end = offset.checked_add(frame_len(len.min(u64::from(u32::MAX)) as usize) as u64)?;
        if end > segment.data_end() {
            return None;
        }
        let mut frame = vec![0u8; usize::try_from(end - offset).ok()?];
        crate::io::read_exact_at(segment.file.as_ref(), &mut frame, offset).ok()?;
        crate::format::decode_frame(&frame, segment.salt, segment.id.0, offset)
            .ok()
            .map(|v| v.header.kind)
    }

    /// Deletes the segments after `target` (newest first) and cuts `target` at `pos`.
    fn cut(&self, w: &mut WriterState, target: &Arc<Segment>, pos: Position) -> Result<()> {
        let newer: Vec<Arc<Segment>> = {
            let segments = self
                .segments
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            segments
                .range(SegmentId(pos.segment.0 + 1)..)
                .rev()
                .map(|(_, s)| Arc::clone(s))
                .collect()
        };
        self.remove_segments(&newer)?;
        let file = target.file.as_ref();
        let io = |op| move |e| Error::io(op, &target.path, e);
        file.set_len(pos.offset).map_err(io("truncate segment"))?;
        if self.opts.preallocate {
            file.preallocate(self.opts.segment_size)
                .map_err(io("preallocate segment"))?;
        }
        file.sync_data().map_err(io("fdatasync"))?;
        target.set_data_end(pos.offset);
        w.active = Arc::clone(target);
        w.write_offset = pos.offset;
        w.durable = pos;
        w.forget_unsynced();
        Ok(())
    }

    /// Deletes `segments` in the order given (each file first, then its entry in the
    /// segment map, so a reader never finds a segment whose file is gone before it is
    /// forgotten), then syncs the directory.
    fn remove_segments(&self, segments: &[Arc<Segment>]) -> Result<()> {
        for segment in segments {
            self.vfs
                .remove(&segment.path)
                .map_err(|e| Error::io("remove segment", &segment.path, e))?;
            self.segments
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&segment.id);
        }
        if segments.is_empty() {
            return Ok(());
        }
        self.vfs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("fsync directory", &self.dir, e))
    }

    pub(super) fn purge_before(&self, before: SegmentId) -> Result<usize> {
        self.remove_sealed_where(|segments, settled| {
            segments
                .range(..before.min(settled))
                .map(|(_, s)| Arc::clone(s))
                .collect()
        })
    }

    pub(super) fn remove_sealed(&self, ids: &[SegmentId]) -> Result<usize> {
        self.remove_sealed_where(|segments, settled| {
            ids.iter()
                .filter(|&&id| id < settled)
                .filter_map(|id| segments.get(id).cloned())
                .collect()
        })
    }

    /// Cuts the file of every sealed segment at its data end, giving back the preallocated
    /// space after its Seal record. Returns the bytes released.
    ///
    /// Nothing after a Seal record is ever read, and recovery accepts a sealed segment of
    /// any length from its data end on, so this is safe at any moment, and a crash before
    /// a new length is durable only leaves the zeros where they were (no fsync is spent on
    /// it). A failure leaves that file at one of the two lengths and is returned without
    /// poisoning the log: no record was touched.
    pub(super) fn trim_sealed(&self) -> Result<u64> {
        let settled = {
            let w = self.lock_writer();
            w.check_writable()?;
            w.settled_below()
        };
        let sealed: Vec<Arc<Segment>> = self
            .segments
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .range(..settled)
            .map(|(_, s)| Arc::clone(s))
            .collect();
        let mut released = 0;
        for segment in sealed {
            let end = segment.data_end();
            let len = segment
                .file
                .len()
                .map_err(|e| Error::io("stat segment", &segment.path, e))?;
            if len > end {
                segment
                    .file
                    .set_len(end)
                    .map_err(|e| Error::io("trim sealed segment", &segment.path, e))?;
                released += len - end;
            }
        }
        Ok(released)
    }

    /// Deletes the segments `pick` chooses from the segment map (given the id below which
    /// segments are settled: sealed, durable and followed by a published successor), then
    /// syncs the directory. On an I/O error the log is poisoned: which removals
    /// are durable is unknown then, as after a failed fsync.
    fn remove_sealed_where(
        &self,
        pick: impl FnOnce(
            &std::collections::BTreeMap<SegmentId, Arc<Segment>>,
            SegmentId,
        ) -> Vec<Arc<Segment>>,
    ) -> Result<usize> {
        let w = self.lock_writer();
        w.check_writable()?;
        let settled = w.settled_below();
        drop(w);
        let doomed = {
            let segments = self
                .segments
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pick(&segments, settled)
        };
        if let Err(err) = self.remove_segments(&doomed) {
            let mut w = self.lock_writer();
            w.poison(&err);
            self.wake_synced(&mut w);
            return Err(err);
        }
        Ok(doomed.len())
    }

    /// Syncs, appends a commit marker whose durable mark is its own offset, syncs again and
    /// marks the writer closed.
    /// Returns where the log ends, or `None` if it was already closed.
    pub(super) fn close(&self) -> Result<Option<Position>> {
        let end = {
            let w = self.lock_writer();
            if w.closed {
                return Ok(None);
            }
            w.end()
        };
        self.wait_durable(end)?;
        let end = self.write(
            &[Record {
                kind: RecordKind::Commit.code(),
                body: &[],
            }],
            &mut |_, _| {},
        )?;
        self.wait_durable(end)?;
        self.lock_writer().closed = true;
        Ok(Some(end))
    }

    /// Records where a cleanly closed log ends (`docs/format.md`, "The CLOSED file"):
    /// written under a temporary name, synced, renamed into place, directory synced.
    pub(super) fn write_closed_marker(&self, end: Option<Position>) -> Result<()> {
        let Some(end) = end else { return Ok(()) };
        let marker = ClosedMarker {
            segment: end.segment.0,
            offset: end.offset,
        }
        .encode();
        let path = self.dir.join(CLOSED_FILE);
        let tmp = self.dir.join(format!("{CLOSED_FILE}{TEMP_SUFFIX}"));
        let tmp = tmp.as_path();
        let io = |op| move |e| Error::io(op, tmp, e);
        let file = self.vfs.create(tmp).map_err(io("create close marker"))?;
        write_all_at(file.as_ref(), &marker, 0).map_err(io("write close marker"))?;
        file.sync_data().map_err(io("fdatasync close marker"))?;
        self.vfs
            .rename(tmp, &path)
            .map_err(io("rename close marker"))?;
        self.vfs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("fsync directory", &self.dir, e))
    }
}
