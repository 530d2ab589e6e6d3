//! The record checksum (`docs/format.md`, "Record checksum").

use std::sync::OnceLock;

use super::frame::FRAME_HEADER_LEN;

/// Bytes of the frame header covered by the checksum: everything after the 4-byte checksum
/// field.
const HEADER_REST_LEN: usize = FRAME_HEADER_LEN - 4;

/// A hasher with nothing hashed yet, made once: `crc32fast::Hasher::new` detects the CPU's
/// features every time it is called, which costs as much as hashing the 36-byte prefix.
fn fresh_hasher() -> crc32fast::Hasher {
    static TEMPLATE: OnceLock<crc32fast::Hasher> = OnceLock::new();
    TEMPLATE.get_or_init(crc32fast::Hasher::new).clone()
}

/// CRC-32 (IEEE) over the segment's salt and id, the record's offset, the frame header `head`
/// after the checksum field (the field itself is ignored), and the body (given in parts, checksummed as if concatenated).
///
/// Mixing in the segment identity and the offset means bytes left over from another segment
/// (a reused or preallocated file, a stale copy, a misdirected write) or from another place
/// in the same segment never verify, even though their own framing is intact.
///
/// Cost: the 36 bytes before the body are gathered into one buffer and hashed in one call
/// (each call of the hasher has a fixed cost that, for pieces of 8 or 12 bytes, exceeds
/// that of hashing them), then each body part in one call.
#[must_use]
pub(crate) fn record_checksum(
    salt: u64,
    segment_id: u64,
    offset: u64,
    head: &[u8; FRAME_HEADER_LEN],
    body_parts: &[&[u8]],
) -> u32 {
    let mut prefix = [0u8; 24 + HEADER_REST_LEN];
    prefix[..8].copy_from_slice(&salt.to_le_bytes());
    prefix[8..16].copy_from_slice(&segment_id.to_le_bytes());
    prefix[16..24].copy_from_slice(&offset.to_le_bytes());
    prefix[24..].copy_from_slice(&head[4..]);
    let mut hasher = fresh_hasher();
    hasher.update(&prefix);
    for part in body_parts {
        hasher.update(part);
    }
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum as `docs/format.md` defines it, one field at a time.
    fn reference(salt: u64, id: u64, offset: u64, rest: &[u8], body: &[u8]) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&salt.to_le_bytes());
        hasher.update(&id.to_le_bytes());
        hasher.update(&offset.to_le_bytes());
        hasher.update(rest);
        hasher.update(body);
        hasher.finalize()
    }

    #[test]
    fn matches_the_field_by_field_definition() {
        let body: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 3) as u8).collect();
        let head = [
            0xffu8, 0xff, 0xff, 0xff, 9, 0, 0, 0, 17, 1, 0, 0, 64, 0, 0, 0,
        ];
        let rest = &head[4..];
        for len in [
            0usize, 1, 7, 15, 16, 17, 100, 127, 128, 255, 256, 1040, 3000,
        ] {
            let body = &body[..len];
            let want = reference(0xdead_beef_0bad_cafe, 42, 4096, rest, body);
            assert_eq!(
                record_checksum(0xdead_beef_0bad_cafe, 42, 4096, &head, &[body]),
                want,
                "body of {len} bytes"
            );
            let (a, b) = body.split_at(len / 3);
            assert_eq!(
                record_checksum(0xdead_beef_0bad_cafe, 42, 4096, &head, &[a, b]),
                want,
                "body of {len} bytes in two parts"
            );
        }
    }

    #[test]
    fn test_vector() {
        // The CRC-32/ISO-HDLC check value, through the same hasher the records use.
        let mut hasher = fresh_hasher();
        hasher.update(b"123456789");
        assert_eq!(hasher.finalize(), 0xCBF4_3926);
    }
}
