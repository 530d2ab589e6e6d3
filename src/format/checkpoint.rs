//! The checkpoint file (`docs/format.md`, "Checkpoint files"): a snapshot of the queue state
//! as the log stood at one position, so that recovery replays only the records after it.
//!
//! A checkpoint is a 64-byte header followed by a body of LEB128 varints. The header holds
//! the body's length and a CRC-32 over the sequence number and the body; the header has its
//! own CRC. Every count in the body is bounded by the bytes that remain before anything is
//! allocated, so a damaged file costs at most its own size in memory.

use byteorder::{ByteOrder, LittleEndian as LE};

use super::records::{MoveReason, QueueDeclareBody, QueueSettings};

/// The first eight bytes of every checkpoint file.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"WALQCKP\0";

/// The checkpoint format version this build writes and the only one it reads.
pub const CHECKPOINT_VERSION: u32 = 1;

const MAGIC_OFF: usize = 0;
const VERSION_OFF: usize = MAGIC_OFF + CHECKPOINT_MAGIC.len();
const HEADER_LEN_OFF: usize = VERSION_OFF + 4;
const SEQUENCE_OFF: usize = HEADER_LEN_OFF + 4;
const BODY_LEN_OFF: usize = SEQUENCE_OFF + 8;
const BODY_CRC_OFF: usize = BODY_LEN_OFF + 8;
const RESERVED_OFF: usize = BODY_CRC_OFF + 4;
const RESERVED_LEN: usize = 24;
const CRC_OFF: usize = RESERVED_OFF + RESERVED_LEN;

/// Size of the checkpoint header.
pub const CHECKPOINT_HEADER_LEN: usize = CRC_OFF + 4;

const _: () = assert!(CHECKPOINT_HEADER_LEN == 64);

/// Largest body a checkpoint may declare (16 GiB): a length beyond it is damage, not data.
pub const MAX_CHECKPOINT_BODY: u64 = 16 << 30;

/// Counters of one queue, in the order of `docs/format.md`: unacked (always 0 on disk),
/// published, acked, rejected, expired, dead-lettered, dropped.
pub const QUEUE_COUNTERS: usize = 7;

/// One declared queue, as the checkpoint keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointQueue {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub settings: QueueSettings,
    /// Its counters (see [`QUEUE_COUNTERS`]).
    pub counters: [u64; QUEUE_COUNTERS],
}

/// One unsettled message, as the checkpoint keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointMessage {
    /// Its id.
    pub id: u64,
    /// The segment holding its payload record (a publish or relocate record).
    pub segment: u64,
    /// That record's offset.
    pub offset: u64,
    /// Its payload length.
    pub len: u32,
    /// The queue it is in now.
    pub queue: u32,
    /// Deliveries recorded in the log so far.
    pub delivery_count: u32,
    /// When it expires (0: never).
    pub expires_ms: u64,
    /// Not to be delivered before this time (0: no delay).
    pub not_before_ms: u64,
    /// If dead-lettered: the queue it came from and why.
    pub origin: Option<(u32, MoveReason)>,
}

/// A decoded checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Increases with every checkpoint of a store; also in the file name.
    pub sequence: u64,
    /// Replay starts at this segment...
    pub segment: u64,
    /// ...and this offset: every record before it is reflected here.
    pub offset: u64,
    /// The id the next published message gets.
    pub next_message_id: u64,
    /// Messages acknowledged over the store's life.
    pub acked_total: u64,
    /// Messages rejected over the store's life.
    pub rejected_total: u64,
    /// Declared queues, in queue-id order.
    pub queues: Vec<CheckpointQueue>,
    /// Unsettled messages, by increasing id.
    pub messages: Vec<CheckpointMessage>,
}

/// Why a checkpoint did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointError {
    /// Shorter than its header, or than the body length the header declares.
    Short,
    /// Not a checkpoint file.
    BadMagic,
    /// A version other than [`CHECKPOINT_VERSION`].
    UnsupportedVersion(u32),
    /// The header or body checksum does not match.
    BadChecksum,
    /// The header is intact but the body breaks a rule of the format.
    Invalid(&'static str),
}

