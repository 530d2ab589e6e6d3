//! Record kinds and their bodies (`docs/format.md`, "Record kinds").
//!
//! Kinds below 16 belong to the log layer itself; the queue store uses kinds 16 and up.
//! Every decoder checks the exact body length (or a bounded count) before reading.

use byteorder::{ByteOrder, LittleEndian as LE};

/// The kinds of record this version defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// Log: the last record of a segment that was rolled over.
    Seal = 1,
    /// Log: written at a clean close; everything before it was durable.
    Commit = 2,
    /// Store: a queue name was declared.
    QueueDeclare = 16,
    /// Store: a message was published.
    Publish = 17,
    /// Store: messages were acknowledged.
    Ack = 18,
    /// Store: a delivered message was rolled back (requeued, dead-lettered or dropped).
    Rollback = 19,
    /// Store: a message was handed to a consumer (a buffered hint, see the format spec).
    Deliver = 20,
    /// Store: a message moved to another queue (dead-lettered, or redriven back).
    Move = 21,
    /// Store: a live message rewritten at the head of the log by compaction, with its id and
    /// its state, so that the segment it was in can be deleted.
    Relocate = 22,
}

impl RecordKind {
    /// The kind with this code, if defined.
    #[must_use]
    pub fn from_u8(code: u8) -> Option<RecordKind> {
        Some(match code {
            1 => RecordKind::Seal,
            2 => RecordKind::Commit,
            16 => RecordKind::QueueDeclare,
            17 => RecordKind::Publish,
            18 => RecordKind::Ack,
            19 => RecordKind::Rollback,
            20 => RecordKind::Deliver,
            21 => RecordKind::Move,
            22 => RecordKind::Relocate,
            _ => return None,
        })
    }

    /// The kind's code on disk.
    #[must_use]
    pub fn code(self) -> u8 {
        self as u8
    }
}

fn exact<const N: usize>(body: &[u8]) -> Result<&[u8; N], &'static str> {
    body.try_into()
        .map_err(|_| "body length does not match its kind")
}

/// Body of a [`RecordKind::Seal`] record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealBody {
    /// The id of the segment created after this one.
    pub next_segment_id: u64,
}

impl SealBody {
    /// Encoded size.
    pub const LEN: usize = 8;

    /// Encodes the body.
    #[must_use]
    pub fn encode(&self) -> [u8; Self::LEN] {
        self.next_segment_id.to_le_bytes()
    }

    /// Decodes the body.
    pub fn decode(body: &[u8]) -> Result<SealBody, &'static str> {
        let b = exact::<{ Self::LEN }>(body)?;
        Ok(SealBody {
            next_segment_id: u64::from_le_bytes(*b),
        })
    }
}

/// Longest queue name, in bytes of UTF-8.
pub const MAX_QUEUE_NAME_LEN: usize = 255;

/// The settings a queue is declared with, as stored. Zero means "not set" for every limit
/// and duration; `dead_letter_queue` is [`NO_QUEUE`] when there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Ack timeout (lease) in milliseconds.
    pub ack_timeout_ms: u64,
    /// Default time to live of its messages, in milliseconds.
    pub message_ttl_ms: u64,
    /// Deliveries after which a message is dead-lettered instead of requeued.
    pub max_deliveries: u32,
    /// The queue id of its dead-letter queue, or [`NO_QUEUE`].
    pub dead_letter_queue: u32,
    /// Most messages waiting (ready or delayed).
    pub max_length: u64,
    /// Most payload bytes waiting.
    pub max_bytes: u64,
    /// What a publish over a limit does: 0 drops the oldest waiting message, 1 rejects the
    /// publish.
    pub overflow: u8,
}

/// "No queue", in a queue-id field.
pub const NO_QUEUE: u32 = u32::MAX;

impl Default for QueueSettings {
    /// No limits and no dead-letter queue.
    fn default() -> Self {
        QueueSettings {
            ack_timeout_ms: 0,
            message_ttl_ms: 0,
            max_deliveries: 0,
            dead_letter_queue: NO_QUEUE,
            max_length: 0,
            max_bytes: 0,
            overflow: 0,
        }
    }
}

