//! The only module with `unsafe` code: read-only memory maps of segment files, and the
//! `lseek(2)` query for the stretches of a file that were ever written.

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

/// [`VfsFile::data_after`](super::VfsFile::data_after) for a file on disk: `lseek(2)` with
/// `SEEK_DATA` from `offset`, then `SEEK_HOLE` from the data found. `ENXIO` from `SEEK_DATA`
/// means no data from `offset` to the end of the file.
///
/// Both calls move the descriptor's file offset, which walq never uses: every read and
/// write of a segment is positioned (`pread`/`pwrite`).
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
pub(super) fn data_after(file: &File, offset: u64) -> io::Result<Option<(u64, u64)>> {
    use std::os::unix::io::AsRawFd;

    let too_large = || io::Error::new(io::ErrorKind::InvalidInput, "offset too large");
    let fd = file.as_raw_fd();
    let from = libc::off_t::try_from(offset).map_err(|_| too_large())?;
    // SAFETY: `lseek` takes plain integers and touches no memory of this process; `fd` is
    // the descriptor `file` owns, open for the duration of the borrow.
    let start = unsafe { libc::lseek(fd, from, libc::SEEK_DATA) };
    if start < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(err),
        };
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    if end < 0 {
        return Err(io::Error::last_os_error());
    }
    let start = u64::try_from(start).map_err(|_| too_large())?;
    let end = u64::try_from(end).map_err(|_| too_large())?;
    Ok(Some((start, end)))
}

/// Elsewhere the file system is not asked: everything may be data.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
pub(super) fn data_after(_file: &File, offset: u64) -> io::Result<Option<(u64, u64)>> {
    Ok(Some((offset, u64::MAX)))
}
