//! Compaction (`docs/design.md`, "Compaction and checkpoints"): relocate the live messages
//! of sparse sealed segments, write checkpoints, delete the segments nothing needs.
//!
//! The order of steps, each durable before the next starts:
//! 1. relocated copies are appended (ordinary log records, after everything they copy);
//! 2. a checkpoint is taken: the log is synced up to its position, then the file is written,
//!    fdatasynced, renamed into place and the directory fsynced (`checkpoints.rs`);
//! 3. segments are deleted only if neither of the two checkpoints on disk needs them (the
//!    newest, and the previous one that recovery falls back to), then the directory is
//!    fsynced.
//!
//! A crash between any two steps leaves a store that recovers to the same state: before 2
//! completes, the old checkpoints and every segment they need are still there (the copies
//! are replayed like any record); after it, either checkpoint is complete on its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use super::checkpoints::{self, Kept};
use super::{lock, Inner, Store};
use crate::error::{Error, Result};
use crate::format::{
    frame_len, RecordKind, RelocateBody, PUBLISH_HEADER_LEN, RELOCATE_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use crate::ids::{MessageId, Position, SegmentId};
use crate::log::Record;
use crate::queue::MsgState;

/// Most payload bytes read and rewritten per relocation batch (the state lock is held while
/// a batch is written, so this bounds how long publishers can wait on it).
const RELOCATE_BATCH_BYTES: u64 = 1 << 20;
/// Compaction seals the active segment first if it is more than 1/`ROLL_FRACTION` full.
const ROLL_FRACTION: u64 = 8;
/// Most messages per relocation batch.
const RELOCATE_BATCH_MESSAGES: usize = 1024;

/// What one compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactionReport {
    /// Checkpoints written (two when the previous checkpoint still pinned segments).
    pub checkpoints: u32,
    /// The sequence number of the newest checkpoint.
    pub checkpoint_sequence: u64,
    /// Unsettled messages the newest checkpoint holds.
    pub checkpoint_messages: u64,
    /// Live messages rewritten at the head of the log.
    pub relocated_messages: u64,
    /// Their payload bytes.
    pub relocated_bytes: u64,
    /// Segments deleted, oldest first.
    pub segments_deleted: Vec<SegmentId>,
    /// Bytes of the deleted segment files (preallocated space included).
    pub bytes_reclaimed: u64,
    /// Preallocated bytes given back by cutting sealed segments at their last record.
    pub bytes_trimmed: u64,
}

/// The live data of one segment, as [`Store::segment_stats`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SegmentStats {
    /// The segment.
    pub id: SegmentId,
    /// Bytes of records in it (its header included).
    pub data_bytes: u64,
    /// Its file length, preallocated space included.
    pub file_bytes: u64,
    /// Unsettled messages whose payload record is in it.
    pub live_messages: u64,
    /// The framed size of those records, counted as publish records.
    pub live_bytes: u64,
    /// Whether it is the segment being appended to.
    pub active: bool,
}

impl SegmentStats {
    /// `live_bytes` over the bytes of records after the segment header (1 if empty).
    #[must_use]
    pub fn live_fraction(&self) -> f64 {
        let data = self.data_bytes.saturating_sub(SEGMENT_HEADER_LEN as u64);
        if data == 0 {
            1.0
        } else {
            self.live_bytes as f64 / data as f64
        }
    }
}

/// The store's compaction bookkeeping.
#[derive(Debug, Default)]
pub(super) struct Compaction {
    pub(super) next_sequence: u64,
    /// The previous checkpoint on disk (the fallback) and the newest.
    pub(super) older: Option<Kept>,
    pub(super) newest: Option<Kept>,
}

/// Wakes and stops the background compaction thread.
#[derive(Debug, Default)]
pub(super) struct Background {
    stop: Mutex<bool>,
    wake: Condvar,
}

impl Background {
    pub(super) fn stop(&self) {
        *self.stop.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }
}

/// Starts the background thread: every `every` it checks whether the log has grown by
/// `checkpoint_bytes` since the last checkpoint and compacts if so. It holds the store only
/// while compacting, so dropping the last handle ends it.
pub(super) fn spawn_background(
    inner: Weak<Inner>,
    signal: Arc<Background>,
    every: Duration,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("walq-compaction".into())
        .spawn(move || loop {
            {
                let stop = signal.stop.lock().unwrap_or_else(PoisonError::into_inner);
                let (stop, _) = signal
                    .wake
                    .wait_timeout(stop, every)
                    .unwrap_or_else(PoisonError::into_inner);
                if *stop {
                    return;
                }
            }
            let Some(inner) = inner.upgrade() else { return };
            let store = Store { inner };
            if store.compaction_due() {
                // A failure poisons the log or means it closed: either way the next
                // operation of the application reports it; the thread stops.
                if store.compact().is_err() {
                    return;
                }
            }
        })
        .map_err(|e| Error::io("spawn compaction thread", std::path::Path::new(""), e))
}

