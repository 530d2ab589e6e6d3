//! Record framing (`docs/format.md`, "Record frame").
//!
//! ```text
//! 0        4        8     9      10         12       16
//! +--------+--------+-----+------+----------+--------+----------------+---------+
//! | crc    | len    | kind| flags| reserved | mark   | body (len B)   | padding |
//! | u32 LE | u32 LE | u8  | u8   | u16 = 0  | u32 LE |                | zeros   |
//! +--------+--------+-----+------+----------+--------+----------------+---------+
//! ```
//! Frames start at 8-byte aligned offsets and are padded with zeros to the next one.

use byteorder::{ByteOrder, LittleEndian as LE};

use super::checksum::record_checksum;

const CRC_OFF: usize = 0;
const LEN_OFF: usize = CRC_OFF + 4;
const KIND_OFF: usize = LEN_OFF + 4;
const FLAGS_OFF: usize = KIND_OFF + 1;
const RESERVED_OFF: usize = FLAGS_OFF + 1;
const MARK_OFF: usize = RESERVED_OFF + 2;

/// Size of a frame header.
pub const FRAME_HEADER_LEN: usize = MARK_OFF + 4;

/// Frames start at offsets that are multiples of this.
pub const FRAME_ALIGN: usize = 8;

/// The largest frame (header, body and padding) the format allows: 64 MiB.
pub const MAX_FRAME_LEN: usize = 64 << 20;

/// The largest body the format allows.
pub const MAX_BODY_LEN: usize = MAX_FRAME_LEN - FRAME_HEADER_LEN;

const _: () = assert!(FRAME_HEADER_LEN == 16);
const _: () = assert!(FRAME_HEADER_LEN % FRAME_ALIGN == 0);
const _: () = assert!(MAX_FRAME_LEN % FRAME_ALIGN == 0);
const _: () = assert!(MAX_FRAME_LEN <= u32::MAX as usize);

/// Flag bits of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordFlags(pub u8);

impl RecordFlags {
    /// No flags.
    pub const NONE: RecordFlags = RecordFlags(0);
    /// The record is part of an atomic group and is not its last record: the group is applied
    /// only if the frame that ends it (without this flag) is valid too.
    pub const CONTINUES: RecordFlags = RecordFlags(1);
    /// Every flag bit this version defines; frames with other bits set are invalid.
    pub const KNOWN: u8 = 1;

    /// Whether the `CONTINUES` bit is set.
    #[must_use]
    pub fn continues(self) -> bool {
        self.0 & Self::CONTINUES.0 != 0
    }
}

/// The fields of a frame header other than the checksum and the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The record kind (never 0).
    pub kind: u8,
    /// Flag bits.
    pub flags: RecordFlags,
    /// The durable mark: the offset in this segment up to which the log was known durable
    /// when the record was written (0 if nothing in this segment was).
    pub mark: u32,
}

/// The total length of a frame holding `body_len` body bytes, padding included.
#[must_use]
pub const fn frame_len(body_len: usize) -> usize {
    (FRAME_HEADER_LEN + body_len).div_ceil(FRAME_ALIGN) * FRAME_ALIGN
}

/// Appends the frame whose body is the concatenation of `body_parts` to `out`, for segment
/// offset `offset`.
///
/// The caller has checked that the body is at most [`MAX_BODY_LEN`] bytes (the log refuses
/// larger records before writing anything) and that `offset` is a multiple of
/// [`FRAME_ALIGN`]. Taking the body in parts lets a publish frame its fixed fields and the
/// caller's payload without first copying them together.
pub fn encode_frame(
    out: &mut Vec<u8>,
    salt: u64,
    segment_id: u64,
    offset: u64,
    header: FrameHeader,
    body_parts: &[&[u8]],
) {
    let body_len: usize = body_parts.iter().map(|p| p.len()).sum();
    debug_assert!(body_len <= MAX_BODY_LEN);
    debug_assert!(offset % FRAME_ALIGN as u64 == 0);
    let mut head = [0u8; FRAME_HEADER_LEN];
    LE::write_u32(&mut head[LEN_OFF..], body_len as u32);
    head[KIND_OFF] = header.kind;
    head[FLAGS_OFF] = header.flags.0;
    LE::write_u32(&mut head[MARK_OFF..], header.mark);
    let crc = record_checksum(salt, segment_id, offset, &head, body_parts);
    LE::write_u32(&mut head[CRC_OFF..], crc);
    out.extend_from_slice(&head);
    for part in body_parts {
        out.extend_from_slice(part);
    }
    let padding = frame_len(body_len) - FRAME_HEADER_LEN - body_len;
    out.extend_from_slice(&[0u8; FRAME_ALIGN][..padding]);
}

