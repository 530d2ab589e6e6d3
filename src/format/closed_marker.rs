//! The clean-close marker (`docs/format.md`, "The CLOSED file").
//!
//! Written by a clean close after the final commit record is durable, it records where the
//! log ended. The next open requires the log to reach exactly that point, so losing the
//! last records, even together with the commit marker, is reported instead of looking like
//! a torn tail. It is deleted as soon as the store is open again.

use byteorder::{ByteOrder, LittleEndian as LE};

/// The first eight bytes of the marker.
pub const CLOSED_MAGIC: [u8; 8] = *b"WALQCLSD";

const MAGIC_OFF: usize = 0;
const VERSION_OFF: usize = MAGIC_OFF + CLOSED_MAGIC.len();
const SEGMENT_OFF: usize = VERSION_OFF + 8;
const OFFSET_OFF: usize = SEGMENT_OFF + 8;
const CRC_OFF: usize = OFFSET_OFF + 8;

/// Size of the marker file.
pub const CLOSED_MARKER_LEN: usize = CRC_OFF + 8;

const _: () = assert!(CLOSED_MARKER_LEN == 40);

/// Where the log ended when it was closed cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedMarker {
    /// The last segment.
    pub segment: u64,
    /// The end of its last record (just past the commit record).
    pub offset: u64,
}

impl ClosedMarker {
    /// Encodes the marker.
    #[must_use]
    pub fn encode(&self) -> [u8; CLOSED_MARKER_LEN] {
        let mut b = [0u8; CLOSED_MARKER_LEN];
        b[MAGIC_OFF..VERSION_OFF].copy_from_slice(&CLOSED_MAGIC);
        LE::write_u32(&mut b[VERSION_OFF..], super::FORMAT_VERSION);
        LE::write_u64(&mut b[SEGMENT_OFF..], self.segment);
        LE::write_u64(&mut b[OFFSET_OFF..], self.offset);
        let crc = crc32fast::hash(&b[..CRC_OFF]);
        LE::write_u32(&mut b[CRC_OFF..], crc);
        b
    }

    /// Decodes the marker; `None` if the bytes are not exactly a valid marker.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<ClosedMarker> {
        let b: &[u8; CLOSED_MARKER_LEN] = bytes.try_into().ok()?;
        let valid = b[MAGIC_OFF..VERSION_OFF] == CLOSED_MAGIC
            && LE::read_u32(&b[VERSION_OFF..]) == super::FORMAT_VERSION
            && b[VERSION_OFF + 4..SEGMENT_OFF] == [0; 4]
            && b[CRC_OFF + 4..] == [0; 4]
            && crc32fast::hash(&b[..CRC_OFF]) == LE::read_u32(&b[CRC_OFF..]);
        valid.then(|| ClosedMarker {
            segment: LE::read_u64(&b[SEGMENT_OFF..]),
            offset: LE::read_u64(&b[OFFSET_OFF..]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_bit_flip_is_rejected() {
        let m = ClosedMarker {
            segment: 3,
            offset: 4096,
        };
        let bytes = m.encode();
        assert_eq!(ClosedMarker::decode(&bytes), Some(m));
        for bit in 0..CLOSED_MARKER_LEN * 8 {
            let mut bad = bytes;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(ClosedMarker::decode(&bad), None, "bit {bit}");
        }
        assert_eq!(ClosedMarker::decode(&bytes[..39]), None);
    }
}
