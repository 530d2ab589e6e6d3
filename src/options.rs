//! Durability policies, recovery modes and the options of the log and the store.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::{
    frame_len, FRAME_HEADER_LEN, MAX_BODY_LEN, PUBLISH_HEADER_LEN, SEGMENT_HEADER_LEN,
};

/// When the log calls `fdatasync`, and so what a returned `publish`/`ack` guarantees.
///
/// Under every policy a record is handed to the operating system (written to the page cache)
/// before the call that appended it returns, so it survives a crash of the *process*. The
/// policies differ in what survives a *power loss* or kernel crash; see `docs/guarantees.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every `publish`, `ack` and `nack` returns only after its record is durable.
    /// Concurrent callers share one `fdatasync` (group commit): whoever finds no sync in
    /// progress syncs everything written so far, and everyone it covers returns.
    Always,
    /// Calls return without waiting; a background thread syncs once `max_messages` records
    /// are unsynced (publishes, acks, nacks and delivery records all count), or `max_delay`
    /// after the oldest unsynced record was written, whichever comes first. A power loss
    /// loses at most that window.
    Batch {
        /// Sync after this many unsynced records (at least 1).
        max_messages: u32,
        /// Sync no later than this after the oldest unsynced record (at least 1 ms).
        max_delay: Duration,
    },
    /// Calls return without waiting; a background thread syncs every interval if anything
    /// was written. A power loss loses at most about one interval.
    Interval(Duration),
    /// walq syncs only when asked ([`Store::sync`](crate::Store::sync)), when a segment is
    /// rolled over and at [`Store::close`](crate::Store::close). A power loss can lose
    /// everything written since the last of these.
    Never,
}

impl FsyncPolicy {
    fn validate(self) -> Result<()> {
        match self {
            FsyncPolicy::Batch {
                max_messages: 0, ..
            } => Err(Error::InvalidOptions(
                "FsyncPolicy::Batch max_messages must be at least 1".into(),
            )),
            FsyncPolicy::Batch { max_delay, .. } | FsyncPolicy::Interval(max_delay)
                if max_delay < Duration::from_millis(1) =>
            {
                Err(Error::InvalidOptions(
                    "fsync delays and intervals must be at least 1 ms".into(),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// What recovery does with records that fail to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Any bad byte, even a torn tail left by a crash, fails `open` with
    /// [`Error::Corruption`]. For inspection tools and tests.
    Strict,
    /// The default. A torn tail (bad bytes in the last segment that no later record proves
    /// durable) is truncated and reported in the [`RecoveryReport`](crate::RecoveryReport);
    /// corruption anywhere else fails `open` with [`Error::Corruption`] naming the segment
    /// and offset.
    #[default]
    TolerateTornTail,
    /// Like `TolerateTornTail`, but damage in the durable part is cut off as well: the log
    /// ends at the first frame that fails its checksum or bounds (or at a missing segment, or
    /// before a segment with a damaged header), and every later segment is renamed to
    /// `*.wal.quarantine` (never overwriting an earlier one). Records after the cut are lost;
    /// the report lists the cut and the quarantined files. Records that pass their checksum
    /// but break the format's rules (a misplaced seal, a message id out of sequence) still
    /// fail `open`: they mean the log was not written by walq, not that it was damaged.
    /// Use it to bring a damaged store back into service after saving a copy.
    Salvage,
}

/// Default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// Smallest allowed segment size: 64 KiB.
pub const MIN_SEGMENT_SIZE: u64 = 64 << 10;
/// Largest allowed segment size: 1 GiB (offsets inside a segment fit in 32 bits).
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;

/// The space a segment keeps free for its seal record.
pub(crate) const SEAL_RESERVE: u64 = frame_len(crate::format::SealBody::LEN) as u64;

/// Options of the segmented [`Log`](crate::log::Log).
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub(crate) segment_size: u64,
    pub(crate) fsync: FsyncPolicy,
    pub(crate) recovery: RecoveryMode,
    pub(crate) preallocate: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: DEFAULT_SEGMENT_SIZE,
            fsync: FsyncPolicy::Always,
            recovery: RecoveryMode::default(),
            preallocate: true,
        }
    }
}

impl LogOptions {
    /// The defaults: 64 MiB segments, [`FsyncPolicy::Always`],
    /// [`RecoveryMode::TolerateTornTail`], preallocation on.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Size at which the log rolls over to a new segment file. Default 64 MiB; from
    /// [`MIN_SEGMENT_SIZE`] to [`MAX_SEGMENT_SIZE`]. A record group never spans segments,
    /// so this also bounds the largest batch.
    #[must_use]
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// When to `fdatasync`. Default [`FsyncPolicy::Always`].
    #[must_use]
    pub fn fsync(mut self, policy: FsyncPolicy) -> Self {
        self.fsync = policy;
        self
    }

    /// How recovery treats bad bytes. Default [`RecoveryMode::TolerateTornTail`].
    #[must_use]
    pub fn recovery(mut self, mode: RecoveryMode) -> Self {
        self.recovery = mode;
        self
    }

    /// Whether new segments reserve their full size on disk up front (`fallocate`), so that
    /// appends never fail for lack of space mid-segment and need no size update. Default on.
    #[must_use]
    pub fn preallocate(mut self, on: bool) -> Self {
        self.preallocate = on;
        self
    }

    /// The largest record body a segment of this size can hold.
    pub(crate) fn max_body_len(&self) -> u64 {
        let room = self.segment_size - SEGMENT_HEADER_LEN as u64 - SEAL_RESERVE;
        (room - FRAME_HEADER_LEN as u64).min(MAX_BODY_LEN as u64)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return Err(Error::InvalidOptions(format!(
                "segment size {} is outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}",
                self.segment_size
            )));
        }
        if self.segment_size % crate::format::FRAME_ALIGN as u64 != 0 {
            return Err(Error::InvalidOptions(
                "segment size must be a multiple of 8".into(),
            ));
        }
        self.fsync.validate()
    }
}

/// Default largest message payload: 4 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 4 << 20;

/// Options of a [`Store`](crate::Store), built with setters:
///
/// ```
/// use std::time::Duration;
/// use walq::{FsyncPolicy, StoreOptions};
///
/// let options = StoreOptions::new()
///     .fsync(FsyncPolicy::Batch { max_messages: 256, max_delay: Duration::from_millis(5) })
///     .segment_size(16 << 20);
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub(crate) log: LogOptions,
    /// `None`: the default, 4 MiB or what a segment can hold if less.
    pub(crate) max_message_size: Option<u64>,
    pub(crate) persist_deliveries: bool,
    pub(crate) clock: std::sync::Arc<dyn crate::Clock>,
    pub(crate) compaction: CompactionOptions,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            log: LogOptions::default(),
            max_message_size: None,
            persist_deliveries: true,
            clock: std::sync::Arc::new(crate::SystemClock),
            compaction: CompactionOptions::default(),
        }
    }
}

