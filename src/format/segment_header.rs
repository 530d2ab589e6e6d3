//! The segment header (`docs/format.md`, "Segment header").

use byteorder::{ByteOrder, LittleEndian as LE};

/// The first eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WALQSEG\0";

/// The format version this build writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC_OFF: usize = 0;
const VERSION_OFF: usize = MAGIC_OFF + SEGMENT_MAGIC.len();
const HEADER_LEN_OFF: usize = VERSION_OFF + 4;
const SEGMENT_ID_OFF: usize = HEADER_LEN_OFF + 4;
const SALT_OFF: usize = SEGMENT_ID_OFF + 8;
const CREATED_OFF: usize = SALT_OFF + 8;
const RESERVED_OFF: usize = CREATED_OFF + 8;
const RESERVED_LEN: usize = 20;
const CRC_OFF: usize = RESERVED_OFF + RESERVED_LEN;

/// Size of the segment header; the first record starts right after it.
pub const SEGMENT_HEADER_LEN: usize = CRC_OFF + 4;

const _: () = assert!(SEGMENT_HEADER_LEN == 64);
const _: () = assert!(SEGMENT_HEADER_LEN % super::FRAME_ALIGN == 0);

/// The decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's id; must equal the id in its file name.
    pub segment_id: u64,
    /// A random value chosen when the segment was created, mixed into every record checksum.
    pub salt: u64,
    /// Creation time, milliseconds since the Unix epoch (informational).
    pub created_unix_ms: u64,
}

/// Why a segment header did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentHeaderError {
    /// Fewer than [`SEGMENT_HEADER_LEN`] bytes.
    Short,
    /// The magic number is wrong: not a walq segment.
    BadMagic,
    /// A version other than [`FORMAT_VERSION`].
    UnsupportedVersion(u32),
    /// The header length field disagrees with this version's header size.
    BadHeaderLen(u32),
    /// The header checksum does not match.
    BadChecksum,
    /// Reserved bytes are not zero.
    NonZeroReserved,
}

impl SegmentHeader {
    /// Encodes the header.
    #[must_use]
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut buf = [0u8; SEGMENT_HEADER_LEN];
        buf[MAGIC_OFF..VERSION_OFF].copy_from_slice(&SEGMENT_MAGIC);
        LE::write_u32(&mut buf[VERSION_OFF..], FORMAT_VERSION);
        LE::write_u32(&mut buf[HEADER_LEN_OFF..], SEGMENT_HEADER_LEN as u32);
        LE::write_u64(&mut buf[SEGMENT_ID_OFF..], self.segment_id);
        LE::write_u64(&mut buf[SALT_OFF..], self.salt);
        LE::write_u64(&mut buf[CREATED_OFF..], self.created_unix_ms);
        let crc = crc32fast::hash(&buf[..CRC_OFF]);
        LE::write_u32(&mut buf[CRC_OFF..], crc);
        buf
    }

    /// Decodes and validates a header from the start of `bytes`.
    ///
    /// The magic is checked first and the version second, so a file from a newer walq is
    /// reported as such rather than as a checksum failure.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, SegmentHeaderError> {
        let buf: &[u8; SEGMENT_HEADER_LEN] = bytes
            .get(..SEGMENT_HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(SegmentHeaderError::Short)?;
        if buf[MAGIC_OFF..VERSION_OFF] != SEGMENT_MAGIC {
            return Err(SegmentHeaderError::BadMagic);
        }
        let version = LE::read_u32(&buf[VERSION_OFF..]);
        if version != FORMAT_VERSION {
            return Err(SegmentHeaderError::UnsupportedVersion(version));
        }
        let header_len = LE::read_u32(&buf[HEADER_LEN_OFF..]);
        if header_len as usize != SEGMENT_HEADER_LEN {
            return Err(SegmentHeaderError::BadHeaderLen(header_len));
        }
        if crc32fast::hash(&buf[..CRC_OFF]) != LE::read_u32(&buf[CRC_OFF..]) {
            return Err(SegmentHeaderError::BadChecksum);
        }
        if buf[RESERVED_OFF..CRC_OFF].iter().any(|&b| b != 0) {
            return Err(SegmentHeaderError::NonZeroReserved);
        }
        Ok(SegmentHeader {
            segment_id: LE::read_u64(&buf[SEGMENT_ID_OFF..]),
            salt: LE::read_u64(&buf[SALT_OFF..]),
            created_unix_ms: LE::read_u64(&buf[CREATED_OFF..]),
        })
    }
}

const SEGMENT_SUFFIX: &str = ".wal";
const SEGMENT_ID_DIGITS: usize = 20;

/// The file name of segment `id`: 20 zero-padded decimal digits and `.wal`, so that names
/// sort like ids.
#[must_use]
pub fn segment_file_name(id: u64) -> String {
    format!("{id:0width$}{SEGMENT_SUFFIX}", width = SEGMENT_ID_DIGITS)
}

/// The segment id encoded in a file name, if it is exactly a segment file name.
#[must_use]
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_ID_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = SegmentHeader {
            segment_id: 7,
            salt: 0xdead_beef,
            created_unix_ms: 42,
        };
        assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let h = SegmentHeader {
            segment_id: 7,
            salt: 99,
            created_unix_ms: 42,
        };
        let good = h.encode();
        for bit in 0..SEGMENT_HEADER_LEN * 8 {
            let mut bad = good;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                SegmentHeader::decode(&bad).is_err(),
                "bit {bit} flip accepted"
            );
        }
    }

    #[test]
    fn newer_version_is_reported_as_such() {
        let mut bytes = SegmentHeader {
            segment_id: 1,
            salt: 2,
            created_unix_ms: 3,
        }
        .encode();
        LE::write_u32(&mut bytes[VERSION_OFF..], 2);
        assert_eq!(
            SegmentHeader::decode(&bytes),
            Err(SegmentHeaderError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn file_names_round_trip_and_sort() {
        assert_eq!(parse_segment_file_name(&segment_file_name(12)), Some(12));
        assert!(segment_file_name(9) < segment_file_name(10));
        assert_eq!(parse_segment_file_name("12.wal"), None);
        assert_eq!(parse_segment_file_name("0000000000000000001x.wal"), None);
        assert_eq!(
            parse_segment_file_name(&format!("{}.tmp", segment_file_name(1))),
            None
        );
    }
}