/// Body of a [`RecordKind::QueueDeclare`] record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclareBody {
    /// The store-local queue number that other records refer to.
    pub queue_id: u32,
    /// The queue's settings.
    pub settings: QueueSettings,
    /// The queue's name: 1 to [`MAX_QUEUE_NAME_LEN`] bytes of UTF-8.
    pub name: String,
}

impl QueueDeclareBody {
    const FIXED: usize = 56;

    /// Encodes the body. The caller has validated the name's length.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; Self::FIXED];
        let s = &self.settings;
        LE::write_u32(&mut b[0..4], self.queue_id);
        LE::write_u16(&mut b[4..6], self.name.len() as u16);
        LE::write_u64(&mut b[8..16], s.ack_timeout_ms);
        LE::write_u64(&mut b[16..24], s.message_ttl_ms);
        LE::write_u32(&mut b[24..28], s.max_deliveries);
        LE::write_u32(&mut b[28..32], s.dead_letter_queue);
        LE::write_u64(&mut b[32..40], s.max_length);
        LE::write_u64(&mut b[40..48], s.max_bytes);
        b[48] = s.overflow;
        b.extend_from_slice(self.name.as_bytes());
        b
    }

    /// Decodes the body.
    pub fn decode(body: &[u8]) -> Result<QueueDeclareBody, &'static str> {
        let b: &[u8; Self::FIXED] = body
            .get(..Self::FIXED)
            .and_then(|f| f.try_into().ok())
            .ok_or("queue declaration too short")?;
        let name_len = usize::from(LE::read_u16(&b[4..6]));
        if b[6..8] != [0, 0] || b[49..56] != [0; 7] {
            return Err("non-zero reserved bytes in queue declaration");
        }
        if name_len == 0 || name_len > MAX_QUEUE_NAME_LEN || body.len() != Self::FIXED + name_len {
            return Err("bad queue name length");
        }
        if b[48] > 1 {
            return Err("unknown overflow policy");
        }
        let name = std::str::from_utf8(body.get(Self::FIXED..).unwrap_or_default())
            .map_err(|_| "queue name is not UTF-8")?;
        let settings = QueueSettings {
            ack_timeout_ms: LE::read_u64(&b[8..16]),
            message_ttl_ms: LE::read_u64(&b[16..24]),
            max_deliveries: LE::read_u32(&b[24..28]),
            dead_letter_queue: LE::read_u32(&b[28..32]),
            max_length: LE::read_u64(&b[32..40]),
            max_bytes: LE::read_u64(&b[40..48]),
            overflow: b[48],
        };
        Ok(QueueDeclareBody {
            queue_id: LE::read_u32(&b[0..4]),
            settings,
            name: name.to_owned(),
        })
    }
}

/// Size of the fixed part of a publish body; the payload follows it.
pub const PUBLISH_HEADER_LEN: usize = 40;

/// The fixed fields of a [`RecordKind::Publish`] record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishHeader {
    /// The message id.
    pub id: u64,
    /// The queue (from its declaration record).
    pub queue_id: u32,
    /// When it was published, milliseconds since the Unix epoch.
    pub published_ms: u64,
    /// When it expires, milliseconds since the Unix epoch; 0 for never.
    pub expires_ms: u64,
    /// Not to be delivered before this time, milliseconds since the Unix epoch; 0 for no
    /// delay.
    pub not_before_ms: u64,
}

/// A decoded [`RecordKind::Publish`] body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishBody<'a> {
    /// The fixed fields.
    pub header: PublishHeader,
    /// The payload, borrowed from the record.
    pub payload: &'a [u8],
}

impl PublishHeader {
    /// Encodes the fixed fields; the payload follows them in the record body.
    #[must_use]
    pub fn encode(&self) -> [u8; PUBLISH_HEADER_LEN] {
        let mut b = [0u8; PUBLISH_HEADER_LEN];
        LE::write_u64(&mut b[0..8], self.id);
        LE::write_u32(&mut b[8..12], self.queue_id);
        // b[12..16]: message flags, none defined in this version.
        LE::write_u64(&mut b[16..24], self.published_ms);
        LE::write_u64(&mut b[24..32], self.expires_ms);
        LE::write_u64(&mut b[32..40], self.not_before_ms);
        b
    }
}

