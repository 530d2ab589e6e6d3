//! [`MemVfs`]: an in-memory file system for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{read_image_at, to_usize, FileView, LockGuard, Vfs, VfsFile};

/// An in-memory file system. Cloning it gives another handle to the same files, so a test
/// can "reopen" a store on the same contents.
///
/// Every operation takes effect immediately and nothing is ever lost: this is the model of a
/// disk that never crashes. Locks behave like `flock`: a second `try_lock` of the same path
/// fails until the first guard is dropped.
#[derive(Debug, Clone, Default)]
pub struct MemVfs {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Debug, Default)]
struct MemInner {
    dirs: BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, Arc<Mutex<Vec<u8>>>>,
    locks: BTreeSet<PathBuf>,
}

#[derive(Debug)]
struct MemFile {
    data: Arc<Mutex<Vec<u8>>>,
    writable: bool,
}

#[derive(Debug)]
struct MemLock {
    fs: MemVfs,
    path: PathBuf,
}

impl LockGuard for MemLock {}

impl Drop for MemLock {
    fn drop(&mut self) {
        self.fs.lock().locks.remove(&self.path);
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

fn lock_bytes(data: &Mutex<Vec<u8>>) -> MutexGuard<'_, Vec<u8>> {
    data.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemVfs {
    /// An empty file system.
    #[must_use]
    pub fn new() -> MemVfs {
        MemVfs::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the contents of the file at `path`, if it exists.
    #[must_use]
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let inner = self.lock();
        inner.files.get(path).map(|data| lock_bytes(data).clone())
    }

    /// Replaces (or creates) the file at `path` with `bytes`. For tests that corrupt files.
    pub fn write_file(&self, path: &Path, bytes: Vec<u8>) {
        let mut inner = self.lock();
        match inner.files.get(path) {
            Some(data) => *lock_bytes(data) = bytes,
            None => {
                inner
                    .files
                    .insert(path.to_path_buf(), Arc::new(Mutex::new(bytes)));
            }
        }
    }

    fn check_parent(inner: &MemInner, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() && !inner.dirs.contains(parent) => {
                Err(not_found(parent))
            }
            _ => Ok(()),
        }
    }
}

impl Vfs for MemVfs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut inner = self.lock();
        for ancestor in dir.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                inner.dirs.insert(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        let mut inner = self.lock();
        Self::check_parent(&inner, path)?;
        if inner.files.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
        }
        let data = Arc::new(Mutex::new(Vec::new()));
        inner.files.insert(path.to_path_buf(), Arc::clone(&data));
        Ok(Arc::new(MemFile {
            data,
            writable: true,
        }))
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn VfsFile>> {
        let inner = self.lock();
        let data = inner.files.get(path).ok_or_else(|| not_found(path))?;
        Ok(Arc::new(MemFile {
            data: Arc::clone(data),
            writable,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut inner = self.lock();
        Self::check_parent(&inner, to)?;
        let data = inner.files.remove(from).ok_or_else(|| not_found(from))?;
        inner.files.insert(to.to_path_buf(), data);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut inner = self.lock();
        inner
            .files
            .remove(path)
            .map(drop)
            .ok_or_else(|| not_found(path))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let inner = self.lock();
        if !inner.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let files = inner.files.keys().chain(inner.dirs.iter());
        Ok(files
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let inner = self.lock();
        if inner.dirs.contains(dir) {
            Ok(())
        } else {
            Err(not_found(dir))
        }
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        let mut inner = self.lock();
        Self::check_parent(&inner, path)?;
        if !inner.locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        inner.files.entry(path.to_path_buf()).or_default();
        Ok(Some(Box::new(MemLock {
            fs: self.clone(),
            path: path.to_path_buf(),
        })))
    }
}

impl MemFile {
    fn check_writable(&self) -> io::Result<()> {
        super::check_writable(self.writable)
    }
}

impl VfsFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        read_image_at(&lock_bytes(&self.data), buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.check_writable()?;
        let mut data = lock_bytes(&self.data);
        let start = to_usize(offset)?;
        let end = start
            .checked_add(buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past the end"))?;
        if data.len() < end {
            data.resize(end, 0);
        }
        data.get_mut(start..end)
            .unwrap_or_default()
            .copy_from_slice(buf);
        Ok(buf.len())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(lock_bytes(&self.data).len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        lock_bytes(&self.data).resize(to_usize(len)?, 0);
        Ok(())
    }

    fn preallocate(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut data = lock_bytes(&self.data);
        let len = to_usize(len)?;
        if data.len() < len {
            data.resize(len, 0);
        }
        Ok(())
    }

    fn view(&self, len: u64) -> io::Result<FileView> {
        let data = lock_bytes(&self.data);
        let len = to_usize(len)?.min(data.len());
        Ok(FileView::from_vec(
            data.get(..len).unwrap_or_default().to_vec(),
        ))
    }
}
