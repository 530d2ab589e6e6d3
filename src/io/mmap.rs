//! The only module with `unsafe` code: memory maps of segment files, and the `lseek(2)`
//! query for the stretches of a file that were ever written.
//!
//! Two kinds of maps: read-only maps for recovery scans ([`map`]), and a writable window
//! onto the preallocated part of the active segment ([`WriteWindow`]), through which small
//! appends are copied instead of costing a `pwrite` system call each.

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

/// A shared, writable map of the bytes `[start, start + len)` of a file.
///
/// Bytes copied into it land in the page cache exactly as a `pwrite` would put them there:
/// other handles and `pread` see them at once, they survive the process, and `fdatasync` on
/// the file makes them durable (Linux keeps one page cache for both paths).
#[derive(Debug)]
pub(super) struct WriteWindow {
    start: u64,
    map: memmap2::MmapMut,
}

impl WriteWindow {
    /// Maps `[start, start + len)` of `file`, which must be open for writing.
    ///
    /// The caller must keep the range inside the file's length, allocated on disk, for as
    /// long as the window lives, and must make every other write to the range, and every
    /// truncation, wait until no slice borrowed from the window is alive (`DiskFile` does
    /// both under the mutex that owns the window).
    pub(super) fn new(file: &File, start: u64, len: usize) -> io::Result<WriteWindow> {
        // SAFETY: memmap2's contract for a mutable map is that nothing else modifies or
        // truncates the mapped range while Rust references into it exist, or they would see
        // bytes change under them (or fault with SIGBUS past the end of the file). The window
        // is owned by a `DiskFile` behind a mutex; that file's writes, reads and `set_len`
        // all take the mutex, `set_len` drops the window before shrinking under it, and the
        // range is created only inside the length `preallocate` gave the file, with its
        // blocks allocated (so a copy into it never needs space the disk lacks). Other
        // `DiskFile` handles of the same path only read it. A foreign process ignoring the
        // directory lock could still truncate the file; that is outside the contract
        // documented on `Store::open`, as for read-only maps.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(start)
                .len(len)
                .map_mut(file)?
        };
        Ok(WriteWindow { start, map })
    }

    /// First byte after the window.
    pub(super) fn end(&self) -> u64 {
        self.start + self.map.len() as u64
    }

    /// The window's bytes `[offset, offset + len)` of the file, if it covers all of them.
    fn range(&self, offset: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let from = usize::try_from(offset.checked_sub(self.start)?).ok()?;
        let to = from.checked_add(len)?;
        (to <= self.map.len()).then_some(from..to)
    }

    /// Copies `buf` to file offset `offset`; `false` (nothing copied) if the window does not
    /// cover all of it.
    pub(super) fn write(&mut self, buf: &[u8], offset: u64) -> bool {
        let Some(range) = self.range(offset, buf.len()) else {
            return false;
        };
        match self.map.get_mut(range) {
            Some(dst) => {
                dst.copy_from_slice(buf);
                true
            }
            None => false,
        }
    }

    /// Fills `buf` from file offset `offset`; `false` (nothing read) if the window does not
    /// cover all of it.
    pub(super) fn read(&self, buf: &mut [u8], offset: u64) -> bool {
        let Some(range) = self.range(offset, buf.len()) else {
            return false;
        };
        match self.map.get(range) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
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