impl<'a> PublishBody<'a> {
    /// Decodes the body.
    pub fn decode(body: &'a [u8]) -> Result<PublishBody<'a>, &'static str> {
        let fixed = body
            .get(..PUBLISH_HEADER_LEN)
            .ok_or("publish record too short")?;
        if LE::read_u32(&fixed[12..16]) != 0 {
            return Err("unknown message flags");
        }
        Ok(PublishBody {
            header: PublishHeader {
                id: LE::read_u64(&fixed[0..8]),
                queue_id: LE::read_u32(&fixed[8..12]),
                published_ms: LE::read_u64(&fixed[16..24]),
                expires_ms: LE::read_u64(&fixed[24..32]),
                not_before_ms: LE::read_u64(&fixed[32..40]),
            },
            payload: body.get(PUBLISH_HEADER_LEN..).unwrap_or_default(),
        })
    }
}

/// Most id ranges one ack record may hold.
pub const MAX_ACK_RANGES: usize = 4096;

/// Body of a [`RecordKind::Ack`] record: inclusive ranges of acknowledged message ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckBody {
    /// `(first, last)` pairs, each with `first <= last`.
    pub ranges: Vec<(u64, u64)>,
}

impl AckBody {
    const FIXED: usize = 8;
    const RANGE: usize = 16;

    /// Encodes the body. The caller keeps `ranges.len() <= MAX_ACK_RANGES`.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::FIXED + Self::RANGE * self.ranges.len());
        out.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for &(first, last) in &self.ranges {
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&last.to_le_bytes());
        }
        out
    }

    /// Decodes the body; the range count is checked against [`MAX_ACK_RANGES`] and the body
    /// length before anything is allocated.
    pub fn decode(body: &[u8]) -> Result<AckBody, &'static str> {
        let fixed = body.get(..Self::FIXED).ok_or("ack record too short")?;
        let count = LE::read_u32(&fixed[0..4]) as usize;
        if fixed[4..8] != [0; 4] {
            return Err("non-zero reserved bytes in ack record");
        }
        if count == 0 || count > MAX_ACK_RANGES || body.len() != Self::FIXED + count * Self::RANGE {
            return Err("bad ack range count");
        }
        let ranges: Vec<(u64, u64)> = body
            .get(Self::FIXED..)
            .unwrap_or_default()
            .chunks_exact(Self::RANGE)
            .map(|c| (LE::read_u64(&c[0..8]), LE::read_u64(&c[8..16])))
            .collect();
        if ranges.iter().any(|&(first, last)| first > last) {
            return Err("ack range with first > last");
        }
        Ok(AckBody { ranges })
    }
}

/// What a rollback did with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Disposition {
    /// Put back in its queue, ahead of never-delivered messages (after `not_before_ms`).
    Requeue = 1,
    /// Discarded: rejected, expired, over its delivery limit or pushed out by an overflow,
    /// with no dead-letter queue to move it to (a move is a [`RecordKind::Move`]).
    Drop = 3,
}

/// Body of a [`RecordKind::Rollback`] record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollbackBody {
    /// The message rolled back.
    pub id: u64,
    /// How many times it has been delivered so far.
    pub delivery_count: u32,
    /// What happened to it.
    pub disposition: Disposition,
    /// Why it was dropped (`None` for a requeue).
    pub reason: Option<MoveReason>,
    /// Not to be delivered again before this time (ms since the epoch); 0 for no delay.
    pub not_before_ms: u64,
}

impl RollbackBody {
    /// Encoded size.
    pub const LEN: usize = 24;

    /// Encodes the body.
    #[must_use]
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        LE::write_u64(&mut b[0..8], self.id);
        LE::write_u32(&mut b[8..12], self.delivery_count);
        b[12] = self.disposition as u8;
        b[13] = self.reason.map_or(0, |r| r as u8);
        LE::write_u64(&mut b[16..24], self.not_before_ms);
        b
    }

    /// Decodes the body.
    pub fn decode(body: &[u8]) -> Result<RollbackBody, &'static str> {
        let b = exact::<{ Self::LEN }>(body)?;
        let disposition = match b[12] {
            1 => Disposition::Requeue,
            3 => Disposition::Drop,
            _ => return Err("unknown rollback disposition"),
        };
        if b[14..16] != [0; 2] {
            return Err("non-zero reserved bytes in rollback record");
        }
        let reason = match (disposition, b[13]) {
            (Disposition::Requeue, 0) => None,
            (Disposition::Drop, code) => Some(
                MoveReason::from_u8(code)
                    .filter(|r| *r != MoveReason::Redrive)
                    .ok_or("bad drop reason")?,
            ),
            _ => return Err("a requeue has no reason"),
        };
        Ok(RollbackBody {
            id: LE::read_u64(&b[0..8]),
            delivery_count: LE::read_u32(&b[8..12]),
            disposition,
            reason,
            not_before_ms: LE::read_u64(&b[16..24]),
        })
    }
}

