//! The record checksum (`docs/format.md`, "Record checksum").

/// CRC-32 (IEEE) over the segment's salt and id, the record's offset, the frame header after
/// the checksum field, and the body (given in parts, checksummed as if concatenated).
///
/// Mixing in the segment identity and the offset means bytes left over from another segment
/// (a reused or preallocated file, a stale copy, a misdirected write) or from another place
/// in the same segment never verify, even though their own framing is intact.
#[must_use]
pub(crate) fn record_checksum(
    salt: u64,
    segment_id: u64,
    offset: u64,
    header_rest: &[u8],
    body_parts: &[&[u8]],
) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&salt.to_le_bytes());
    hasher.update(&segment_id.to_le_bytes());
    hasher.update(&offset.to_le_bytes());
    hasher.update(header_rest);
    for part in body_parts {
        hasher.update(part);
    }
    hasher.finalize()
}
