//! [`DiskVfs`]: the real file system.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use fs2::FileExt as _;

use super::mmap::{self, WriteWindow};
use super::{FileView, LockGuard, Vfs, VfsFile};

/// The operating system's file system.
///
/// `sync_data` is `fdatasync(2)`, `sync_dir` is `fsync(2)` on the directory, `try_lock` is
/// `flock(2)` (`LOCK_EX | LOCK_NB`), `preallocate` is `fallocate(2)`, and `data_after` is
/// `lseek(2)` with `SEEK_DATA` and `SEEK_HOLE` (on Linux, Android and FreeBSD; elsewhere it
/// reports the whole rest of the file as data).
///
/// On Linux, writes and reads of at most [`WINDOW`](DiskVfs::WINDOW) bytes that fall inside
/// a writable file's preallocated length are copied through a shared memory map of a
/// `WINDOW`-sized, `WINDOW`-aligned part of the file instead of costing a
/// `pwrite`/`pread` system call each. The bytes land in the same page cache either way, so
/// what a process crash or `fdatasync` keeps is unchanged; only a small record appended to
/// the active segment gets cheaper. Everything else is `pread`/`pwrite`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskVfs;

impl DiskVfs {
    /// Size and alignment of a file's write window (256 KiB): small enough that the mapped
    /// pages it keeps resident stay negligible, large enough that moving it is rare (every
    /// 1,024 appends of 256 bytes).
    pub const WINDOW: u64 = 256 << 10;
}

const WINDOW: u64 = DiskVfs::WINDOW;

#[derive(Debug)]
struct DiskFile {
    file: File,
    writable: bool,
    window: Mutex<Window>,
}

/// Where a file may be written through a map, and the map currently in place.
#[derive(Debug, Default)]
struct Window {
    /// The file's bytes `[0, limit)` are allocated and inside its length (0: no window, the
    /// file is not preallocated, read-only, or done with writes).
    limit: u64,
    map: Option<WriteWindow>,
}

impl DiskFile {
    fn new(file: File, writable: bool) -> DiskFile {
        DiskFile {
            file,
            writable,
            window: Mutex::new(Window::default()),
        }
    }

