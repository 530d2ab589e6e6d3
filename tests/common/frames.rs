//! Shared by the tests that damage segment files: where a segment lives and a walk over the
//! valid frames of a segment image.

use std::path::{Path, PathBuf};

use walq::format::{decode_frame, SegmentHeader, SEGMENT_HEADER_LEN};

/// The file of segment `id` in the store directory `dir`.
pub fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

/// A decoded frame of a segment: its offset, total length, body length and kind.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub offset: usize,
    pub len: usize,
    pub body_len: usize,
    pub kind: u8,
}

/// Decodes the valid frames of a segment image from its first record on.
pub fn frames(bytes: &[u8]) -> Vec<Frame> {
    let header = SegmentHeader::decode(bytes).expect("segment header");
    let mut out = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN as u64;
    while let Ok(view) = decode_frame(
        &bytes[offset as usize..],
        header.salt,
        header.segment_id,
        offset,
    ) {
        out.push(Frame {
            offset: offset as usize,
            len: (view.next_offset - offset) as usize,
            body_len: view.body.len(),
            kind: view.header.kind,
        });
        offset = view.next_offset;
    }
    out
}
