//! The file-system seam: every byte walq reads or writes goes through [`Vfs`] and
//! [`VfsFile`].
//!
//! Three implementations ship with the crate:
//! - [`DiskVfs`], the real file system (`pread`/`pwrite`/`fdatasync`, `flock` for the
//!   directory lock, read-only memory maps for recovery scans);
//! - [`MemVfs`], an in-memory file system for tests, with no crash model of its own;
//! - [`SimVfs`], a simulated disk for crash tests: it keeps volatile and durable images,
//!   loses, tears or garbles unsynced writes at a simulated power loss, reverts unsynced
//!   directory entries, and fails `fsync` or writes on request.
//!
//! The traits are deliberately small and close to the system calls, so that a simulation
//! can model exactly what each call does.

mod disk;
mod mem;
mod mmap;
mod sim;

use std::fmt;
use std::io;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

pub use disk::DiskVfs;
pub use mem::MemVfs;
pub use sim::{CrashMode, FaultPlan, SimCounters, SimVfs, SECTOR};

/// A file system: directory operations and file creation.
///
/// Paths are the ones walq builds from the store directory; implementations need not
/// support anything else.
pub trait Vfs: Send + Sync + fmt::Debug + 'static {
    /// Creates `dir` and any missing parents (`mkdir -p`).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// Creates a new, empty file opened for reading and writing. Fails if it exists.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>>;

    /// Opens an existing file for reading, and for writing too if `writable`.
    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn VfsFile>>;

    /// Atomically renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;

    /// Lists the names of the entries in `dir` (not their full paths), in any order.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;

    /// Makes the directory entries of `dir` durable (`fsync` on the directory), so that
    /// files created, renamed or removed in it survive a power loss.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Takes an exclusive advisory lock on the file `path` (creating it if needed).
    ///
    /// Returns `Ok(None)` if another holder, in this process or another one, has it. The lock
    /// is released when the returned guard is dropped.
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>>;
}

/// An open file, addressed by absolute offsets (`pread`/`pwrite` style) so that one handle
/// can be shared by concurrent readers and a writer.
#[allow(clippy::len_without_is_empty)] // a file length, not a collection
pub trait VfsFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at or past
    /// the end of the file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Writes `buf` at `offset`. May write only a prefix and return its length (a short
    /// write, e.g. when the disk fills up); it never reports more than it wrote.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;

    /// Makes the file's data durable (`fdatasync`): contents, and the size if it changed.
    fn sync_data(&self) -> io::Result<()>;

    /// The current length of the file in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Truncates or extends the file to exactly `len` bytes (extension reads as zeros).
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Reserves disk blocks for the first `len` bytes so that later writes inside them do not
    /// fail for lack of space. Never shrinks the file; may extend its length to `len`.
    fn preallocate(&self, len: u64) -> io::Result<()>;

    /// Tells the file that nothing more will be written to it (its segment was sealed), so
    /// that it can release what it keeps to make writes cheap ([`DiskVfs`]'s write window).
    /// Writes stay correct after it, only slower, until the next [`preallocate`]. The
    /// default does nothing.
    ///
    /// [`preallocate`]: VfsFile::preallocate
    fn finish_writes(&self) {}

    /// Returns a read-only view of the first `len` bytes (a memory map on a real disk).
    ///
    /// The caller must not write to or truncate the file while the view is alive.
    fn view(&self, len: u64) -> io::Result<FileView>;

    /// The first stretch of the file at or after `offset` that may hold bytes other than
    /// zeros, as `(start, end)` with `offset <= start < end`; `None` if nothing from `offset`
    /// to the end of the file was ever written (holes, and blocks preallocated but never
    /// written, read as zeros). A stretch may be all zeros too: only what lies outside every
    /// stretch is known to be zero without reading it.
    ///
    /// Recovery uses it to avoid reading the never-written, preallocated tail of a segment.
    /// The default, for file systems that cannot tell, is the whole rest of the file
    /// (`Ok(Some((offset, u64::MAX)))`): everything is read. [`DiskVfs`] asks the file
    /// system (`lseek(2)` with `SEEK_DATA` and `SEEK_HOLE`).
    fn data_after(&self, offset: u64) -> io::Result<Option<(u64, u64)>> {
        Ok(Some((offset, u64::MAX)))
    }
}

/// The guard of a [`Vfs::try_lock`] lock; dropping it releases the lock.
pub trait LockGuard: Send + Sync + fmt::Debug {}

/// Read-only bytes of a file, either mapped or copied.
pub struct FileView(ViewInner);

enum ViewInner {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl FileView {
    /// A view over bytes already in memory.
    #[must_use]
    pub fn from_vec(bytes: Vec<u8>) -> FileView {
        FileView(ViewInner::Owned(bytes))
    }
}

impl Deref for FileView {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            ViewInner::Mapped(map) => map,
            ViewInner::Owned(bytes) => bytes,
        }
    }
}

impl fmt::Debug for FileView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileView")
            .field("len", &self.len())
            .finish()
    }
}

/// An in-memory file's offset or length as a `usize`.
pub(crate) fn to_usize(n: u64) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

/// `Ok` if `writable`, else the error a write to a read-only file gets.
pub(crate) fn check_writable(writable: bool) -> io::Result<()> {
    if writable {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "file opened read-only",
        ))
    }
}

/// `pread` on an in-memory image: copies what `data` holds at `offset` into `buf`.
pub(crate) fn read_image_at(data: &[u8], buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let start = to_usize(offset)?.min(data.len());
    let avail = data.get(start..).unwrap_or_default();
    let n = avail.len().min(buf.len());
    buf.get_mut(..n)
        .unwrap_or_default()
        .copy_from_slice(avail.get(..n).unwrap_or_default());
    Ok(n)
}

/// Reads exactly `buf.len()` bytes at `offset`, failing with `UnexpectedEof` if the file is
/// shorter.
pub(crate) fn read_exact_at(file: &dyn VfsFile, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = buf.get_mut(done..).unwrap_or_default();
        match file.read_at(rest, offset + done as u64) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `buf` at `offset`, looping over short writes; a write that makes no
/// progress fails with `WriteZero`.
pub(crate) fn write_all_at(file: &dyn VfsFile, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = buf.get(done..).unwrap_or_default();
        match file.write_at(rest, offset + done as u64) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
