//! Per-queue, per-publish and per-consumer options.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::format::{QueueSettings, NO_QUEUE};

/// What a publish does when it would take a queue over its `max_length` or `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// The default: make room by dead-lettering (or, with no dead-letter queue, dropping)
    /// the oldest waiting messages, in delivery order. RabbitMQ's `drop-head`.
    #[default]
    DropHead,
    /// Refuse the publish with [`Error::QueueFull`]; nothing is written.
    /// RabbitMQ's `reject-publish`.
    RejectPublish,
}

/// How a queue behaves; given to [`Store::declare_queue_with`](crate::Store::declare_queue_with)
/// and stored in the log with the queue's declaration. Every limit is off by default.
///
/// ```
/// use std::time::Duration;
/// use walq::QueueOptions;
///
/// let jobs = QueueOptions::new()
///     .ack_timeout(Duration::from_secs(30))
///     .max_deliveries(5)
///     .dead_letter_queue("jobs.dead");
/// # let _ = jobs;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueOptions {
    pub(crate) ack_timeout: Option<Duration>,
    pub(crate) message_ttl: Option<Duration>,
    pub(crate) max_deliveries: Option<u32>,
    pub(crate) dead_letter_queue: Option<String>,
    pub(crate) max_length: Option<u64>,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) overflow: Overflow,
}

/// The longest duration walq accepts anywhere: about 292 million years, in milliseconds.
const MAX_MS: u128 = u64::MAX as u128 / 2;

pub(crate) fn duration_ms(what: &'static str, d: Duration) -> Result<u64> {
    let ms = d.as_millis();
    if ms == 0 && !d.is_zero() {
        return Ok(1);
    }
    if ms > MAX_MS {
        return Err(Error::InvalidDuration {
            what,
            reason: "too long",
        });
    }
    Ok(ms as u64)
}

impl QueueOptions {
    /// No limits: messages never expire, are redelivered without limit, stay out with a
    /// consumer until acked, and the queue grows without bound.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The lease of a delivery (AMQP's consumer timeout, SQS's visibility timeout, JetStream's
    /// `AckWait`): a delivery not acked within it goes back to the queue, redelivered, and
    /// counts as a delivery. [`Queue::extend`](crate::Queue::extend) renews it. Default: none.
    #[must_use]
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = Some(timeout);
        self
    }

    /// Default time to live of the queue's messages, from publication; a message's own TTL
    /// ([`PublishOptions::ttl`]) wins if shorter. An expired message is never delivered and
    /// is dead-lettered (or dropped). Default: none.
    #[must_use]
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.message_ttl = Some(ttl);
        self
    }

    /// After this many deliveries a message that comes back (nack with requeue, or an
    /// expired lease) is dead-lettered instead (RabbitMQ's `x-delivery-limit`, JetStream's
    /// `MaxDeliver`, SQS's `maxReceiveCount`). At least 1. Default: none.
    #[must_use]
    pub fn max_deliveries(mut self, deliveries: u32) -> Self {
        self.max_deliveries = Some(deliveries);
        self
    }

    /// The queue that receives this queue's rejected, expired, over-delivered and
    /// overflowing messages (declared with default options if it does not exist). Without
    /// one they are dropped and counted. A queue cannot be its own dead-letter queue.
    #[must_use]
    pub fn dead_letter_queue(mut self, name: impl Into<String>) -> Self {
        self.dead_letter_queue = Some(name.into());
        self
    }

    /// Most messages waiting in the queue (ready or delayed; not those out with consumers).
    /// At least 1. Default: unlimited.
    #[must_use]
    pub fn max_length(mut self, messages: u64) -> Self {
        self.max_length = Some(messages);
        self
    }

    /// Most payload bytes waiting in the queue. At least 1. Default: unlimited.
    #[must_use]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// What a publish over `max_length` or `max_bytes` does. Default [`Overflow::DropHead`].
    #[must_use]
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Validates the options and converts them to their stored form; `dlq` is the queue id of
    /// the dead-letter queue, resolved by the caller.
    pub(crate) fn to_settings(&self, dlq: Option<u32>) -> Result<QueueSettings> {
        let positive = |what, v: Option<u64>| match v {
            Some(0) => Err(Error::InvalidOptions(format!("{what} must be at least 1"))),
            v => Ok(v.unwrap_or(0)),
        };
        let opt_ms = |what, d: Option<Duration>| match d {
            Some(d) if d.is_zero() => Err(Error::InvalidDuration {
                what,
                reason: "zero",
            }),
            Some(d) => duration_ms(what, d),
            None => Ok(0),
        };
        Ok(QueueSettings {
            ack_timeout_ms: opt_ms("ack timeout", self.ack_timeout)?,
            message_ttl_ms: opt_ms("message TTL", self.message_ttl)?,
            max_deliveries: positive("max_deliveries", self.max_deliveries.map(u64::from))? as u32,
            dead_letter_queue: dlq.unwrap_or(NO_QUEUE),
            max_length: positive("max_length", self.max_length)?,
            max_bytes: positive("max_bytes", self.max_bytes)?,
            overflow: match self.overflow {
                Overflow::DropHead => 0,
                Overflow::RejectPublish => 1,
            },
        })
    }
}