impl std::fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointError::Short => f.write_str("checkpoint file is truncated"),
            CheckpointError::BadMagic => f.write_str("not a walq checkpoint file"),
            CheckpointError::UnsupportedVersion(v) => write!(
                f,
                "checkpoint format version {v}, this build reads version {CHECKPOINT_VERSION}"
            ),
            CheckpointError::BadChecksum => f.write_str("checkpoint checksum mismatch"),
            CheckpointError::Invalid(why) => write!(f, "invalid checkpoint: {why}"),
        }
    }
}

const FLAG_COUNT: u8 = 1;
const FLAG_EXPIRES: u8 = 2;
const FLAG_NOT_BEFORE: u8 = 4;
const FLAG_ORIGIN: u8 = 8;
const KNOWN_FLAGS: u8 = FLAG_COUNT | FLAG_EXPIRES | FLAG_NOT_BEFORE | FLAG_ORIGIN;

/// The fewest bytes one encoded message takes (id delta, segment, offset, length, queue,
/// flags): bounds the message count by the bytes present.
const MIN_MESSAGE_LEN: usize = 6;
/// The fewest bytes one encoded queue takes (declaration length + declaration + counters).
const MIN_QUEUE_LEN: usize = 1 + 57 + QUEUE_COUNTERS;

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads varints and bytes from a body, front to back.
#[derive(Debug, Clone)]
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, CheckpointError> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self.0.split_first().ok_or(CheckpointError::Short)?;
            self.0 = rest;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && byte > 1 {
                return Err(CheckpointError::Invalid("varint overflows 64 bits"));
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(CheckpointError::Invalid("overlong varint"));
                }
                return Ok(value);
            }
        }
        Err(CheckpointError::Invalid("varint longer than 10 bytes"))
    }

    fn u32(&mut self) -> Result<u32, CheckpointError> {
        u32::try_from(self.varint()?).map_err(|_| CheckpointError::Invalid("value exceeds 32 bits"))
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], CheckpointError> {
        if len > self.0.len() {
            return Err(CheckpointError::Short);
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    /// A count of items each at least `min_len` bytes long, bounded by what remains.
    fn count(&mut self, min_len: usize) -> Result<usize, CheckpointError> {
        let n = self.varint()?;
        if n > (self.0.len() / min_len) as u64 {
            return Err(CheckpointError::Invalid("count exceeds the bytes present"));
        }
        Ok(n as usize)
    }
}

fn body_checksum(sequence: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&sequence.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

/// The most body bytes [`Checkpoint::encode_to`] hands its sink at once.
pub const ENCODE_PIECE: usize = 1 << 20;

/// What [`Checkpoint::encode_to`] produced besides the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedCheckpoint {
    /// The file header, to be written before the body.
    pub header: [u8; CHECKPOINT_HEADER_LEN],
    /// Body bytes handed to the sink.
    pub body_len: u64,
    /// Messages the iterator yielded.
    pub messages: u64,
}

impl Checkpoint {
    /// Encodes the checkpoint: header and body. Messages must be sorted by id.
    ///
    /// Cost: linear in the number of messages; a typical message takes 8 to 12 bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; CHECKPOINT_HEADER_LEN];
        let encoded = self.encode_to(
            self.messages.len() as u64,
            self.messages.iter().copied(),
            |piece| {
                out.extend_from_slice(piece);
                Ok::<(), std::convert::Infallible>(())
            },
        );
        let Ok(encoded) = encoded;
        out[..CHECKPOINT_HEADER_LEN].copy_from_slice(&encoded.header);
        out
    }

    /// Encodes the checkpoint with `messages` (sorted by id) in place of `self.messages`,
    /// which is ignored, streaming: the body goes to `sink` in pieces of at most
    /// [`ENCODE_PIECE`] bytes, in order, and the header, which must precede the body in the
    /// file, is returned last. A store writes its checkpoints this way, straight from its
    /// message table, with no copy of every message and no buffer of the whole file.
    ///
    /// `count` is written before the messages; the caller must check that
    /// [`EncodedCheckpoint::messages`] equals it (else the file does not decode and must not be used).
    ///
    /// Cost: linear in the number of messages; memory: one piece.
    pub fn encode_to<E>(
        &self,
        count: u64,
        messages: impl IntoIterator<Item = CheckpointMessage>,
        mut sink: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<EncodedCheckpoint, E> {
        let mut body = Vec::with_capacity(ENCODE_PIECE + 64);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.sequence.to_le_bytes());
        let mut body_len = 0u64;
        let mut flush = |body: &mut Vec<u8>, at_least: usize| -> Result<(), E> {
            if body.len() >= at_least {
                crc.update(body);
                body_len += body.len() as u64;
                sink(body)?;
                body.clear();
            }
            Ok(())
        };
        for v in [
            self.segment,
            self.offset,
            self.next_message_id,
            self.acked_total,
            self.rejected_total,
        ] {
            put(&mut body, v);
        }
        put(&mut body, self.queues.len() as u64);
        for (i, q) in self.queues.iter().enumerate() {
            let decl = QueueDeclareBody {
                queue_id: i as u32,
                settings: q.settings,
                name: q.name.clone(),
            }
            .encode();
            put(&mut body, decl.len() as u64);
            body.extend_from_slice(&decl);
            for &c in &q.counters {
                put(&mut body, c);
            }
            flush(&mut body, ENCODE_PIECE)?;
        }
        put(&mut body, count);
        let mut written = 0u64;
        let mut prev_id = 0u64;
        let mut prev_segment = self.segment;
        for m in messages {
            written += 1;
            put(&mut body, m.id.wrapping_sub(prev_id));
            prev_id = m.id;
            // Zigzag delta: relocated messages sit in later segments than their neighbours.
            let delta = m.segment.wrapping_sub(prev_segment) as i64;
            put(&mut body, ((delta << 1) ^ (delta >> 63)) as u64);
            prev_segment = m.segment;
            put(&mut body, m.offset);
            put(&mut body, u64::from(m.len));
            put(&mut body, u64::from(m.queue));
            let flags = [
                (m.delivery_count != 0, FLAG_COUNT),
                (m.expires_ms != 0, FLAG_EXPIRES),
                (m.not_before_ms != 0, FLAG_NOT_BEFORE),
                (m.origin.is_some(), FLAG_ORIGIN),
            ]
            .iter()
            .filter(|(set, _)| *set)
            .fold(0, |acc, (_, f)| acc | f);
            body.push(flags);
            if m.delivery_count != 0 {
                put(&mut body, u64::from(m.delivery_count));
            }
            if m.expires_ms != 0 {
                put(&mut body, m.expires_ms);
            }
            if m.not_before_ms != 0 {
                put(&mut body, m.not_before_ms);
            }
            if let Some((queue, reason)) = m.origin {
                put(&mut body, u64::from(queue));
                body.push(reason as u8);
            }
            flush(&mut body, ENCODE_PIECE)?;
        }
        flush(&mut body, 0)?;
        let mut header = [0u8; CHECKPOINT_HEADER_LEN];
        header[MAGIC_OFF..VERSION_OFF].copy_from_slice(&CHECKPOINT_MAGIC);
        LE::write_u32(&mut header[VERSION_OFF..], CHECKPOINT_VERSION);
        LE::write_u32(&mut header[HEADER_LEN_OFF..], CHECKPOINT_HEADER_LEN as u32);
        LE::write_u64(&mut header[SEQUENCE_OFF..], self.sequence);
        LE::write_u64(&mut header[BODY_LEN_OFF..], body_len);
        LE::write_u32(&mut header[BODY_CRC_OFF..], crc.finalize());
        let header_crc = crc32fast::hash(&header[..CRC_OFF]);
        LE::write_u32(&mut header[CRC_OFF..], header_crc);
        Ok(EncodedCheckpoint {
            header,
            body_len,
            messages: written,
        })
    }

    /// Decodes and validates a whole checkpoint file.
    ///
    /// Checks, in order: magic, version, header checksum, body length against the bytes
    /// present, body checksum, then every field (ids strictly increasing and below
    /// `next_message_id`, queues and origins naming declared queues, known flags and move
    /// reasons, no trailing bytes). Never panics; allocates at most in proportion to `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
        let (mut cp, messages) = Checkpoint::decode_lazy(bytes)?;
        cp.messages.reserve(messages.count_declared());
        for m in messages {
            cp.messages.push(m?);
        }
        Ok(cp)
    }

    /// Decodes and validates the header, the scalars and the queues, and returns them with
    /// the messages still encoded, as an iterator that decodes (and validates) each in
    /// turn: a checkpoint of millions of messages is loaded without a decoded copy of all
    /// of them. `messages` of the returned checkpoint is empty.
    ///
    /// Checks the same as [`Checkpoint::decode`], the messages' rules as they are read.
    pub fn decode_lazy(
        bytes: &[u8],
    ) -> Result<(Checkpoint, CheckpointMessages<'_>), CheckpointError> {
        let head: &[u8; CHECKPOINT_HEADER_LEN] = bytes
            .get(..CHECKPOINT_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(CheckpointError::Short)?;
        if head[MAGIC_OFF..VERSION_OFF] != CHECKPOINT_MAGIC {
            return Err(CheckpointError::BadMagic);
        }
        let version = LE::read_u32(&head[VERSION_OFF..]);
        if version != CHECKPOINT_VERSION {
            return Err(CheckpointError::UnsupportedVersion(version));
        }
        if LE::read_u32(&head[CRC_OFF..]) != crc32fast::hash(&head[..CRC_OFF]) {
            return Err(CheckpointError::BadChecksum);
        }
        if LE::read_u32(&head[HEADER_LEN_OFF..]) != CHECKPOINT_HEADER_LEN as u32
            || head[RESERVED_OFF..CRC_OFF].iter().any(|&b| b != 0)
        {
            return Err(CheckpointError::Invalid(
                "bad header length or reserved bytes",
            ));
        }
        let sequence = LE::read_u64(&head[SEQUENCE_OFF..]);
        let body_len = LE::read_u64(&head[BODY_LEN_OFF..]);
        let rest = &bytes[CHECKPOINT_HEADER_LEN..];
        if body_len > MAX_CHECKPOINT_BODY || body_len != rest.len() as u64 {
            return Err(CheckpointError::Short);
        }
        if LE::read_u32(&head[BODY_CRC_OFF..]) != body_checksum(sequence, rest) {
            return Err(CheckpointError::BadChecksum);
        }
        let mut r = Reader(rest);
        let mut cp = Checkpoint {
            sequence,
            segment: r.varint()?,
            offset: r.varint()?,
            next_message_id: r.varint()?,
            acked_total: r.varint()?,
            rejected_total: r.varint()?,
            queues: Vec::new(),
            messages: Vec::new(),
        };
        let queues = r.count(MIN_QUEUE_LEN)?;
        cp.queues.reserve(queues);
        for i in 0..queues {
            let len = usize::try_from(r.varint()?)
                .map_err(|_| CheckpointError::Invalid("declaration length"))?;
            let decl = QueueDeclareBody::decode(r.bytes(len)?).map_err(CheckpointError::Invalid)?;
            if decl.queue_id as usize != i {
                return Err(CheckpointError::Invalid("queues out of order"));
            }
            let dlq = decl.settings.dead_letter_queue;
            if dlq != super::NO_QUEUE && dlq as usize >= i {
                return Err(CheckpointError::Invalid(
                    "dead-letter queue not declared before its queue",
                ));
            }
            let mut counters = [0u64; QUEUE_COUNTERS];
            for c in &mut counters {
                *c = r.varint()?;
            }
            cp.queues.push(CheckpointQueue {
                name: decl.name,
                settings: decl.settings,
                counters,
            });
        }
        let count = r.count(MIN_MESSAGE_LEN)?;
        let messages = CheckpointMessages {
            r,
            remaining: count,
            count,
            prev_id: 0,
            prev_segment: cp.segment,
            next_message_id: cp.next_message_id,
            queues: cp.queues.len(),
        };
        Ok((cp, messages))
    }
}

