//! The segmented, append-only log, with no queue semantics.
//!
//! A log is a directory of segment files (`docs/format.md`). Records are appended in groups:
//! a group is written contiguously into one segment and is atomic across crashes (recovery
//! applies all of its records or none). Each append returns the [`Position`] of every
//! record, which [`Log::read`] accepts later. The log rolls over to a new segment when the
//! next group would not fit, and can be cut back ([`Log::truncate_from`]) or trimmed at the
//! front ([`Log::purge_before`]), which is what a Raft log store needs as well.
//!
//! Durability follows the [`FsyncPolicy`]; the group-commit protocol
//! is in `writer.rs`, the recovery scan in `recovery.rs`.

mod ahead;
mod flusher;
mod recovery;
mod segment;
mod waiters;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;

pub use recovery::{RecoveredRecord, RecoveryReport, Truncation};

use crate::error::{Error, Result};
use crate::format::{decode_frame, FrameHeader, RecordFlags, FRAME_HEADER_LEN, MAX_BODY_LEN};
use crate::ids::{Position, SegmentId};
use crate::io::{read_exact_at, Vfs};
use crate::options::{FsyncPolicy, LogOptions};
use segment::Segment;
use writer::WriterState;

/// Name of the lock file in a log directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Name of the clean-close marker (`docs/format.md`, "The CLOSED file").
pub(crate) const CLOSED_FILE: &str = "CLOSED";

/// The lowest record kind a caller may use; kinds below it belong to the log itself.
pub const FIRST_USER_KIND: u8 = 16;

/// A record to append: its kind and its body, given as parts that are concatenated.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The record kind, at least [`FIRST_USER_KIND`]; lower kinds belong to the log itself.
    pub kind: u8,
    /// The body, in parts.
    pub body: &'a [&'a [u8]],
}

impl Record<'_> {
    fn body_len(&self) -> usize {
        self.body.iter().map(|p| p.len()).sum()
    }
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    /// The record kind.
    pub kind: u8,
    /// The record body.
    pub body: Vec<u8>,
    /// Where the next record starts.
    pub next: Position,
}

/// What [`Log::append`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The position of each record, in order.
    pub positions: Vec<Position>,
    /// The position just past the group; the group is durable once the log is durable up to
    /// here.
    pub end: Position,
}

/// The segmented write-ahead log. Thread-safe: share it behind an `Arc`.
#[derive(Debug)]
pub struct Log {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    opts: LogOptions,
    writer: Mutex<WriterState>,
    /// Signalled whenever the durable position advances or the log is poisoned.
    synced: Condvar,
    /// Wakes the background flusher.
    flusher_wake: Condvar,
    /// Every live segment, for readers.
    segments: RwLock<BTreeMap<SegmentId, Arc<Segment>>>,
    /// The directory lock, held until the log is closed or dropped.
    lock: Mutex<Option<Box<dyn crate::io::LockGuard>>>,
}

/// A snapshot of one segment, for statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The segment's id.
    pub id: SegmentId,
    /// Its file.
    pub path: PathBuf,
    /// End of its records.
    pub data_end: u64,
    /// Its file length (preallocated space included).
    pub file_len: u64,
}

