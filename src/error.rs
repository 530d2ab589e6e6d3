//! The one error type of the crate.
//!
//! Every fallible operation returns [`Result<T>`](crate::Result). Variants carry the context
//! needed to act on them (the segment and offset of a corruption, the path of an I/O error),
//! and their `Display` text says what to do about it.

use std::io;
use std::path::PathBuf;

use crate::ids::{MessageId, SegmentId};

/// Everything that can go wrong in walq.
///
/// The enum is `#[non_exhaustive]`: later versions may add variants, so match with a
/// wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("I/O error during {op} on {}", path.display())]
    Io {
        /// What walq was doing (`"open"`, `"write"`, `"fdatasync"`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Another [`Store`](crate::Store) (in this process or another one) holds the directory.
    #[error(
        "the store directory {} is locked by another open store; close it first \
         (only one process may open a walq directory at a time)",
        dir.display()
    )]
    Locked {
        /// The directory that is already open.
        dir: PathBuf,
    },

    /// Bytes on disk fail a checksum or a format invariant in a place that was durable.
    ///
    /// walq never skips such a record silently: open the store with
    /// [`RecoveryMode::Salvage`](crate::RecoveryMode) to truncate at this point
    /// deliberately, or restore the segment from a backup.
    #[error("corruption in segment {segment} at offset {offset}: {reason}")]
    Corruption {
        /// The segment holding the bad bytes.
        segment: SegmentId,
        /// Byte offset of the first bad record inside that segment file.
        offset: u64,
        /// What check failed.
        reason: String,
    },

    /// A segment was written by a format version this build does not understand.
    #[error(
        "{} uses walq format version {found}, this build reads version {supported}; \
         open it with a walq release that supports format {found} (if no release has that \
         format, the segment header is damaged)",
        path.display()
    )]
    UnsupportedVersion {
        /// The offending file.
        path: PathBuf,
        /// The version found in its header.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },

    /// The store directory holds a file walq did not create.
    #[error(
        "{} is not a walq file; a store directory must contain only walq's own files \
         (is this the right directory?)",
        path.display()
    )]
    ForeignFile {
        /// The unexpected file.
        path: PathBuf,
    },

    /// A message or record exceeds a configured or format limit. Nothing was written.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// What was too large (`"message"`, `"batch"`, `"queue name"`, ...).
        what: &'static str,
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },

    /// A record kind below 16 was given to the log; those kinds are the log's own.
    #[error("record kind {kind} is reserved for the log itself; use kinds 16 to 255")]
    ReservedKind {
        /// The kind given.
        kind: u8,
    },

    /// A batch publish was given no messages.
    #[error("a batch must contain at least one message")]
    EmptyBatch,

    /// An earlier write or fsync failed, so the store refuses every further write.
    ///
    /// After a failed fsync the kernel may have dropped the dirty pages, so walq cannot know
    /// what is on disk and never retries: drop every handle and reopen the store, which
    /// recovers from what is really durable.
    #[error("the store is poisoned by an earlier I/O failure ({cause}); reopen it to recover")]
    Poisoned {
        /// A description of the first failure.
        cause: String,
    },

    /// The store was closed with [`Store::close`](crate::Store::close).
    #[error("the store is closed")]
    Closed,

    /// No message with this id was ever published in this store.
    #[error("message {id} does not exist in this store")]
    UnknownMessage {
        /// The id given.
        id: MessageId,
    },

    /// The message was already acknowledged or rejected; it cannot be settled twice.
    #[error("message {id} was already acknowledged or rejected")]
    AlreadySettled {
        /// The id given.
        id: MessageId,
    },

    /// The message exists but is not currently delivered to a consumer, so it cannot be
    /// acked or nacked. Receive it first.
    #[error("message {id} is not currently delivered (it is waiting in its queue)")]
    NotDelivered {
        /// The id given.
        id: MessageId,
    },

    /// The message belongs to another queue than the handle it was acked through.
    #[error("message {id} belongs to queue {actual:?}, not {expected:?}")]
    WrongQueue {
        /// The id given.
        id: MessageId,
        /// The queue of the handle used.
        expected: String,
        /// The queue the message is in.
        actual: String,
    },

    /// A queue name is empty, too long or not valid UTF-8.
    #[error("invalid queue name {name:?}: {reason}")]
    InvalidQueueName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// No queue of this name has been declared.
    #[error("queue {name:?} does not exist; declare it first")]
    QueueNotFound {
        /// The name given.
        name: String,
    },

    /// A publish would take the queue over its `max_length` or `max_bytes` and the queue's
    /// overflow policy is [`Overflow::RejectPublish`](crate::Overflow::RejectPublish).
    /// Nothing was written; retry once consumers have caught up.
    #[error("queue {queue:?} is full ({limit}); nothing was published")]
    QueueFull {
        /// The queue.
        queue: String,
        /// Which limit: `"max_length"` or `"max_bytes"`.
        limit: &'static str,
    },

    /// The message is out with another consumer than the one that tried to settle it.
    #[error("message {id} was not delivered to this consumer")]
    WrongConsumer {
        /// The id given.
        id: MessageId,
    },

    /// A duration or point in time is out of range.
    #[error("invalid {what}: {reason}")]
    InvalidDuration {
        /// Which duration.
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Declaring the queue would make a message go round in circles between dead-letter
    /// queues (a queue cannot dead-letter into itself, directly or through others).
    #[error("queue {queue:?} would be its own dead-letter queue")]
    DeadLetterCycle {
        /// The queue being declared.
        queue: String,
    },

    /// The queue exists with other options than the ones given. Declare it with the same
    /// options, or use [`Store::queue`](crate::Store::queue) to open it as it is.
    #[error("queue {queue:?} already exists with different options")]
    QueueConfigMismatch {
        /// The queue.
        queue: String,
    },

    /// An option is out of its documented range.
    #[error("invalid option: {0}")]
    InvalidOptions(String),
}

impl Error {
    /// Builds an [`Error::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Corruption`].
    pub(crate) fn corruption(segment: SegmentId, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corruption {
            segment,
            offset,
            reason: reason.into(),
        }
    }
}

/// `Result` with walq's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