impl StoreOptions {
    /// The defaults: see each setter.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// When to `fdatasync`. Default [`FsyncPolicy::Always`].
    #[must_use]
    pub fn fsync(mut self, policy: FsyncPolicy) -> Self {
        self.log.fsync = policy;
        self
    }

    /// Segment file size. Default 64 MiB; from 64 KiB to 1 GiB.
    #[must_use]
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.log.segment_size = bytes;
        self
    }

    /// How recovery treats bad bytes. Default [`RecoveryMode::TolerateTornTail`].
    #[must_use]
    pub fn recovery(mut self, mode: RecoveryMode) -> Self {
        self.log.recovery = mode;
        self
    }

    /// Whether segments are preallocated. Default on; see [`LogOptions::preallocate`].
    #[must_use]
    pub fn preallocate(mut self, on: bool) -> Self {
        self.log.preallocate = on;
        self
    }

    /// Largest payload `publish` accepts. Default 4 MiB, or less if a segment cannot hold
    /// that much; an explicit value must be at least 1 byte and at most what one segment
    /// holds after its header and a record header (about 64 MiB at most), or `open` fails
    /// with [`Error::InvalidOptions`].
    #[must_use]
    pub fn max_message_size(mut self, bytes: u64) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// The largest payload a segment of the configured size can hold.
    fn segment_payload_capacity(&self) -> u64 {
        self.log.max_body_len() - PUBLISH_HEADER_LEN as u64
    }

    /// The effective maximum payload size.
    pub(crate) fn effective_max_message_size(&self) -> u64 {
        self.max_message_size
            .unwrap_or_else(|| DEFAULT_MAX_MESSAGE_SIZE.min(self.segment_payload_capacity()))
    }

    /// Whether each delivery appends a small `Deliver` record (written, never waited for).
    ///
    /// Default on. It costs one buffered write (a 32-byte record, one `pwrite`) per receive
    /// and never an fsync; the record rides along with the next sync. In return a message
    /// that was out with a consumer when the process crashed comes back with
    /// `redelivered = true` and its delivery count, so a poison message that kills its worker
    /// every time still reaches `max_deliveries` and is dead-lettered. After a power loss the
    /// count may lag by the deliveries made since the last sync.
    #[must_use]
    pub fn persist_deliveries(mut self, on: bool) -> Self {
        self.persist_deliveries = on;
        self
    }

    /// The clock used for publish times, TTLs, delays and leases. Default
    /// [`SystemClock`](crate::SystemClock); tests use [`ManualClock`](crate::ManualClock).
    #[must_use]
    pub fn clock(mut self, clock: std::sync::Arc<dyn crate::Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How and when compaction runs (see [`CompactionOptions`]).
    #[must_use]
    pub fn compaction(mut self, compaction: CompactionOptions) -> Self {
        self.compaction = compaction;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        self.log.validate()?;
        self.compaction.validate()?;
        let max = self.segment_payload_capacity();
        let size = self.effective_max_message_size();
        if size == 0 || size > max {
            return Err(Error::InvalidOptions(format!(
                "max message size {size} is outside 1..={max} for {}-byte segments",
                self.log.segment_size
            )));
        }
        Ok(())
    }
}