    fn window(&self) -> MutexGuard<'_, Window> {
        // A panic while copying cannot leave the window inconsistent: it is a map and a limit.
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Window {
    /// Copies `buf` to `offset` through the map, moving the map there first if `buf` is small
    /// and inside the limit; `false` (nothing written) if it cannot, and a system call must.
    fn write(&mut self, file: &File, buf: &[u8], offset: u64) -> bool {
        if let Some(map) = &mut self.map {
            if map.write(buf, offset) {
                return true;
            }
        }
        let Some(end) = offset.checked_add(buf.len() as u64) else {
            return false;
        };
        if buf.len() as u64 > WINDOW || end > self.limit {
            return false;
        }
        let start = offset / WINDOW * WINDOW;
        let Ok(len) = usize::try_from(WINDOW.min(self.limit - start)) else {
            return false;
        };
        // Unmap the old window before mapping the next. A map that fails (address space, a
        // file system without mmap) leaves the work to the system calls; so does a write
        // that straddles two windows.
        self.map = None;
        self.map = WriteWindow::new(file, start, len).ok();
        self.map.as_mut().is_some_and(|map| map.write(buf, offset))
    }
}

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
        Ok(Arc::new(DiskFile::new(file, true)))
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn VfsFile>> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        Ok(Arc::new(DiskFile::new(file, writable)))
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
        if let Some(map) = &self.window().map {
            if map.read(buf, offset) {
                return Ok(buf.len());
            }
        }
        self.file.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let mut window = self.window();
        if window.write(&self.file, buf, offset) {
            return Ok(buf.len());
        }
        // Under the window's lock, so that no copy through the map runs while the file
        // changes under it.
        self.file.write_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut window = self.window();
        if window.map.as_ref().is_some_and(|m| m.end() > len) {
            window.map = None;
        }
        window.limit = window.limit.min(len);
        self.file.set_len(len)
    }

    fn preallocate(&self, len: u64) -> io::Result<()> {
        self.file.allocate(len)?;
        if self.writable && cfg!(target_os = "linux") {
            let mut window = self.window();
            window.limit = window.limit.max(len.min(self.len()?));
        }
        Ok(())
    }

    fn finish_writes(&self) {
        let mut window = self.window();
        window.map = None;
        window.limit = 0;
    }

    fn view(&self, len: u64) -> io::Result<FileView> {
        mmap::map(&self.file, len)
    }

    fn data_after(&self, offset: u64) -> io::Result<Option<(u64, u64)>> {
        mmap::data_after(&self.file, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `len` preallocated bytes, created as a segment is, and its path.
    fn preallocated(dir: &Path, len: u64) -> (DiskFile, std::path::PathBuf) {
        let path = dir.join("f");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let file = DiskFile::new(file, true);
        file.preallocate(len).unwrap();
        (file, path)
    }

    fn read(file: &dyn VfsFile, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0xEE; len];
        super::super::read_exact_at(file, &mut buf, offset).unwrap();
        buf
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn small_writes_inside_the_preallocation_go_through_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let (file, path) = preallocated(dir.path(), 4 * WINDOW);
        let a = pattern(300, 1);
        write_all_at_(&file, &a, 4096);
        let disk = DiskFile::new(File::open(&path).unwrap(), false);
        if cfg!(target_os = "linux") {
            // The write went through a map: a read-only handle has no window of its own and
            // reads the bytes from the page cache with `pread`.
            let mapped = file.window().map.is_some();
            assert!(
                mapped,
                "a small write inside the preallocation maps a window"
            );
        }
        assert_eq!(read(&disk, 4096, 300), a);
        assert_eq!(read(&file, 4096, 300), a);
        assert_eq!(
            file.len().unwrap(),
            4 * WINDOW,
            "writes never change the length"
        );
    }

    #[test]
    fn writes_across_windows_past_the_end_and_after_finishing_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let (file, path) = preallocated(dir.path(), 2 * WINDOW);
        let writes = [
            (WINDOW - 100, pattern(300, 2)),   // straddles the first two windows
            (WINDOW + 8, pattern(64, 3)),      // moves the window
            (8, pattern(64, 4)),               // moves it back
            (2 * WINDOW - 16, pattern(64, 5)), // runs past the preallocation
            (3 * WINDOW, pattern(10, 6)),      // entirely past it: extends the file
            (16, pattern(2 * WINDOW as usize, 7)), // larger than a window
        ];
        let mut expect = vec![0u8; 3 * WINDOW as usize + 10];
        for (offset, bytes) in &writes {
            write_all_at_(&file, bytes, *offset);
            let at = *offset as usize;
            expect[at..at + bytes.len()].copy_from_slice(bytes);
        }
        file.finish_writes();
        let late = pattern(40, 8);
        write_all_at_(&file, &late, 512);
        expect[512..552].copy_from_slice(&late);
        assert_eq!(file.len().unwrap(), expect.len() as u64);
        assert_eq!(read(&file, 0, expect.len()), expect);
        drop(file);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            expect,
            "a fresh open sees it all"
        );
    }

    #[test]
    fn truncation_under_the_window_drops_it() {
        let dir = tempfile::tempdir().unwrap();
        let (file, path) = preallocated(dir.path(), 2 * WINDOW);
        write_all_at_(&file, &pattern(100, 9), WINDOW + 200);
        file.set_len(WINDOW + 250).unwrap();
        if cfg!(target_os = "linux") {
            let window = file.window();
            assert!(window.map.is_none(), "the window reached past the new end");
            assert_eq!(window.limit, WINDOW + 250);
        }
        // Past the new end: a plain write, which extends the file again.
        write_all_at_(&file, &pattern(100, 10), WINDOW + 300);
        let mut buf = [0u8; 1];
        assert_eq!(
            file.read_at(&mut buf, 3 * WINDOW).unwrap(),
            0,
            "past the end"
        );
        file.preallocate(2 * WINDOW).unwrap();
        write_all_at_(&file, &pattern(50, 11), WINDOW + 200);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, 2 * WINDOW);
        let at = WINDOW as usize;
        assert_eq!(bytes[at + 200..at + 250], pattern(50, 11)[..]);
        assert_eq!(bytes[at + 250..at + 300], [0u8; 50], "cut, then zeros");
        assert_eq!(bytes[at + 300..at + 400], pattern(100, 10)[..]);
    }

    fn write_all_at_(file: &dyn VfsFile, buf: &[u8], offset: u64) {
        super::super::write_all_at(file, buf, offset).unwrap();
    }

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