/// Body of a [`RecordKind::Deliver`] record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliverBody {
    /// The message delivered.
    pub id: u64,
    /// Its delivery count including this delivery.
    pub delivery_count: u32,
}

impl DeliverBody {
    /// Encoded size.
    pub const LEN: usize = 16;

    /// Encodes the body.
    #[must_use]
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        LE::write_u64(&mut b[0..8], self.id);
        LE::write_u32(&mut b[8..12], self.delivery_count);
        b
    }

    /// Decodes the body.
    pub fn decode(body: &[u8]) -> Result<DeliverBody, &'static str> {
        let b = exact::<{ Self::LEN }>(body)?;
        if b[12..16] != [0; 4] {
            return Err("non-zero reserved bytes in deliver record");
        }
        Ok(DeliverBody {
            id: LE::read_u64(&b[0..8]),
            delivery_count: LE::read_u32(&b[8..12]),
        })
    }
}

/// Why a message moved between queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MoveReason {
    /// Rejected by a consumer (nack without requeue).
    Rejected = 1,
    /// Its time to live ran out.
    Expired = 2,
    /// It reached its queue's delivery limit.
    DeliveryLimit = 3,
    /// Pushed out of a full queue (overflow `drop-head`).
    Overflow = 4,
    /// Moved back from a dead-letter queue to the queue it came from.
    Redrive = 5,
}

impl MoveReason {
    /// The reason with this code, if defined.
    #[must_use]
    pub fn from_u8(code: u8) -> Option<MoveReason> {
        Some(match code {
            1 => MoveReason::Rejected,
            2 => MoveReason::Expired,
            3 => MoveReason::DeliveryLimit,
            4 => MoveReason::Overflow,
            5 => MoveReason::Redrive,
            _ => return None,
        })
    }
}

/// Body of a [`RecordKind::Move`] record. The message keeps its id and its publish record
/// (the payload is never copied); only the queue it belongs to changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveBody {
    /// The message moved.
    pub id: u64,
    /// The queue it moves to.
    pub to_queue: u32,
    /// Why.
    pub reason: MoveReason,
}

impl MoveBody {
    /// Encoded size.
    pub const LEN: usize = 16;

    /// Encodes the body.
    #[must_use]
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        LE::write_u64(&mut b[0..8], self.id);
        LE::write_u32(&mut b[8..12], self.to_queue);
        b[12] = self.reason as u8;
        b
    }

    /// Decodes the body.
    pub fn decode(body: &[u8]) -> Result<MoveBody, &'static str> {
        let b = exact::<{ Self::LEN }>(body)?;
        let reason = MoveReason::from_u8(b[12]).ok_or("unknown move reason")?;
        if b[13..16] != [0; 3] {
            return Err("non-zero reserved bytes in move record");
        }
        Ok(MoveBody {
            id: LE::read_u64(&b[0..8]),
            to_queue: LE::read_u32(&b[8..12]),
            reason,
        })
    }
}

/// Size of the fixed part of a relocate body; the payload follows it.
pub const RELOCATE_HEADER_LEN: usize = PUBLISH_HEADER_LEN + 16;

/// A decoded [`RecordKind::Relocate`] body: a copy of a live message and of its state.
///
/// The copy supersedes the message's earlier publish (or relocate) record: from here on its
/// payload is read from the copy, and its queue, delivery count, delay, expiry and origin
/// are the copy's. Records after the copy apply to it as usual.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelocateBody<'a> {
    /// The publish fields: id, the queue it is in now (not necessarily the one published
    /// to), publication time, expiry and delay.
    pub header: PublishHeader,
    /// Deliveries recorded so far.
    pub delivery_count: u32,
    /// If dead-lettered: the queue it came from and why.
    pub origin: Option<(u32, MoveReason)>,
    /// The payload, borrowed from the record.
    pub payload: &'a [u8],
}

