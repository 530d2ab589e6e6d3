//! The only module with `unsafe` code: read-only memory maps of segment files.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;

use super::{FileView, ViewInner};

/// Maps the first `len` bytes of `file` read-only.
///
/// The caller promises (through [`VfsFile::view`](super::VfsFile::view)'s contract) not to
/// write to or truncate the file while the view lives. walq only maps segments while it holds
/// the store directory's exclusive lock and before it writes to them (the recovery scan), so
/// no other walq handle modifies the file either.
pub(super) fn map(file: &File, len: u64) -> io::Result<FileView> {
    if len == 0 {
        return Ok(FileView(ViewInner::Owned(Vec::new())));
    }
    let len = usize::try_from(len).map_err(|_| io::Error::other("file too large to map"))?;
    // SAFETY: memmap2 requires that the mapped file is not modified or truncated while the
    // map is alive, or reads could observe changing bytes or fault with SIGBUS. The map is
    // only created through `VfsFile::view`, whose contract forbids writes and truncation
    // during the view's lifetime; walq honours it by mapping segments only during the
    // recovery scan, under the directory's exclusive lock, before any write to them. A
    // foreign process ignoring the lock could still truncate the file; that is outside the
    // contract documented on `Store::open`.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
    Ok(FileView(ViewInner::Mapped(map)))
}