/// Per-message options for [`Queue::publish_with`](crate::Queue::publish_with).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishOptions {
    pub(crate) ttl: Option<Duration>,
    pub(crate) expires_at: Option<SystemTime>,
    pub(crate) delay: Option<Duration>,
}

impl PublishOptions {
    /// No TTL, no delay.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The message expires this long after it is published (the queue's `message_ttl`
    /// applies too; the earlier expiry wins).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The message expires at this time.
    #[must_use]
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// The message is not delivered before this long after it is published (a delayed
    /// message). It counts toward the queue's length while it waits.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// `(expires_ms, not_before_ms)` for a message published at `now_ms` to a queue with
    /// `queue_ttl_ms` (0 for none); 0 means none.
    pub(crate) fn resolve(&self, now_ms: u64, queue_ttl_ms: u64) -> Result<(u64, u64)> {
        let after = |what, d: Duration| -> Result<u64> {
            now_ms
                .checked_add(duration_ms(what, d)?)
                .ok_or(Error::InvalidDuration {
                    what,
                    reason: "ends too far in the future",
                })
        };
        let mut expires = match self.ttl {
            Some(ttl) if ttl.is_zero() => {
                return Err(Error::InvalidDuration {
                    what: "TTL",
                    reason: "zero",
                });
            }
            Some(ttl) => after("TTL", ttl)?,
            None => 0,
        };
        if let Some(at) = self.expires_at {
            let ms = at
                .duration_since(UNIX_EPOCH)
                .map_err(|_| Error::InvalidDuration {
                    what: "expiry time",
                    reason: "before 1970",
                })
                .and_then(|d| duration_ms("expiry time", d))?;
            expires = if expires == 0 {
                ms.max(1)
            } else {
                expires.min(ms.max(1))
            };
        }
        if queue_ttl_ms > 0 {
            let queue_expiry = now_ms.saturating_add(queue_ttl_ms);
            expires = if expires == 0 {
                queue_expiry
            } else {
                expires.min(queue_expiry)
            };
        }
        let not_before = match self.delay {
            Some(d) if !d.is_zero() => after("delay", d)?,
            _ => 0,
        };
        Ok((expires, not_before))
    }
}

/// Options of a [`Consumer`](crate::Consumer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerOptions {
    pub(crate) prefetch: Option<u32>,
}

impl ConsumerOptions {
    /// No prefetch limit.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Most deliveries the consumer may hold unacked at once (AMQP's `basic.qos`
    /// prefetch count). When it holds that many, receiving blocks (or `try_receive` returns
    /// `None`) until it acks or nacks one. At least 1. Default: unlimited.
    #[must_use]
    pub fn prefetch(mut self, limit: u32) -> Self {
        self.prefetch = Some(limit);
        self
    }
}