/// The messages of a checkpoint, decoded one at a time (see [`Checkpoint::decode_lazy`]).
///
/// Yields an error for the first message that breaks a rule of the format, or, after the
/// last message, for trailing bytes; then ends.
#[derive(Debug, Clone)]
pub struct CheckpointMessages<'a> {
    r: Reader<'a>,
    remaining: usize,
    count: usize,
    prev_id: u64,
    prev_segment: u64,
    next_message_id: u64,
    queues: usize,
}

impl CheckpointMessages<'_> {
    /// The number of messages the checkpoint declares (bounded by its bytes).
    #[must_use]
    pub fn count_declared(&self) -> usize {
        self.count
    }

    fn decode_next(&mut self) -> Result<CheckpointMessage, CheckpointError> {
        let r = &mut self.r;
        let delta = r.varint()?;
        if self.remaining + 1 < self.count && delta == 0 {
            return Err(CheckpointError::Invalid("message ids not increasing"));
        }
        let id = self
            .prev_id
            .checked_add(delta)
            .filter(|&id| id < self.next_message_id)
            .ok_or(CheckpointError::Invalid(
                "message id beyond next_message_id",
            ))?;
        self.prev_id = id;
        let zz = r.varint()?;
        let delta = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
        let segment = self.prev_segment.wrapping_add(delta as u64);
        self.prev_segment = segment;
        let offset = r.varint()?;
        let len = r.u32()?;
        let queue = r.u32()?;
        if queue as usize >= self.queues {
            return Err(CheckpointError::Invalid("message in an undeclared queue"));
        }
        let flags = r.bytes(1)?[0];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(CheckpointError::Invalid("unknown message flags"));
        }
        let mut m = CheckpointMessage {
            id,
            segment,
            offset,
            len,
            queue,
            delivery_count: 0,
            expires_ms: 0,
            not_before_ms: 0,
            origin: None,
        };
        // A flag announces a non-zero value: one encoding per checkpoint.
        let nonzero = |v: u64| {
            (v != 0)
                .then_some(v)
                .ok_or(CheckpointError::Invalid("zero value under a presence flag"))
        };
        if flags & FLAG_COUNT != 0 {
            m.delivery_count = r.u32()?;
            nonzero(u64::from(m.delivery_count))?;
        }
        if flags & FLAG_EXPIRES != 0 {
            m.expires_ms = nonzero(r.varint()?)?;
        }
        if flags & FLAG_NOT_BEFORE != 0 {
            m.not_before_ms = nonzero(r.varint()?)?;
        }
        if flags & FLAG_ORIGIN != 0 {
            let from = r.u32()?;
            let reason = MoveReason::from_u8(r.bytes(1)?[0])
                .ok_or(CheckpointError::Invalid("unknown move reason"))?;
            if from as usize >= self.queues {
                return Err(CheckpointError::Invalid("origin is an undeclared queue"));
            }
            m.origin = Some((from, reason));
        }
        Ok(m)
    }
}