/// A frame that decoded and verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The frame's header fields.
    pub header: FrameHeader,
    /// The body bytes.
    pub body: &'a [u8],
    /// The offset just past this frame's padding, where the next frame starts.
    pub next_offset: u64,
}

/// Why no valid frame starts at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer than [`FRAME_HEADER_LEN`] bytes remain.
    Truncated,
    /// The header is all zeros (unwritten, preallocated space).
    Zeroed,
    /// The length field exceeds [`MAX_BODY_LEN`] or the bytes remaining.
    BadLength(u32),
    /// Kind 0, unknown flag bits or non-zero reserved bytes.
    BadHeader,
    /// The checksum does not match (torn, corrupt or stale bytes).
    BadChecksum,
    /// Padding bytes after the body are not zero.
    BadPadding,
    /// The offset is not aligned.
    Misaligned,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated => write!(f, "frame header cut short by the end of the file"),
            FrameError::Zeroed => write!(f, "zero bytes where a frame was expected"),
            FrameError::BadLength(n) => write!(f, "length field {n} is out of bounds"),
            FrameError::BadHeader => write!(f, "invalid kind, flags or reserved bytes"),
            FrameError::BadChecksum => write!(f, "checksum mismatch"),
            FrameError::BadPadding => write!(f, "non-zero padding"),
            FrameError::Misaligned => write!(f, "misaligned frame offset"),
        }
    }
}

/// Decodes and verifies the frame at the start of `rest`, which lies at `offset` in the
/// segment whose header gave `salt` and `segment_id`. `rest` runs to the end of the bytes
/// available (the end of the segment file, or of a read buffer).
///
/// The length field is bounded by [`MAX_BODY_LEN`] and by the bytes present before it is
/// used; the body is borrowed, never copied.
pub fn decode_frame(
    rest: &[u8],
    salt: u64,
    segment_id: u64,
    offset: u64,
) -> Result<RecordView<'_>, FrameError> {
    decode_frame_with(rest, offset, Some((salt, segment_id)))
}

/// [`decode_frame`] with the checksum check (check 6 of `docs/format.md`, "Record frame")
/// made only if `checksum` gives the segment's salt and id; every other check is made.
///
/// `None` is for a frame whose checksum was verified already, at this same offset of the
/// same unchanging bytes: recovery verifies checksums ahead of its scan on a second thread.
pub(crate) fn decode_frame_with(
    rest: &[u8],
    offset: u64,
    checksum: Option<(u64, u64)>,
) -> Result<RecordView<'_>, FrameError> {
    if offset % FRAME_ALIGN as u64 != 0 {
        return Err(FrameError::Misaligned);
    }
    let head: &[u8; FRAME_HEADER_LEN] = rest
        .get(..FRAME_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Truncated)?;
    if head.iter().all(|&b| b == 0) {
        return Err(FrameError::Zeroed);
    }
    let len = LE::read_u32(&head[LEN_OFF..]);
    let body_len = len as usize;
    let total = frame_len(body_len);
    if body_len > MAX_BODY_LEN || total > rest.len() {
        return Err(FrameError::BadLength(len));
    }
    let kind = head[KIND_OFF];
    let flags = head[FLAGS_OFF];
    if kind == 0 || flags & !RecordFlags::KNOWN != 0 || head[RESERVED_OFF..MARK_OFF] != [0, 0] {
        return Err(FrameError::BadHeader);
    }
    let body = rest
        .get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + body_len)
        .ok_or(FrameError::Truncated)?;
    if let Some((salt, segment_id)) = checksum {
        let crc = record_checksum(salt, segment_id, offset, head, &[body]);
        if crc != LE::read_u32(&head[CRC_OFF..]) {
            return Err(FrameError::BadChecksum);
        }
    }
    let padding = rest
        .get(FRAME_HEADER_LEN + body_len..total)
        .ok_or(FrameError::Truncated)?;
    if padding.iter().any(|&b| b != 0) {
        return Err(FrameError::BadPadding);
    }
    let header = FrameHeader {
        kind,
        flags: RecordFlags(flags),
        mark: LE::read_u32(&head[MARK_OFF..]),
    };
    Ok(RecordView {
        header,
        body,
        next_offset: offset + total as u64,
    })
}

