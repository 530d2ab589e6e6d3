//! One segment file: its identity, its handle, and how it is created.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::format::{segment_file_name, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::ids::SegmentId;
use crate::io::{write_all_at, Vfs, VfsFile};

/// Suffix of a segment being created; such files are deleted on open.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";

/// Suffix of a *pending successor*: a segment created by a roll-over whose predecessor is
/// not yet known durable (`docs/format.md`, "Segment lifecycle"). It is renamed to its
/// segment name once the predecessor and it are synced.
pub(crate) const PENDING_SUFFIX: &str = ".next";

/// An open segment.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) id: SegmentId,
    pub(crate) salt: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<dyn VfsFile>,
    /// End of the valid records (the write position while the segment is active).
    pub(crate) data_end: AtomicU64,
}

impl Segment {
    pub(crate) fn data_end(&self) -> u64 {
        self.data_end.load(Ordering::Acquire)
    }

    pub(crate) fn set_data_end(&self, end: u64) {
        self.data_end.store(end, Ordering::Release);
    }

    /// Creates segment `id` crash-safely: the header is written and synced under a temporary
    /// name, the file is renamed into place, and the directory is synced. A crash at any
    /// point leaves either no segment `id` or a complete one (plus possibly a temporary file,
    /// which the next open deletes).
    pub(crate) fn create(
        vfs: &dyn Vfs,
        dir: &Path,
        id: SegmentId,
        size: u64,
        preallocate: bool,
    ) -> Result<Segment> {
        let tmp = dir.join(format!("{}{TEMP_SUFFIX}", segment_file_name(id.0)));
        let segment = Segment::start(vfs, dir, id, &tmp, size, preallocate)?;
        segment
            .file
            .sync_data()
            .map_err(|e| Error::io("fdatasync new segment", &tmp, e))?;
        vfs.rename(&tmp, &segment.path)
            .map_err(|e| Error::io("rename new segment", &tmp, e))?;
        vfs.sync_dir(dir)
            .map_err(|e| Error::io("fsync directory", dir, e))?;
        Ok(segment)
    }

    /// Creates segment `id` as a pending successor, under its name plus [`PENDING_SUFFIX`]:
    /// the header is written and the file preallocated, and nothing is synced, so that a
    /// roll-over costs no `fdatasync` on the append path. Records may be written to it at
    /// once; none of them counts as durable before [`Segment::publish`]. After a power loss
    /// the file may lack its header, which recovery treats as a roll-over that never
    /// happened.
    pub(crate) fn create_pending(
        vfs: &dyn Vfs,
        dir: &Path,
        id: SegmentId,
        size: u64,
        preallocate: bool,
    ) -> Result<Segment> {
        let pending = pending_path(&dir.join(segment_file_name(id.0)));
        Segment::start(vfs, dir, id, &pending, size, preallocate)
    }

    /// Publishes a pending successor once its predecessor is durable: syncs it (its header,
    /// preallocation and the records written so far), renames it to its segment name and
    /// syncs the directory. So a file under a segment name always has a durable header.
    pub(crate) fn publish(&self, vfs: &dyn Vfs, dir: &Path) -> Result<()> {
        let pending = pending_path(&self.path);
        self.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync pending segment", &pending, e))?;
        vfs.rename(&pending, &self.path)
            .map_err(|e| Error::io("rename pending segment", &pending, e))?;
        vfs.sync_dir(dir)
            .map_err(|e| Error::io("fsync directory", dir, e))
    }

    /// Creates the file of segment `id` at `at` (a temporary or pending name), writes its
    /// header and preallocates it. Its `path` is the segment's name.
    fn start(
        vfs: &dyn Vfs,
        dir: &Path,
        id: SegmentId,
        at: &Path,
        size: u64,
        preallocate: bool,
    ) -> Result<Segment> {
        let header = SegmentHeader {
            segment_id: id.0,
            salt: new_salt(id.0),
            created_unix_ms: crate::clock::now_ms(),
        };
        let file = vfs
            .create(at)
            .map_err(|e| Error::io("create segment", at, e))?;
        write_all_at(file.as_ref(), &header.encode(), 0)
            .map_err(|e| Error::io("write segment header", at, e))?;
        if preallocate {
            file.preallocate(size)
                .map_err(|e| Error::io("preallocate segment", at, e))?;
        }
        Ok(Segment {
            id,
            salt: header.salt,
            path: dir.join(segment_file_name(id.0)),
            file,
            data_end: AtomicU64::new(SEGMENT_HEADER_LEN as u64),
        })
    }
}

/// The pending name (see [`PENDING_SUFFIX`]) of the segment file at `path`.
pub(crate) fn pending_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(PENDING_SUFFIX);
    PathBuf::from(name)
}

/// A salt that differs between segments, processes and runs. It needs to be unpredictable
/// only in the sense that old bytes must not happen to carry the new segment's salt, so the
/// standard library's randomly keyed hasher is enough.
fn new_salt(segment_id: u64) -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(segment_id);
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}
