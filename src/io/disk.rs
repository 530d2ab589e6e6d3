//! [`DiskVfs`]: the real file system.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use fs2::FileExt as _;

use super::{mmap, FileView, LockGuard, Vfs, VfsFile};

/// The operating system's file system.
///
/// `sync_data` is `fdatasync(2)`, `sync_dir` is `fsync(2)` on the directory, `try_lock` is
/// `flock(2)` (`LOCK_EX | LOCK_NB`), `preallocate` is `fallocate(2)`, and `data_after` is
/// `lseek(2)` with `SEEK_DATA` and `SEEK_HOLE` (on Linux, Android and FreeBSD; elsewhere it
/// reports the whole rest of the file as data).
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskVfs;

#[derive(Debug)]
struct DiskFile(File);

#[derive(Debug)]
struct DiskLock(File);

impl LockGuard for DiskLock {}

impl Drop for DiskLock {
    fn drop(&mut self) {
        // Closing the descriptor releases the lock too; unlocking first is only tidier.
        let _ = fs2::FileExt::unlock(&self.0);
    }
}

impl Vfs for DiskVfs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Arc::new(DiskFile(file)))
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn VfsFile>> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        Ok(Arc::new(DiskFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            // A name that is not UTF-8 cannot be one of walq's files; keep it (lossily) so
            // that the caller reports it as foreign instead of ignoring it.
            names.push(name.to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock_exclusive() {
            Ok(()) => Ok(Some(Box::new(DiskLock(file)))),
            Err(e) if e.kind() == fs2::lock_contended_error().kind() => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl VfsFile for DiskFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.0.write_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn preallocate(&self, len: u64) -> io::Result<()> {
        self.0.allocate(len)
    }

    fn view(&self, len: u64) -> io::Result<FileView> {
        mmap::map(&self.0, len)
    }

    fn data_after(&self, offset: u64) -> io::Result<Option<(u64, u64)>> {
        mmap::data_after(&self.0, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Follows `data_after` from 0 to the end and returns the stretches it reports.
    fn stretches(file: &dyn VfsFile) -> Vec<(u64, u64)> {
        let len = file.len().unwrap();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < len {
            let Some((start, end)) = file.data_after(pos).unwrap() else {
                break;
            };
            assert!(pos <= start && start < end, "{pos}: ({start}, {end})");
            out.push((start, end.min(len)));
            pos = end;
        }
        out
    }

    #[test]
    fn data_after_covers_every_written_byte() {
        const MIB: u64 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let file = DiskVfs.create(&dir.path().join("f")).unwrap();
        file.preallocate(4 * MIB).unwrap();
        file.write_at(b"head", 0).unwrap();
        file.write_at(b"middle", 2 * MIB + 5).unwrap();
        file.sync_data().unwrap();
        let found = stretches(file.as_ref());
        // Whatever the file system's granularity, every written byte lies in a stretch.
        for at in [0, 3, 2 * MIB + 5, 2 * MIB + 10] {
            assert!(
                found.iter().any(|&(s, e)| s <= at && at < e),
                "byte {at} not in {found:?}"
            );
        }
        // Past the last written byte nothing is data, or (a file system that cannot tell)
        // the rest of the file is.
        let last = found.last().copied().unwrap();
        assert!(last.1 == 4 * MIB || last.1 <= 3 * MIB, "{found:?}");
        // At or past the end of the file: nothing.
        assert_eq!(file.data_after(4 * MIB).unwrap(), None);
        assert_eq!(file.data_after(5 * MIB).unwrap(), None);
    }
}