impl Store {
    /// Compacts now: relocates the live messages of sealed segments whose live fraction is
    /// below [`CompactionOptions::live_threshold`](crate::CompactionOptions::live_threshold),
    /// writes a checkpoint (two if the previous one still pins segments), and deletes every
    /// segment neither checkpoint on disk needs. Returns what it did.
    ///
    /// Safe to call at any time, from any thread; compactions run one at a time. Publishers,
    /// receivers and settlers keep going while it runs, except while the state is copied for
    /// a checkpoint and while one relocation batch (at most 1 MiB) is written.
    ///
    /// Cost: reads and rewrites the relocated messages; one fsync of the log, and a write
    /// plus fdatasync of each checkpoint (about 10 bytes per unsettled message); a directory
    /// fsync per step. Errors: [`Error::Closed`], [`Error::Poisoned`], [`Error::Io`] (which
    /// poisons the store if it hit the log), [`Error::Corruption`] if a record it must copy
    /// is damaged.
    ///
    /// ```
    /// use walq::{CompactionOptions, Store, StoreOptions};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let options = StoreOptions::new()
    ///     .segment_size(64 << 10)
    ///     .compaction(CompactionOptions::new().background(None));
    /// let store = Store::open(dir.path(), options.clone())?;
    /// let jobs = store.declare_queue("jobs")?;
    /// for _ in 0..2000 {
    ///     jobs.publish(&[0u8; 200])?;
    /// }
    /// // All but the first message are acknowledged: one straggler pins its segment.
    /// let straggler = jobs.try_receive()?.expect("published").id;
    /// while let Some(d) = jobs.try_receive()? {
    ///     jobs.ack(d.id)?;
    /// }
    /// jobs.nack(straggler, true)?;
    /// let report = store.compact()?;
    /// assert_eq!(report.relocated_messages, 1); // the straggler moved to the head
    /// assert!(!report.segments_deleted.is_empty());
    /// drop(jobs);
    /// store.close()?;
    ///
    /// let store = Store::open(dir.path(), options)?;
    /// assert!(store.recovery_report().checkpoint.is_some());
    /// assert_eq!(store.queue("jobs")?.stats().ready, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn compact(&self) -> Result<CompactionReport> {
        self.check_open()?;
        let _one = lock(&self.inner.compacting);
        let mut report = CompactionReport::default();
        // Seal the active segment if it holds much: recovery from the checkpoint then scans
        // little of it, and it becomes a candidate for relocation and deletion now.
        self.inner
            .log
            .roll(self.inner.opts.log.segment_size / ROLL_FRACTION)?;
        self.relocate_sparse(&mut report)?;
        self.checkpoint(&mut report)?;
        if self.pinned_by_older() {
            self.checkpoint(&mut report)?;
        }
        self.delete_unneeded(&mut report)?;
        report.bytes_trimmed = self.inner.log.trim_sealed()?;
        Ok(report)
    }

    /// Live data per segment, oldest segment first.
    ///
    /// Cost: one pass over the messages the store tracks, under the state lock.
    #[must_use]
    pub fn segment_stats(&self) -> Vec<SegmentStats> {
        let segments = self.inner.log.segments();
        let active = self.inner.log.end_position().segment;
        let live = self.live_per_segment();
        segments
            .into_iter()
            .map(|s| {
                let (live_messages, live_bytes) = live.get(&s.id).copied().unwrap_or((0, 0));
                SegmentStats {
                    id: s.id,
                    data_bytes: s.data_end,
                    file_bytes: s.file_len,
                    live_messages,
                    live_bytes,
                    active: s.id == active,
                }
            })
            .collect()
    }

    /// (messages, framed bytes) of unsettled messages per segment.
    ///
    /// Runs under the state lock, which every publish and settle needs too, so it must be
    /// quick: messages are tracked in id order, and ids grow with the log, so consecutive
    /// messages nearly always share a segment. They are summed per run and the map is
    /// touched once per run, not once per message (a hash per message made this walk take
    /// tens of milliseconds with millions of messages queued).
    fn live_per_segment(&self) -> HashMap<SegmentId, (u64, u64)> {
        let state = lock(&self.inner.state);
        let mut live: HashMap<SegmentId, (u64, u64)> = HashMap::new();
        let mut run: Option<(u64, u64, u64)> = None;
        let mut flush = |(segment, messages, bytes): (u64, u64, u64)| {
            let entry = live.entry(SegmentId(segment)).or_default();
            entry.0 += messages;
            entry.1 += bytes;
        };
        for (_, slot) in state.table.live() {
            let bytes = frame_len(PUBLISH_HEADER_LEN + slot.len as usize) as u64;
            match &mut run {
                Some((segment, messages, sum)) if *segment == slot.segment => {
                    *messages += 1;
                    *sum += bytes;
                }
                _ => {
                    if let Some(done) = run.replace((slot.segment, 1, bytes)) {
                        flush(done);
                    }
                }
            }
        }
        drop(state);
        if let Some(done) = run {
            flush(done);
        }
        live
    }

    /// Whether background compaction should run: the log grew by `checkpoint_bytes` since
    /// the newest checkpoint (or since it was created).
    fn compaction_due(&self) -> bool {
        let since = lock(&self.inner.compaction)
            .newest
            .as_ref()
            .map(|k| k.position);
        let grown: u64 = self
            .inner
            .log
            .segments()
            .iter()
            .filter(|s| since.is_none_or(|p| s.id >= p.segment))
            .map(|s| {
                let start = since
                    .filter(|p| p.segment == s.id)
                    .map_or(SEGMENT_HEADER_LEN as u64, |p| p.offset);
                s.data_end.saturating_sub(start)
            })
            .sum();
        grown >= self.inner.opts.compaction.checkpoint_bytes
    }

    /// Rewrites the live messages of sparse sealed segments at the head of the log.
    fn relocate_sparse(&self, report: &mut CompactionReport) -> Result<()> {
        let threshold = self.inner.opts.compaction.live_threshold;
        if threshold <= 0.0 {
            return Ok(());
        }
        let sparse: std::collections::HashSet<SegmentId> = self
            .segment_stats()
            .into_iter()
            .filter(|s| !s.active && s.live_messages > 0 && s.live_fraction() < threshold)
            .map(|s| s.id)
            .collect();
        if sparse.is_empty() {
            return Ok(());
        }
        let mut todo: Vec<(MessageId, Position, u32)> = {
            let state = lock(&self.inner.state);
            state
                .table
                .live()
                .filter(|(_, slot)| sparse.contains(&SegmentId(slot.segment)))
                .map(|(id, slot)| (id, slot.position(), slot.len))
                .collect()
        };
        while !todo.is_empty() {
            let mut bytes = 0u64;
            let take = todo
                .iter()
                .take_while(|&&(_, _, len)| {
                    bytes += u64::from(len);
                    bytes <= RELOCATE_BATCH_BYTES
                })
                .count()
                .clamp(1, RELOCATE_BATCH_MESSAGES);
            let batch: Vec<_> = todo.drain(..take.min(todo.len())).collect();
            self.relocate_batch(&batch, report)?;
        }
        Ok(())
    }

    /// Copies one batch: payloads are read without any lock, then, under the state lock,
    /// each message still where it was and not being settled or published is written
    /// again with its current state and its slot pointed at the copy.
    fn relocate_batch(
        &self,
        batch: &[(MessageId, Position, u32)],
        report: &mut CompactionReport,
    ) -> Result<()> {
        let mut read = Vec::with_capacity(batch.len());
        for &(id, pos, _) in batch {
            match self.read_message(id, pos) {
                Ok(message) => read.push((id, pos, message)),
                // Settled (or moved) meanwhile: nothing left to do for it.
                Err(_) if self.position_of(id) != Some(pos) => {}
                Err(err) => return Err(err),
            }
        }
        let persist = self.inner.opts.persist_deliveries;
        let mut state = lock(&self.inner.state);
        if state.closed {
            return Err(Error::Closed);
        }
        let mut fixed = Vec::new();
        let mut ids = Vec::new();
        for (id, pos, (header, payload)) in &read {
            let Some(slot) = state.table.get(*id) else {
                continue;
            };
            if slot.position() != *pos
                || !matches!(slot.state, MsgState::Ready | MsgState::InFlight)
            {
                continue;
            }
            let mut count = state.deliveries.get(id).copied().unwrap_or(0);
            if slot.state == MsgState::InFlight && !persist {
                count = count.saturating_sub(1);
            }
            let mut copy_header = *header;
            copy_header.queue_id = slot.queue.0;
            copy_header.expires_ms = state.expiries.get(id).copied().unwrap_or(0);
            copy_header.not_before_ms = state.delays.get(id).copied().unwrap_or(0);
            let body = RelocateBody {
                header: copy_header,
                delivery_count: count,
                origin: state.origins.get(id).map(|o| (o.queue.0, o.reason)),
                payload,
            };
            fixed.push(body.encode_fixed());
            ids.push((*id, payload.as_slice()));
        }
        if ids.is_empty() {
            return Ok(());
        }
        let parts: Vec<[&[u8]; 2]> = fixed
            .iter()
            .zip(&ids)
            .map(|(f, (_, payload))| [&f[..], *payload])
            .collect();
        let max = self.inner.log.max_group_len();
        let mut start = 0;
        while start < parts.len() {
            let mut size = 0u64;
            let take = parts[start..]
                .iter()
                .take_while(|p| {
                    size += frame_len(RELOCATE_HEADER_LEN + p[1].len()) as u64;
                    size <= max
                })
                .count()
                .max(1);
            let end = (start + take).min(parts.len());
            let group: Vec<Record<'_>> = parts[start..end]
                .iter()
                .map(|body| Record {
                    kind: RecordKind::Relocate.code(),
                    body,
                })
                .collect();
            let appended = self.inner.log.write(&group)?;
            for (&(id, payload), pos) in ids[start..end].iter().zip(&appended.positions) {
                state.table.update(id, |s| {
                    s.segment = pos.segment.0;
                    s.offset = u32::try_from(pos.offset).unwrap_or(u32::MAX);
                });
                report.relocated_messages += 1;
                report.relocated_bytes += payload.len() as u64;
            }
            start = end;
        }
        Ok(())
    }

    fn position_of(&self, id: MessageId) -> Option<Position> {
        let state = lock(&self.inner.state);
        state
            .table
            .get(id)
            .filter(|s| !s.state.is_settled())
            .map(|s| s.position())
    }

    /// Takes and writes a checkpoint of the current state.
    fn checkpoint(&self, report: &mut CompactionReport) -> Result<()> {
        let sequence = lock(&self.inner.compaction).next_sequence;
        let frozen = {
            // No operation is between writing its records and applying them while the gate
            // is held exclusively, so the state is exactly the log up to `position`.
            let _gate = self
                .inner
                .gate
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let state = lock(&self.inner.state);
            if state.closed {
                return Err(Error::Closed);
            }
            state.freeze(self.inner.log.end_position())
        };
        self.inner.log.sync()?;
        let keep = lock(&self.inner.compaction)
            .newest
            .as_ref()
            .map(|k| k.sequence);
        // Encoded with no lock held: publishers wait only for the copy above.
        let snapshot = checkpoints::write(
            self.inner.vfs.as_ref(),
            self.dir(),
            frozen,
            sequence,
            self.inner.opts.persist_deliveries,
            keep,
        )?;
        let mut c = lock(&self.inner.compaction);
        c.older = c.newest.take();
        c.newest = Some(Kept::of(&snapshot));
        c.next_sequence = sequence + 1;
        report.checkpoints += 1;
        report.checkpoint_sequence = sequence;
        report.checkpoint_messages = snapshot.messages;
        Ok(())
    }

    /// Segments the newest checkpoint could let go but the previous one still needs.
    fn pinned_by_older(&self) -> bool {
        let c = lock(&self.inner.compaction);
        let Some(newest) = &c.newest else {
            return false;
        };
        self.inner
            .log
            .segments()
            .iter()
            .any(|s| !newest.needs(s.id) && c.older.as_ref().is_none_or(|older| older.needs(s.id)))
    }

    /// Deletes the sealed segments that neither checkpoint on disk needs.
    fn delete_unneeded(&self, report: &mut CompactionReport) -> Result<()> {
        let doomed: BTreeMap<SegmentId, u64> = {
            let c = lock(&self.inner.compaction);
            let (Some(newest), Some(older)) = (&c.newest, &c.older) else {
                return Ok(());
            };
            self.inner
                .log
                .segments()
                .into_iter()
                .filter(|s| !newest.needs(s.id) && !older.needs(s.id))
                .map(|s| (s.id, s.file_len))
                .collect()
        };
        let ids: Vec<SegmentId> = doomed.keys().copied().collect();
        self.inner.log.remove_segments(&ids)?;
        report.bytes_reclaimed += doomed.values().sum::<u64>();
        report.segments_deleted.extend(ids);
        Ok(())
    }
}