/// The length of the leading run of zero bytes in `bytes`, rounded down to whole
/// [`FRAME_ALIGN`] words (so the result is an aligned offset when `bytes` starts at one).
///
/// Cost: one pass over the run, 256 bytes at a time with no branch inside a block (the
/// compiler turns a block into a few vector loads and ORs), then a word at a time in the
/// block that holds the first non-zero byte; recovery uses it to skip the preallocated
/// (zero-filled) tail of an open segment, often most of the file, so it must run at memory
/// speed.
pub fn zero_run(bytes: &[u8]) -> usize {
    const WORD: usize = FRAME_ALIGN;
    const BLOCK: usize = 32 * WORD;
    let mut len = 0;
    for block in bytes.chunks_exact(BLOCK) {
        if !block_is_zero(block) {
            break;
        }
        len += BLOCK;
    }
    let rest = bytes.get(len..).unwrap_or_default();
    for word in rest.chunks_exact(WORD) {
        if word.iter().any(|&b| b != 0) {
            break;
        }
        len += WORD;
    }
    len
}

/// Whether `block` is all zero: an OR of all its 8-byte words, without an early exit (so
/// that it vectorises).
#[inline]
fn block_is_zero(block: &[u8]) -> bool {
    let mut acc = 0u64;
    let words = block.chunks_exact(8);
    let tail = words.remainder();
    for word in words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        acc |= u64::from_ne_bytes(w);
    }
    acc == 0 && tail.iter().all(|&b| b == 0)
}

/// Whether every byte of `bytes` is zero (see [`zero_run`] for the cost).
pub fn all_zero(bytes: &[u8]) -> bool {
    let run = zero_run(bytes);
    bytes.get(run..).unwrap_or_default().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: u64 = 0x1234_5678_9abc_def0;

    fn segment_with(body: &[u8], offset: u64) -> Vec<u8> {
        let mut seg = vec![0u8; offset as usize];
        let header = FrameHeader {
            kind: 17,
            flags: RecordFlags::NONE,
            mark: 3,
        };
        encode_frame(&mut seg, SALT, 5, offset, header, &[body]);
        seg
    }

    #[test]
    fn round_trip_with_padding() {
        for len in 0..20 {
            let body: Vec<u8> = (0..len as u8).collect();
            let seg = segment_with(&body, 64);
            assert_eq!(seg.len() % FRAME_ALIGN, 0);
            let rec = decode_frame(&seg[64..], SALT, 5, 64).unwrap();
            assert_eq!(rec.body, &body[..]);
            assert_eq!(rec.header.kind, 17);
            assert_eq!(rec.header.mark, 3);
            assert_eq!(rec.next_offset, seg.len() as u64);
        }
    }

    #[test]
    fn any_bit_flip_fails() {
        let seg = segment_with(b"hello, walq", 0);
        for bit in 0..seg.len() * 8 {
            let mut bad = seg.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_frame(&bad, SALT, 5, 0).is_err(),
                "flip of bit {bit} accepted"
            );
        }
    }

    #[test]
    fn identity_is_part_of_the_checksum() {
        let seg = segment_with(b"payload", 8);
        let frame = &seg[8..];
        assert!(decode_frame(frame, SALT, 5, 8).is_ok());
        assert_eq!(
            decode_frame(frame, SALT ^ 1, 5, 8),
            Err(FrameError::BadChecksum)
        );
        assert_eq!(
            decode_frame(frame, SALT, 6, 8),
            Err(FrameError::BadChecksum)
        );
        // The same bytes at another offset do not verify either.
        assert_eq!(
            decode_frame(frame, SALT, 5, 16),
            Err(FrameError::BadChecksum)
        );
    }

    #[test]
    fn huge_length_is_rejected_without_allocating() {
        let mut seg = segment_with(b"x", 0);
        LE::write_u32(&mut seg[LEN_OFF..], u32::MAX);
        assert_eq!(
            decode_frame(&seg, SALT, 5, 0),
            Err(FrameError::BadLength(u32::MAX))
        );
    }

    #[test]
    fn zeros_and_short_input() {
        assert_eq!(
            decode_frame(&[0u8; 64], SALT, 5, 0),
            Err(FrameError::Zeroed)
        );
        assert_eq!(
            decode_frame(&[1u8; 8], SALT, 5, 0),
            Err(FrameError::Truncated)
        );
        assert_eq!(
            decode_frame(&[1u8; 64], SALT, 5, 4),
            Err(FrameError::Misaligned)
        );
    }
    #[test]
    fn zero_runs_stop_at_the_first_non_zero_word() {
        let mut bytes = vec![0u8; 1000];
        assert_eq!(zero_run(&bytes), 1000);
        assert!(all_zero(&bytes));
        for at in [0usize, 7, 8, 63, 64, 65, 511, 999] {
            bytes[at] = 1;
            assert_eq!(
                zero_run(&bytes),
                at / FRAME_ALIGN * FRAME_ALIGN,
                "byte {at}"
            );
            assert!(!all_zero(&bytes), "byte {at}");
            bytes[at] = 0;
        }
        assert_eq!(zero_run(&bytes[..13]), 8);
        assert!(all_zero(&bytes[..13]));
        assert!(all_zero(&[]));
    }
}
