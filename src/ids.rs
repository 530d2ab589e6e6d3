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