impl RelocateBody<'_> {
    /// Encodes the fixed fields; the payload follows them in the record body.
    #[must_use]
    pub fn encode_fixed(&self) -> [u8; RELOCATE_HEADER_LEN] {
        let mut b = [0u8; RELOCATE_HEADER_LEN];
        b[..PUBLISH_HEADER_LEN].copy_from_slice(&self.header.encode());
        let rest = &mut b[PUBLISH_HEADER_LEN..];
        LE::write_u32(&mut rest[0..4], self.delivery_count);
        let (queue, reason) = self.origin.map_or((NO_QUEUE, 0), |(q, r)| (q, r as u8));
        LE::write_u32(&mut rest[4..8], queue);
        rest[8] = reason;
        b
    }
}

impl<'a> RelocateBody<'a> {
    /// Decodes the body.
    pub fn decode(body: &'a [u8]) -> Result<RelocateBody<'a>, &'static str> {
        let fixed = body
            .get(..RELOCATE_HEADER_LEN)
            .ok_or("relocate record too short")?;
        let publish = PublishBody::decode(fixed)?;
        let rest = &fixed[PUBLISH_HEADER_LEN..];
        if rest[9..16] != [0; 7] {
            return Err("non-zero reserved bytes in relocate record");
        }
        let queue = LE::read_u32(&rest[4..8]);
        let origin = match (queue, rest[8]) {
            (NO_QUEUE, 0) => None,
            (NO_QUEUE, _) | (_, 0) => return Err("half an origin in relocate record"),
            (queue, code) => Some((
                queue,
                MoveReason::from_u8(code).ok_or("unknown move reason")?,
            )),
        };
        Ok(RelocateBody {
            header: publish.header,
            delivery_count: LE::read_u32(&rest[0..4]),
            origin,
            payload: body.get(RELOCATE_HEADER_LEN..).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip() {
        let settings = QueueSettings {
            ack_timeout_ms: 1,
            message_ttl_ms: 2,
            max_deliveries: 3,
            dead_letter_queue: 4,
            max_length: 5,
            max_bytes: 6,
            overflow: 1,
        };
        let d = QueueDeclareBody {
            queue_id: 3,
            settings,
            name: "jobs".into(),
        };
        assert_eq!(QueueDeclareBody::decode(&d.encode()), Ok(d));
        let a = AckBody {
            ranges: vec![(1, 1), (5, 9)],
        };
        assert_eq!(AckBody::decode(&a.encode()), Ok(a));
        let r = RollbackBody {
            id: 9,
            delivery_count: 2,
            disposition: Disposition::Requeue,
            reason: None,
            not_before_ms: 77,
        };
        assert_eq!(RollbackBody::decode(&r.encode()), Ok(r));
        let v = DeliverBody {
            id: 4,
            delivery_count: 1,
        };
        assert_eq!(DeliverBody::decode(&v.encode()), Ok(v));
        let s = SealBody { next_segment_id: 8 };
        assert_eq!(SealBody::decode(&s.encode()), Ok(s));
        let h = PublishHeader {
            id: 1,
            queue_id: 2,
            published_ms: 3,
            expires_ms: 4,
            not_before_ms: 5,
        };
        let m = MoveBody {
            id: 9,
            to_queue: 2,
            reason: MoveReason::Expired,
        };
        assert_eq!(MoveBody::decode(&m.encode()), Ok(m));
        let mut p = h.encode().to_vec();
        p.extend_from_slice(b"payload");
        assert_eq!(
            PublishBody::decode(&p),
            Ok(PublishBody {
                header: h,
                payload: b"payload"
            })
        );
    }

    #[test]
    fn ack_count_is_bounded_before_allocation() {
        let mut body = vec![0u8; 8];
        body[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(AckBody::decode(&body).is_err());
        let a = AckBody {
            ranges: vec![(7, 3)],
        };
        assert!(AckBody::decode(&a.encode()).is_err());
    }

    #[test]
    fn kinds_round_trip() {
        for code in 0..=255u8 {
            if let Some(kind) = RecordKind::from_u8(code) {
                assert_eq!(kind.code(), code);
            }
        }
    }
}
