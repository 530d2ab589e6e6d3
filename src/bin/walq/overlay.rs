//! A copy-on-write view of a store directory, so that the library's own recovery and replay
//! can run without writing a byte to the disk.
//!
//! `Store::open` is not read-only: it may cut a torn tail, delete leftover temporary files
//! and the clean-close marker, create a segment, preallocate the active one, and append the
//! records of timers that fired while the store was closed. Through [`OverlayVfs`] all of
//! that lands in memory: reads come from the real files until a file is changed, then
//! changed pages come from memory. Dropping the store drops the changes.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use walq::io::{DiskVfs, FileView, LockGuard, Vfs, VfsFile};

/// Pages of changed bytes.
const PAGE: u64 = 4096;

/// The real directory underneath, read-only, with every change kept in memory.
///
/// It never takes the directory lock itself (`try_lock` always succeeds): the caller holds
/// the real lock (see `access.rs`) for as long as the overlay is used.
#[derive(Debug, Default)]
pub struct OverlayVfs {
    /// Paths changed in memory: `Some` a file created or opened through the overlay, `None`
    /// a file removed (or renamed away).
    entries: Mutex<BTreeMap<PathBuf, Option<Arc<CowFile>>>>,
}

#[derive(Debug)]
struct NoLock;

impl LockGuard for NoLock {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl OverlayVfs {
    /// The file at `path` as the overlay sees it, opened (and remembered) if it is only on
    /// disk so far.
    fn file(
        &self,
        entries: &mut BTreeMap<PathBuf, Option<Arc<CowFile>>>,
        path: &Path,
    ) -> io::Result<Arc<CowFile>> {
        match entries.get(path) {
            Some(Some(file)) => Ok(Arc::clone(file)),
            Some(None) => Err(not_found(path)),
            None => {
                let base = DiskVfs.open(path, false)?;
                let file = Arc::new(CowFile::over(base)?);
                entries.insert(path.to_path_buf(), Some(Arc::clone(&file)));
                Ok(file)
            }
        }
    }
}

impl Vfs for OverlayVfs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            Ok(())
        } else {
            Err(not_found(dir))
        }
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        let mut entries = lock(&self.entries);
        let exists = match entries.get(path) {
            Some(entry) => entry.is_some(),
            None => path.exists(),
        };
        if exists {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        let file = Arc::new(CowFile::empty());
        entries.insert(path.to_path_buf(), Some(Arc::clone(&file)));
        Ok(file)
    }

    fn open(&self, path: &Path, _writable: bool) -> io::Result<Arc<dyn VfsFile>> {
        let mut entries = lock(&self.entries);
        let file: Arc<dyn VfsFile> = self.file(&mut entries, path)?;
        Ok(file)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut entries = lock(&self.entries);
        let file = self.file(&mut entries, from)?;
        entries.insert(from.to_path_buf(), None);
        entries.insert(to.to_path_buf(), Some(file));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut entries = lock(&self.entries);
        self.file(&mut entries, path)?;
        entries.insert(path.to_path_buf(), None);
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let entries = lock(&self.entries);
        let mut names = DiskVfs.list(dir)?;
        names.retain(|name| !matches!(entries.get(&dir.join(name)), Some(None)));
        for (path, entry) in entries.iter() {
            if entry.is_some() && path.parent() == Some(dir) {
                if let Some(name) = path.file_name() {
                    let name = name.to_string_lossy().into_owned();
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
        }
        Ok(names)
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn try_lock(&self, _path: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        Ok(Some(Box::new(NoLock)))
    }
}

/// A file read from disk until changed; changed pages live in memory.
#[derive(Debug)]
struct CowFile {
    base: Option<Arc<dyn VfsFile>>,
    state: Mutex<CowState>,
}

#[derive(Debug)]
struct CowState {
    len: u64,
    /// Bytes of `base` below this offset are still visible (a truncation lowers it).
    base_limit: u64,
    /// Changed pages, by page index; bytes past `len` in them are zero.
    pages: BTreeMap<u64, Vec<u8>>,
}

impl CowFile {
    fn over(base: Arc<dyn VfsFile>) -> io::Result<CowFile> {
        let len = base.len()?;
        Ok(CowFile {
            base: Some(base),
            state: Mutex::new(CowState {
                len,
                base_limit: len,
                pages: BTreeMap::new(),
            }),
        })
    }

    fn empty() -> CowFile {
        CowFile {
            base: None,
            state: Mutex::new(CowState {
                len: 0,
                base_limit: 0,
                pages: BTreeMap::new(),
            }),
        }
    }

    /// Fills `buf` with the bytes at `offset` as the file now reads (zeros past its end).
    fn read_into(&self, st: &CowState, buf: &mut [u8], offset: u64) -> io::Result<()> {
        buf.fill(0);
        let end = offset + buf.len() as u64;
        if let Some(base) = &self.base {
            let base_end = end.min(st.base_limit);
            let mut at = offset;
            while at < base_end {
                let from = (at - offset) as usize;
                let to = (base_end - offset) as usize;
                let Some(chunk) = buf.get_mut(from..to) else {
                    break;
                };
                match base.read_at(chunk, at)? {
                    0 => break,
                    n => at += n as u64,
                }
            }
        }
        let first = offset / PAGE;
        for (&index, page) in st.pages.range(first..end.div_ceil(PAGE)) {
            let page_start = index * PAGE;
            let lo = offset.max(page_start);
            let hi = end.min(page_start + PAGE);
            if let (Some(dst), Some(src)) = (
                buf.get_mut((lo - offset) as usize..(hi - offset) as usize),
                page.get((lo - page_start) as usize..(hi - page_start) as usize),
            ) {
                dst.copy_from_slice(src);
            }
        }
        Ok(())
    }
}

impl VfsFile for CowFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let st = lock(&self.state);
        if offset >= st.len {
            return Ok(0);
        }
        let n = buf.len().min((st.len - offset) as usize);
        let Some(dst) = buf.get_mut(..n) else {
            return Ok(0);
        };
        self.read_into(&st, dst, offset)?;
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let mut st = lock(&self.state);
        let end = offset + buf.len() as u64;
        for index in offset / PAGE..end.div_ceil(PAGE) {
            let page_start = index * PAGE;
            if !st.pages.contains_key(&index) {
                let mut page = vec![0u8; PAGE as usize];
                // Only the bytes below the current end are kept; the rest reads as zeros.
                let keep = st.len.saturating_sub(page_start).min(PAGE) as usize;
                if let Some(head) = page.get_mut(..keep) {
                    self.read_into(&st, head, page_start)?;
                }
                st.pages.insert(index, page);
            }
            let lo = offset.max(page_start);
            let hi = end.min(page_start + PAGE);
            if let (Some(page), Some(src)) = (
                st.pages.get_mut(&index),
                buf.get((lo - offset) as usize..(hi - offset) as usize),
            ) {
                if let Some(dst) =
                    page.get_mut((lo - page_start) as usize..(hi - page_start) as usize)
                {
                    dst.copy_from_slice(src);
                }
            }
        }
        st.len = st.len.max(end);
        Ok(buf.len())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.state).len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = lock(&self.state);
        if len < st.len {
            st.base_limit = st.base_limit.min(len);
            let cut_page = len / PAGE;
            let within = (len % PAGE) as usize;
            st.pages
                .retain(|&index, _| index < cut_page || (index == cut_page && within > 0));
            if let Some(page) = st.pages.get_mut(&cut_page) {
                if let Some(tail) = page.get_mut(within..) {
                    tail.fill(0);
                }
            }
        }
        st.len = len;
        Ok(())
    }

    fn preallocate(&self, len: u64) -> io::Result<()> {
        let current = lock(&self.state).len;
        if len > current {
            self.set_len(len)?;
        }
        Ok(())
    }

    fn view(&self, len: u64) -> io::Result<FileView> {
        let st = lock(&self.state);
        if let Some(base) = &self.base {
            if st.pages.is_empty() && len <= st.base_limit && len <= st.len {
                return base.view(len);
            }
        }
        let n = usize::try_from(len.min(st.len))
            .map_err(|_| io::Error::other("file too large to read into memory"))?;
        let mut bytes = vec![0u8; n];
        self.read_into(&st, &mut bytes, 0)?;
        Ok(FileView::from_vec(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_stay_in_memory_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let original: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        std::fs::write(&path, &original).unwrap();
        let vfs = OverlayVfs::default();
        let file = vfs.open(&path, true).unwrap();
        file.write_at(b"xyz", 4094).unwrap();
        file.set_len(5000).unwrap();
        file.preallocate(9000).unwrap();
        let mut expected = original.clone();
        expected[4094..4097].copy_from_slice(b"xyz");
        expected.truncate(5000);
        expected.resize(9000, 0);
        let mut got = vec![0u8; 9000];
        assert_eq!(file.read_at(&mut got, 0).unwrap(), 9000);
        assert_eq!(got, expected);
        assert_eq!(&*file.view(9000).unwrap(), &expected[..]);
        vfs.remove(&path).unwrap();
        assert!(vfs.list(dir.path()).unwrap().is_empty());
        let created = vfs.create(&dir.path().join("g")).unwrap();
        created.write_at(b"new", 8).unwrap();
        assert_eq!(vfs.list(dir.path()).unwrap(), ["g"]);
        assert_eq!(std::fs::read(&path).unwrap(), original, "the disk changed");
        assert!(!dir.path().join("g").exists());
    }
}
