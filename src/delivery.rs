//! What consumers receive, and the statistics a store reports.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ids::MessageId;

/// A message handed to a consumer. Settle it with [`Queue::ack`](crate::Queue::ack) or
/// [`Queue::nack`](crate::Queue::nack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message's id; pass it to `ack` / `nack`.
    pub id: MessageId,
    /// The queue it came from.
    pub queue: Arc<str>,
    /// The payload, read back from the log.
    pub payload: Vec<u8>,
    /// Whether the message may have been delivered before (requeued by a nack, or out with a
    /// consumer when the store was last dropped or crashed). Same meaning as AMQP's
    /// `redelivered` flag.
    pub redelivered: bool,
    /// How many times the message has been delivered, this delivery included (so 1 the first
    /// time). Deliveries before a crash count if the store persists deliveries (the default).
    pub delivery_count: u32,
    /// When the message was published (millisecond precision).
    pub published_at: SystemTime,
}

pub(crate) fn time_from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Counters of one queue, from [`Queue::stats`](crate::Queue::stats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// The queue's name.
    pub name: Arc<str>,
    /// Messages waiting to be delivered.
    pub ready: u64,
    /// Messages delivered and not yet acked or nacked.
    pub unacked: u64,
    /// Messages published to this queue whose records are still in the log (since it was
    /// created, until compaction removes old segments).
    pub published: u64,
    /// Messages acknowledged (same scope as `published`).
    pub acked: u64,
    /// Messages rejected without requeue (same scope as `published`).
    pub rejected: u64,
}

/// Counters of a whole store, from [`Store::stats`](crate::Store::stats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStats {
    /// Per-queue counters, in declaration order.
    pub queues: Vec<QueueStats>,
    /// Messages waiting to be delivered, all queues.
    pub ready: u64,
    /// Messages delivered and not yet settled, all queues.
    pub unacked: u64,
    /// Ids assigned so far: the id the next message will get.
    pub next_message_id: u64,
    /// Messages acknowledged (counted from the log).
    pub acked: u64,
    /// Messages rejected without requeue (counted from the log).
    pub rejected: u64,
    /// Segment files.
    pub segments: usize,
    /// Bytes of valid records in the segments.
    pub log_bytes: u64,
    /// Bytes the segment files occupy, preallocated space included.
    pub bytes_on_disk: u64,
    /// Message-table entries held in memory (see `queue` module docs for the cost).
    pub tracked_messages: usize,
}
