//! The on-disk format: pure functions from values to bytes and back, with no I/O.
//!
//! `docs/format.md` is the normative description; this module implements it and its
//! section names are referenced in the comments. Everything here is total: decoding any byte
//! string returns a value or a reason, never panics, and never allocates from a length it
//! has not checked against the bytes actually present.

mod checkpoint;
mod checksum;
mod closed_marker;
mod frame;
mod records;
mod segment_header;

pub use checkpoint::{
    checkpoint_file_name, parse_checkpoint_file_name, Checkpoint, CheckpointError,
    CheckpointMessage, CheckpointMessages, CheckpointQueue, EncodedCheckpoint,
    CHECKPOINT_HEADER_LEN, CHECKPOINT_MAGIC, CHECKPOINT_VERSION, ENCODE_PIECE, MAX_CHECKPOINT_BODY,
    QUEUE_COUNTERS,
};
pub use closed_marker::{ClosedMarker, CLOSED_MAGIC, CLOSED_MARKER_LEN};
pub(crate) use frame::decode_frame_with;
pub use frame::{
    all_zero, decode_frame, encode_frame, frame_len, zero_run, FrameError, FrameHeader,
    RecordFlags, RecordView, FRAME_ALIGN, FRAME_HEADER_LEN, MAX_BODY_LEN, MAX_FRAME_LEN,
};
pub use records::{
    AckBody, DeliverBody, Disposition, MoveBody, MoveReason, PublishBody, PublishHeader,
    QueueDeclareBody, QueueSettings, RecordKind, RelocateBody, RollbackBody, SealBody,
    MAX_ACK_RANGES, MAX_QUEUE_NAME_LEN, NO_QUEUE, PUBLISH_HEADER_LEN, RELOCATE_HEADER_LEN,
};
pub use segment_header::{
    parse_segment_file_name, segment_file_name, SegmentHeader, SegmentHeaderError, FORMAT_VERSION,
    SEGMENT_HEADER_LEN, SEGMENT_MAGIC,
};