/// When compaction runs and what it rewrites (`docs/design.md`, "Compaction").
///
/// Compaction writes a checkpoint of the queue state (so that reopening replays only the
/// log after it), relocates the live messages of sealed segments that are mostly settled,
/// and deletes every segment nothing needs any more. It runs on demand
/// ([`Store::compact`](crate::Store::compact)) and, unless turned off, on a background
/// thread.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactionOptions {
    pub(crate) background: Option<Duration>,
    pub(crate) checkpoint_bytes: u64,
    pub(crate) live_threshold: f64,
}

impl Default for CompactionOptions {
    fn default() -> Self {
        CompactionOptions {
            background: Some(Duration::from_secs(1)),
            checkpoint_bytes: 64 << 20,
            live_threshold: 0.5,
        }
    }
}

impl CompactionOptions {
    /// The defaults: see each setter.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How often the background thread checks whether compaction is due; `None` runs no
    /// thread (call [`Store::compact`](crate::Store::compact) yourself). Default 1 s.
    ///
    /// It is due once the log has grown by [`checkpoint_bytes`](Self::checkpoint_bytes)
    /// since the last checkpoint. Publishers are not blocked while it runs except for the
    /// moment the state is copied for the checkpoint (linear in the messages held).
    #[must_use]
    pub fn background(mut self, every: Option<Duration>) -> Self {
        self.background = every;
        self
    }

    /// Log growth (bytes appended since the last checkpoint) that makes background
    /// compaction due. Default 64 MiB; at least 1.
    ///
    /// Smaller values reclaim space sooner and shorten recovery; each checkpoint costs a
    /// write of about 10 bytes per unsettled message.
    #[must_use]
    pub fn checkpoint_bytes(mut self, bytes: u64) -> Self {
        self.checkpoint_bytes = bytes;
        self
    }

    /// A sealed segment whose live messages take less than this fraction of its bytes has
    /// them relocated to the head of the log, so that it can be deleted. Default 0.5;
    /// 0 turns relocation off (only fully settled segments are deleted); at most 1.
    ///
    /// With threshold `t > 0`, after a compaction the log holds at most `live / t` bytes
    /// plus the two newest segments (the bound `docs/design.md` proves and
    /// `tests/compaction_reclaim.rs` checks for the default); relocation rewrites each live
    /// byte at most once per compaction that finds its segment sparse.
    #[must_use]
    pub fn live_threshold(mut self, fraction: f64) -> Self {
        self.live_threshold = fraction;
        self
    }

    fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.live_threshold) {
            return Err(Error::InvalidOptions(format!(
                "compaction live threshold {} is outside 0..=1",
                self.live_threshold
            )));
        }
        if self.checkpoint_bytes == 0 {
            return Err(Error::InvalidOptions(
                "compaction checkpoint_bytes must be at least 1".into(),
            ));
        }
        if self.background.is_some_and(|d| d.is_zero()) {
            return Err(Error::InvalidOptions(
                "the background compaction interval must not be zero".into(),
            ));
        }
        Ok(())
    }
}