impl Log {
    /// Opens (or creates) the log in `dir`, replaying every valid record through `visit` in
    /// log order, and returns the log and a report of what recovery did.
    ///
    /// Takes an exclusive lock on `dir/LOCK` first; fails with [`Error::Locked`] if another
    /// log or store has the directory open. Before returning, the last segment and the
    /// directory are synced, so every record `visit` saw is durable: nothing served after a
    /// reopen can vanish in a later power loss.
    ///
    /// Records of an atomic group are visited only once the whole group is known to be
    /// valid. An error returned by `visit` aborts the open and is returned as is.
    ///
    /// Cost: one sequential read of every segment (memory-mapped on a real disk).
    pub fn open(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        opts: LogOptions,
        visit: &mut dyn FnMut(RecoveredRecord<'_>) -> Result<()>,
    ) -> Result<(Log, RecoveryReport)> {
        Log::open_from(vfs, dir, opts, None, visit)
    }

    /// Like [`Log::open`], but replays only the records at or after `start` (a position the
    /// caller recorded earlier, such as a checkpoint's): segments before `start`'s segment
    /// are opened for reading and their headers checked, without a scan, and the records
    /// before `start` in its own segment are checked but not visited.
    ///
    /// Fails with [`Error::Corruption`] if `start`'s segment is missing or ends before
    /// `start`. Cost: a scan of the segments from `start` on.
    pub fn open_from(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        opts: LogOptions,
        start: Option<Position>,
        visit: &mut dyn FnMut(RecoveredRecord<'_>) -> Result<()>,
    ) -> Result<(Log, RecoveryReport)> {
        opts.validate()?;
        let existed = vfs.list(dir).is_ok();
        vfs.create_dir_all(dir)
            .map_err(|e| Error::io("create directory", dir, e))?;
        // A directory created just now must itself be durable: fsync its parent. (Parents
        // created along with it are not synced; create the store's parent beforehand if
        // that matters.)
        if !existed {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                vfs.sync_dir(parent)
                    .map_err(|e| Error::io("fsync directory", parent, e))?;
            }
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = vfs
            .try_lock(&lock_path)
            .map_err(|e| Error::io("lock directory", &lock_path, e))?
            .ok_or_else(|| Error::Locked {
                dir: dir.to_path_buf(),
            })?;
        let recovered = recovery::recover(vfs.as_ref(), dir, &opts, start, visit)?;
        let shared = Arc::new(Shared {
            vfs,
            dir: dir.to_path_buf(),
            writer: Mutex::new(WriterState::new(Arc::clone(&recovered.active))),
            opts,
            synced: Condvar::new(),
            flusher_wake: Condvar::new(),
            segments: RwLock::new(recovered.segments),
            lock: Mutex::new(Some(lock)),
        });
        let flusher = match shared.opts.fsync {
            FsyncPolicy::Batch { .. } | FsyncPolicy::Interval(_) | FsyncPolicy::Never => {
                Some(flusher::spawn(Arc::clone(&shared))?)
            }
            FsyncPolicy::Always => None,
        };
        Ok((Log { shared, flusher }, recovered.report))
    }

    /// The directory of the log.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The options the log was opened with.
    #[must_use]
    pub fn options(&self) -> &LogOptions {
        &self.shared.opts
    }

    /// The largest record body this log accepts.
    #[must_use]
    pub fn max_body_len(&self) -> u64 {
        self.shared.opts.max_body_len()
    }

    /// The largest atomic group this log accepts, in bytes of frames (see
    /// [`format::frame_len`](crate::format::frame_len)): what one segment holds.
    #[must_use]
    pub fn max_group_len(&self) -> u64 {
        self.shared.opts.segment_size
            - crate::format::SEGMENT_HEADER_LEN as u64
            - crate::options::SEAL_RESERVE
    }

    /// Appends `records` as one atomic group and waits as the fsync policy says: under
    /// [`FsyncPolicy::Always`] until the group is durable, otherwise only until it is
    /// written to the operating system.
    ///
    /// Fails without writing anything if a record is larger than [`Log::max_body_len`], the
    /// group does not fit in one segment, or a kind is below [`FIRST_USER_KIND`]. An I/O failure poisons the log: this and every
    /// later append fails with [`Error::Poisoned`] until it is reopened.
    pub fn append(&self, records: &[Record<'_>]) -> Result<Appended> {
        let appended = self.write(records)?;
        self.commit(&appended)?;
        Ok(appended)
    }

    /// Writes `records` as one atomic group (the first half of [`Log::append`]) without
    /// waiting for durability. Pair it with [`Log::commit`].
    ///
    /// Splitting the two lets a caller assign sequence numbers under its own lock while the
    /// group is written, then wait for the fsync outside that lock so that other callers can
    /// join the same group commit.
    pub fn write(&self, records: &[Record<'_>]) -> Result<Appended> {
        let mut positions = Vec::with_capacity(records.len());
        let appended = self.write_reporting(records, &mut |_, pos| positions.push(pos))?;
        Ok(Appended {
            positions,
            end: appended.end,
        })
    }

    /// Like [`Log::write`], without collecting the positions: each record's index and
    /// position go to `on_position` once the group is written, and the returned
    /// `Appended` has no positions (only its end, for [`Log::commit`]). Spares an
    /// allocation per write.
    pub(crate) fn write_reporting(
        &self,
        records: &[Record<'_>],
        on_position: &mut dyn FnMut(usize, Position),
    ) -> Result<Appended> {
        if let Some(record) = records.iter().find(|r| r.kind < FIRST_USER_KIND) {
            return Err(Error::ReservedKind { kind: record.kind });
        }
        let end = self.shared.write(records, on_position)?;
        Ok(Appended {
            positions: Vec::new(),
            end,
        })
    }

    /// Whether [`Log::commit`] can block (waiting for an `fdatasync`): only under
    /// [`FsyncPolicy::Always`].
    #[must_use]
    pub fn commit_waits(&self) -> bool {
        matches!(self.shared.opts.fsync, FsyncPolicy::Always)
    }

    /// Waits until `appended` is as durable as the fsync policy promises: durable under
    /// [`FsyncPolicy::Always`]; under the other policies it returns at once (the background
    /// flusher or an explicit [`Log::sync`] makes it durable later).
    pub fn commit(&self, appended: &Appended) -> Result<()> {
        if self.commit_waits() {
            self.shared.wait_durable(appended.end)
        } else {
            Ok(())
        }
    }

    /// Makes everything written so far durable, whatever the policy. Shares the `fdatasync`
    /// with concurrent callers.
    ///
    /// Fails with [`Error::Poisoned`] once a write or sync has failed, even if nothing new
    /// was written since: the failed data may never reach the disk, and a sync that reported
    /// success would hide that.
    pub fn sync(&self) -> Result<()> {
        let end = {
            let w = self.shared.lock_writer();
            w.check_writable()?;
            w.end()
        };
        self.shared.wait_durable(end)
    }

    /// The position up to which the log is known durable.
    #[must_use]
    pub fn durable_position(&self) -> Position {
        self.shared.lock_writer().durable
    }

    /// The position where the next record will be written (if it fits in the segment).
    #[must_use]
    pub fn end_position(&self) -> Position {
        self.shared.lock_writer().end()
    }

    /// Reads the record at `pos`, verifying its checksum.
    ///
    /// Cost: two positioned reads (the frame header, then the rest of the frame); the body
    /// is the only allocation.
    pub fn read(&self, pos: Position) -> Result<ReadRecord> {
        self.read_expecting(pos, None)
    }

    /// Like [`Log::read`], for a caller that expects the record's body to be `body_len`
    /// bytes long (a store knows the length of each message's payload): reads that whole
    /// frame in one positioned read. If the frame's header gives another length, the rest
    /// of the frame, if any, is read with a second call. The checks are those of
    /// [`Log::read`]: the frame's own length decides what is decoded and checksummed.
    pub(crate) fn read_expecting(
        &self,
        pos: Position,
        body_len: Option<usize>,
    ) -> Result<ReadRecord> {
        let segment = self.shared.segment(pos.segment).ok_or_else(|| {
            Error::corruption(
                pos.segment,
                pos.offset,
                "read of a segment that does not exist",
            )
        })?;
        let end = segment.data_end();
        if pos.offset >= end {
            return Err(Error::corruption(
                pos.segment,
                pos.offset,
                "read past the end of the log",
            ));
        }
        let io_err = |e| Error::io("read", &segment.path, e);
        // The first read: the expected frame if it lies within the records written, else
        // only the header.
        let first = body_len
            .filter(|&len| len <= MAX_BODY_LEN)
            .map(|len| crate::format::frame_len(len) as u64)
            .filter(|&len| len <= end - pos.offset)
            .unwrap_or(FRAME_HEADER_LEN as u64);
        let mut frame = vec![0u8; first as usize];
        read_exact_at(segment.file.as_ref(), &mut frame, pos.offset).map_err(io_err)?;
        let body_len = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]) as u64;
        let frame_end = pos.offset
            + crate::format::frame_len(body_len.min(MAX_BODY_LEN as u64) as usize) as u64;
        if body_len > MAX_BODY_LEN as u64 || frame_end > end {
            return Err(Error::corruption(
                pos.segment,
                pos.offset,
                "record length out of bounds",
            ));
        }
        let frame_len = (frame_end - pos.offset) as usize;
        if frame_len > frame.len() {
            let have = frame.len();
            frame.resize(frame_len, 0);
            read_exact_at(
                segment.file.as_ref(),
                &mut frame[have..],
                pos.offset + have as u64,
            )
            .map_err(io_err)?;
        } else {
            frame.truncate(frame_len);
        }
        let view = decode_frame(&frame, segment.salt, segment.id.0, pos.offset)
            .map_err(|e| Error::corruption(pos.segment, pos.offset, e.to_string()))?;
        let kind = view.header.kind;
        let next = Position {
            segment: pos.segment,
            offset: view.next_offset,
        };
        let body_start = FRAME_HEADER_LEN;
        let body_end = body_start + view.body.len();
        frame.truncate(body_end);
        frame.drain(..body_start);
        Ok(ReadRecord {
            kind,
            body: frame,
            next,
        })
    }

    /// Removes every record at or after `pos`, which must be the position of a record
    /// appended by the caller or the current end of the log ([`Error::InvalidOptions`]
    /// otherwise). Later segments are deleted (newest first) and `pos`'s segment is cut
    /// back; everything is durable when this returns. The next append goes to `pos`.
    pub fn truncate_from(&self, pos: Position) -> Result<()> {
        self.shared.truncate_from(pos)
    }

    /// Deletes every segment whose id is below `segment` (never the active one), oldest
    /// first, then syncs the directory. Their positions become unreadable.
    pub fn purge_before(&self, segment: SegmentId) -> Result<usize> {
        self.shared.purge_before(segment)
    }

    /// Deletes the given sealed segments (ids that are not segments of this log, and the
    /// active segment, are skipped), then syncs the directory once. Their positions become
    /// unreadable. Returns how many were deleted.
    ///
    /// Any segment may go, not only the oldest: the caller (the store's compaction) has
    /// made sure beforehand that nothing in them is needed, durably. On an I/O error the
    /// log is poisoned, as after a failed fsync, since which removals are durable is then
    /// unknown.
    pub fn remove_segments(&self, ids: &[SegmentId]) -> Result<usize> {
        self.shared.remove_sealed(ids)
    }

    /// Cuts every sealed segment's file at its data end (its Seal record), giving back
    /// the space preallocated after it; returns the bytes released.
    ///
    /// Crash-safe without an fsync: nothing after a Seal record is ever read, and recovery
    /// accepts a sealed segment of any length from its data end on. An I/O error leaves that
    /// file at its old or new length and does not poison the log (no record was touched).
    ///
    /// Cost: one `fstat` per sealed segment, one `ftruncate` per untrimmed one.
    pub fn trim_sealed(&self) -> Result<u64> {
        self.shared.trim_sealed()
    }

    /// Seals the active segment and starts the next one, if the active one holds more than
    /// `min_data` bytes of records (the segment header not counted). Returns whether it did.
    ///
    /// Cost: like a roll-over at a full segment: a Seal record, an `fdatasync`, and the
    /// creation of the next segment (with its directory `fsync`). Compaction uses it so that
    /// a checkpoint's replay position sits near the start of a segment and the segment
    /// before it, sealed, can be relocated and deleted.
    pub fn roll(&self, min_data: u64) -> Result<bool> {
        self.shared.roll_if_over(min_data)
    }

    /// Information on every live segment, oldest first.
    #[must_use]
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let segments = self
            .shared
            .segments
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        segments
            .values()
            .map(|s| SegmentInfo {
                id: s.id,
                path: s.path.clone(),
                data_end: s.data_end(),
                file_len: s.file.len().unwrap_or(0),
            })
            .collect()
    }

    /// Closes the log cleanly: writes a commit marker, syncs, refuses later appends with
    /// [`Error::Closed`] and releases the directory lock. The marker lets the next recovery
    /// treat every earlier byte of the last segment as durable, so corruption in it is
    /// reported instead of truncated.
    pub fn close(&self) -> Result<()> {
        let end = self.shared.close()?;
        self.shared.write_closed_marker(end)?;
        self.shared
            .lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        Ok(())
    }

    /// `Ok` while the log accepts writes; [`Error::Poisoned`] after an I/O failure,
    /// [`Error::Closed`] after [`Log::close`].
    pub fn check_writable(&self) -> Result<()> {
        self.shared.lock_writer().check_writable()
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.shared.lock_writer().shutdown = true;
        self.shared.flusher_wake.notify_all();
        if let Some(handle) = self.flusher.take() {
            let _ = handle.join();
        }
    }
}

impl Shared {
    fn lock_writer(&self) -> MutexGuard<'_, WriterState> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn segment(&self, id: SegmentId) -> Option<Arc<Segment>> {
        let segments = self.segments.read().unwrap_or_else(PoisonError::into_inner);
        segments.get(&id).cloned()
    }
}

/// The header fields of a frame written by the log.
fn frame_header(kind: u8, continues: bool, mark: u32) -> FrameHeader {
    let flags = if continues {
        RecordFlags::CONTINUES
    } else {
        RecordFlags::NONE
    };
    FrameHeader { kind, flags, mark }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemVfs;

    fn open(vfs: &MemVfs) -> Log {
        let opts = LogOptions::new().segment_size(64 << 10);
        let (log, _) = Log::open(Arc::new(vfs.clone()), Path::new("/log"), opts, &mut |_| {
            Ok(())
        })
        .unwrap();
        log
    }

    #[test]
    fn read_expecting_any_length_reads_the_frame_the_header_gives() {
        let vfs = MemVfs::new();
        let log = open(&vfs);
        let bodies: Vec<Vec<u8>> = (0..4usize)
            .map(|i| (0..100 + 37 * i).map(|b| (b * 7 + i) as u8).collect())
            .collect();
        let mut positions = Vec::new();
        for body in &bodies {
            let appended = log
                .append(&[Record {
                    kind: FIRST_USER_KIND,
                    body: &[body],
                }])
                .unwrap();
            positions.push(appended.positions[0]);
        }
        for (pos, body) in positions.iter().zip(&bodies) {
            let len = body.len();
            // Right, shorter, longer (within and past the end of the log), absurd, none.
            for guess in [
                Some(len),
                Some(len - 50),
                Some(0),
                Some(len + 9),
                Some(len + 1000),
                Some(MAX_BODY_LEN + 1),
                Some(usize::MAX),
                None,
            ] {
                let rec = log.read_expecting(*pos, guess).unwrap();
                assert_eq!(rec.body, *body, "guess {guess:?}");
                assert_eq!(rec.kind, FIRST_USER_KIND);
                assert_eq!(rec, log.read(*pos).unwrap());
            }
        }
        // A damaged body is caught whatever the guess.
        let path = Path::new("/log").join(format!("{:020}.wal", positions[1].segment.0));
        let mut bytes = vfs.read_file(&path).unwrap();
        let at = positions[1].offset as usize + FRAME_HEADER_LEN + 3;
        bytes[at] ^= 0x40;
        vfs.write_file(&path, bytes);
        for guess in [
            Some(bodies[1].len()),
            Some(1),
            Some(bodies[1].len() + 8),
            None,
        ] {
            assert!(matches!(
                log.read_expecting(positions[1], guess),
                Err(Error::Corruption { .. })
            ));
        }
        assert_eq!(
            log.read_expecting(positions[2], Some(1)).unwrap().body,
            bodies[2]
        );
    }
}
