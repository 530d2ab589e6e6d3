//! Typed identifiers, so that a segment id is never passed where a message id belongs.

use std::fmt;

/// Identifies a message for its whole life in a store.
///
/// Ids are assigned densely and in log order (`0, 1, 2, ...`) across all queues of a store.
/// An id whose publish record is durable is never reused, not even after the message is
/// acknowledged. An id whose publish was lost in a crash before becoming durable (possible
/// under every policy but [`FsyncPolicy::Always`](crate::FsyncPolicy::Always), and for a
/// publish interrupted by the crash) is given to the next message published after recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u64);

impl MessageId {
    /// The id as a plain integer.
    #[must_use]
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Identifies a segment file of the log. Segment ids increase with every new segment and
/// appear both in the file name and in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u64);

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The place of a record in the log: its segment and its byte offset within that segment.
///
/// Positions order like the log does: by segment, then by offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The segment that holds the record.
    pub segment: SegmentId,
    /// Byte offset of the record's frame header in the segment file.
    pub offset: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.segment, self.offset)
    }
}

/// Identifies a declared queue inside one store (assigned in declaration order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct QueueId(pub u32);

/// The hasher of the maps keyed by message id: one 128-bit multiply, folded.
///
/// The standard library's SipHash resists keys chosen to collide, which walq's keys cannot
/// be (walq assigns them, densely); it cost about 1,000 instructions per publish → receive →
/// ack cycle, a twelfth of the cycle. Folding the high half of the product into the low
/// half keeps the low bits (which pick the bucket) well mixed even when the ids share low
/// bits, e.g. when only every 64th message is still in flight.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl IdHasher {
    /// An odd constant with well-spread bits (2^64 / φ).
    const K: u64 = 0x9E37_79B9_7F4A_7C15;

    fn mix(&mut self, n: u64) {
        let product = u128::from(self.0 ^ n) * u128::from(Self::K);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }
}

/// A hash map keyed by message id (or another id walq assigns), hashed with [`IdHasher`].
pub(crate) type IdMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, BuildHasherDefault};

    #[test]
    fn ids_sharing_low_bits_still_spread_over_the_low_bits() {
        // 4,096 ids that are all multiples of 64: their hashes' low 12 bits (a 4,096-bucket
        // table) must take many values, not 64 or fewer.
        let build = BuildHasherDefault::<IdHasher>::default();
        let buckets: std::collections::HashSet<u64> = (0..4096u64)
            .map(|i| build.hash_one(MessageId(i * 64)) & 0xfff)
            .collect();
        assert!(buckets.len() > 2000, "{} buckets used", buckets.len());
    }

    #[test]
    fn an_id_map_works_as_a_map() {
        let mut map: IdMap<MessageId, u32> = IdMap::default();
        for i in 0..10_000u64 {
            map.insert(MessageId(i * 3), i as u32);
        }
        assert_eq!(map.len(), 10_000);
        assert_eq!(map.get(&MessageId(2_997)), Some(&999));
        assert_eq!(map.get(&MessageId(2_998)), None);
    }
}
