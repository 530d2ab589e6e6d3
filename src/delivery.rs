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
    /// When it expires, if it has a time to live.
    pub expires_at: Option<SystemTime>,
    /// Set if the message was dead-lettered into this queue: why, and from where.
    pub dead_letter: Option<DeadLetter>,
}

/// Why a message was dead-lettered (or, with no dead-letter queue, dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// A consumer rejected it (nack without requeue).
    Rejected,
    /// Its time to live ran out before it was delivered.
    Expired,
    /// It came back after `max_deliveries` deliveries.
    DeliveryLimit,
    /// A publish to its full queue pushed it out (overflow `drop-head`).
    Overflow,
}

/// Where a dead-lettered message came from. Its id is the id it was published with; the
/// payload was never copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why it was dead-lettered.
    pub reason: DeadLetterReason,
    /// The queue it was dead-lettered from (where [`Store::redrive`](crate::Store::redrive)
    /// sends it back).
    pub original_queue: Arc<str>,
}

pub(crate) fn time_from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Counters of one queue, from [`Queue::stats`](crate::Queue::stats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// The queue's name.
    pub name: Arc<str>,
    /// Messages ready to be delivered now.
    pub ready: u64,
    /// Messages waiting for a delay (delayed publish, or nack with a delay).
    pub delayed: u64,
    /// Payload bytes of the ready and delayed messages.
    pub bytes: u64,
    /// Messages delivered and not yet acked or nacked.
    pub unacked: u64,
    /// Messages published to this queue whose records are still in the log (since it was
    /// created, until compaction removes old segments).
    pub published: u64,
    /// Messages acknowledged (same scope as `published`).
    pub acked: u64,
    /// Messages rejected without requeue (same scope as `published`).
    pub rejected: u64,
    /// Messages that expired before delivery (same scope as `published`).
    pub expired: u64,
    /// Messages moved to the dead-letter queue, for any reason.
    pub dead_lettered: u64,
    /// Messages discarded for lack of a dead-letter queue (rejected, expired, over the
    /// delivery limit or pushed out by overflow).
    pub dropped: u64,
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
    /// Ids the message table spans, from the oldest unsettled message to the newest (see
    /// the `queue` module docs for what each costs).
    pub tracked_messages: usize,
}