impl Iterator for CheckpointMessages<'_> {
    type Item = Result<CheckpointMessage, CheckpointError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            if self.r.0.is_empty() {
                return None;
            }
            self.r.0 = &[];
            return Some(Err(CheckpointError::Invalid(
                "trailing bytes after the last message",
            )));
        }
        self.remaining -= 1;
        let item = self.decode_next();
        if item.is_err() {
            // Nothing after a broken message can be trusted.
            self.remaining = 0;
            self.r.0 = &[];
        }
        Some(item)
    }
}

/// The file name of checkpoint `sequence`: `checkpoint-` and 20 decimal digits, then `.ckpt`.
#[must_use]
pub fn checkpoint_file_name(sequence: u64) -> String {
    format!("checkpoint-{sequence:020}.ckpt")
}

/// The sequence number in a checkpoint file name, if it is one.
#[must_use]
pub fn parse_checkpoint_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("checkpoint-")?.strip_suffix(".ckpt")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            sequence: 7,
            segment: 12,
            offset: 4096,
            next_message_id: 1000,
            acked_total: 900,
            rejected_total: 3,
            queues: vec![
                CheckpointQueue {
                    name: "dead".into(),
                    settings: QueueSettings::default(),
                    counters: [0, 5, 4, 0, 0, 0, 0],
                },
                CheckpointQueue {
                    name: "jobs".into(),
                    settings: QueueSettings {
                        dead_letter_queue: 0,
                        max_deliveries: 3,
                        ..QueueSettings::default()
                    },
                    counters: [0, 995, 896, 3, 1, 5, 0],
                },
            ],
            messages: vec![
                CheckpointMessage {
                    id: 5,
                    segment: 3,
                    offset: 64,
                    len: 100,
                    queue: 0,
                    delivery_count: 0,
                    expires_ms: 0,
                    not_before_ms: 0,
                    origin: Some((1, MoveReason::DeliveryLimit)),
                },
                CheckpointMessage {
                    id: 999,
                    segment: 12,
                    offset: 1 << 29,
                    len: 0,
                    queue: 1,
                    delivery_count: 2,
                    expires_ms: u64::MAX,
                    not_before_ms: 1_700_000_000_000,
                    origin: None,
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let cp = sample();
        assert_eq!(Checkpoint::decode(&cp.encode()), Ok(cp));
        let empty = Checkpoint::default();
        assert_eq!(Checkpoint::decode(&empty.encode()), Ok(empty));
    }

    /// Streamed encoding, in one piece or many, writes the bytes of the whole-file encoding,
    /// and they decode, lazily, to the same checkpoint and messages.
    #[test]
    fn streamed_encoding_and_lazy_decoding_round_trip() {
        for n in [0u64, 1, 127, 128, 16_384, 200_000] {
            let mut cp = sample();
            cp.next_message_id = 1_000_000;
            cp.messages = (0..n)
                .map(|i| CheckpointMessage {
                    id: i * 2 + 1,
                    segment: 12 + i / 1000,
                    offset: 64 + i * 140,
                    len: 100,
                    queue: (i % 2) as u32,
                    delivery_count: (i % 3) as u32,
                    expires_ms: 0,
                    not_before_ms: 0,
                    origin: None,
                })
                .collect();
            let plain = cp.encode();
            let head = Checkpoint {
                messages: Vec::new(),
                ..cp.clone()
            };
            let mut streamed = Vec::new();
            let mut pieces = 0;
            let encoded = head
                .encode_to(n, cp.messages.iter().copied(), |piece| {
                    assert!(!piece.is_empty() && piece.len() <= ENCODE_PIECE + 64);
                    pieces += 1;
                    streamed.extend_from_slice(piece);
                    Ok::<(), ()>(())
                })
                .expect("no sink error");
            assert_eq!(encoded.messages, n);
            assert_eq!(encoded.body_len, streamed.len() as u64);
            assert_eq!(&plain[..CHECKPOINT_HEADER_LEN], &encoded.header[..], "{n}");
            assert_eq!(&plain[CHECKPOINT_HEADER_LEN..], &streamed[..], "{n}");
            assert!(n < 100_000 || pieces > 1, "{n} messages in {pieces} pieces");
            let (lazy_head, messages) = Checkpoint::decode_lazy(&plain).expect("valid");
            assert_eq!(lazy_head, head);
            assert_eq!(messages.count_declared() as u64, n);
            let decoded: Vec<CheckpointMessage> =
                messages.collect::<Result<_, _>>().expect("valid messages");
            assert_eq!(decoded, cp.messages);
        }
    }

    #[test]
    fn every_truncation_and_bit_flip_is_rejected() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(Checkpoint::decode(&bytes[..len]).is_err(), "prefix {len}");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                assert!(Checkpoint::decode(&damaged).is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn versions_and_magic_are_checked_first() {
        let mut bytes = sample().encode();
        LE::write_u32(&mut bytes[VERSION_OFF..], 2);
        assert_eq!(
            Checkpoint::decode(&bytes),
            Err(CheckpointError::UnsupportedVersion(2))
        );
        bytes[0] = b'X';
        assert_eq!(Checkpoint::decode(&bytes), Err(CheckpointError::BadMagic));
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(
            parse_checkpoint_file_name(&checkpoint_file_name(42)),
            Some(42)
        );
        assert_eq!(parse_checkpoint_file_name("checkpoint-42.ckpt"), None);
        assert_eq!(
            parse_checkpoint_file_name("checkpoint-00000000000000000042.tmp"),
            None
        );
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let cp = Checkpoint {
            next_message_id: 10,
            ..Checkpoint::default()
        };
        let mut bytes = cp.encode();
        // Replace the message count (the body's last byte, 0) with 2^62.
        bytes.pop();
        let mut count = Vec::new();
        put(&mut count, 1 << 62);
        bytes.extend_from_slice(&count);
        let body_len = (bytes.len() - CHECKPOINT_HEADER_LEN) as u64;
        LE::write_u64(&mut bytes[BODY_LEN_OFF..], body_len);
        let crc = body_checksum(0, &bytes[CHECKPOINT_HEADER_LEN..]);
        LE::write_u32(&mut bytes[BODY_CRC_OFF..], crc);
        let head = crc32fast::hash(&bytes[..CRC_OFF]);
        LE::write_u32(&mut bytes[CRC_OFF..], head);
        assert_eq!(
            Checkpoint::decode(&bytes),
            Err(CheckpointError::Invalid("count exceeds the bytes present"))
        );
    }
}
