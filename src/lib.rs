//! walq: an embeddable, durable, log-structured message-queue storage engine.
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod clock;
mod delivery;
mod error;
pub mod format;
mod ids;
pub mod io;
pub mod log;
mod options;
mod queue;
mod queue_options;
mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use delivery::{DeadLetter, DeadLetterReason, Delivery, QueueStats, StoreStats};
pub use error::{Error, Result};
pub use ids::{MessageId, Position, SegmentId};
pub use log::{RecoveryReport, Truncation};
pub use options::{
    CompactionOptions, FsyncPolicy, LogOptions, RecoveryMode, StoreOptions,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_SEGMENT_SIZE, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE,
};
pub use queue_options::{ConsumerOptions, Overflow, PublishOptions, QueueOptions};
pub use store::{CompactionReport, Consumer, PeekedMessage, Queue, SegmentStats, Store};
