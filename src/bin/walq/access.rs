//! Opening a store directory: the directory lock, read-only opens through the overlay, and
//! opens for writing.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use fs2::FileExt;
use walq::{
    CompactionOptions, Error, FsyncPolicy, RecoveryMode, Store, StoreOptions, DEFAULT_SEGMENT_SIZE,
    MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE,
};

use crate::overlay::OverlayVfs;
use crate::scan::{self, LOCK_FILE};
use crate::{Failure, WriteOptions};

/// The directory lock, held by a read-only command while it runs (the same `flock` an open
/// store holds, taken through a read-only descriptor, so nothing is created or written).
#[derive(Debug)]
pub struct ReadLock {
    _file: Option<File>,
}

/// Fails unless `dir` is an existing directory.
pub fn check_dir(dir: &Path) -> Result<(), Failure> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Failure::Message(format!(
            "{} is not a directory; give the directory of a walq store",
            dir.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Failure::Message(format!(
            "{} does not exist; give the directory of a walq store (`walq publish --create` \
             makes a new one)",
            dir.display()
        ))),
        Err(e) => Err(Failure::Message(format!(
            "cannot open the store directory {}: {e}",
            dir.display()
        ))),
    }
}

/// Takes the directory lock of `dir` for reading, failing with [`Failure::Locked`] if a
/// process has the store open. A directory without a `LOCK` file was never opened by walq;
/// nothing is locked then (and nothing is created).
pub fn lock_for_reading(dir: &Path) -> Result<ReadLock, Failure> {
    check_dir(dir)?;
    let path = dir.join(LOCK_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ReadLock { _file: None }),
        Err(e) => {
            return Err(Failure::Message(format!(
                "cannot open the lock file {}: {e}",
                path.display()
            )))
        }
    };
    match file.try_lock_exclusive() {
        Ok(()) => Ok(ReadLock { _file: Some(file) }),
        Err(e)
            if e.kind() == fs2::lock_contended_error().kind()
                || e.kind() == std::io::ErrorKind::WouldBlock =>
        {
            Err(Failure::Locked(dir.to_path_buf()))
        }
        Err(e) => Err(Failure::Message(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// A store opened read-only: recovered and replayed by the library over a copy-on-write
/// view, with the directory lock held until it is dropped.
#[derive(Debug)]
pub struct ReadOnlyStore {
    /// The store; whatever it writes stays in memory.
    pub store: Store,
    // Dropped after the store.
    _lock: ReadLock,
}

/// Opens `dir` read-only (see [`ReadOnlyStore`]).
pub fn open_read_only(dir: &Path) -> Result<ReadOnlyStore, Failure> {
    let lock = lock_for_reading(dir)?;
    let store = open_over_overlay(dir)?;
    Ok(ReadOnlyStore { store, _lock: lock })
}

/// Opens `dir` over a fresh overlay; the caller holds the lock.
pub fn open_over_overlay(dir: &Path) -> Result<Store, Failure> {
    overlay_store(dir).map_err(|e| store_error(dir, e))
}

/// Opens `dir` over a fresh overlay and returns the library's error as is; the caller holds
/// the lock.
pub fn overlay_store(dir: &Path) -> walq::Result<Store> {
    // No fsyncs (they would be no-ops), no preallocation (it would only use memory), and the
    // largest segment size so that any segment written with any size fits.
    let options = StoreOptions::new()
        .fsync(FsyncPolicy::Never)
        .preallocate(false)
        .segment_size(MAX_SEGMENT_SIZE)
        .recovery(RecoveryMode::TolerateTornTail)
        .compaction(CompactionOptions::new().background(None));
    Store::open_with_vfs(Arc::new(OverlayVfs::default()), dir, options)
}

/// Opens `dir` for writing with the real file system and the default durability
/// (`FsyncPolicy::Always`). Creates the store only if `create`.
pub fn open_for_writing(
    dir: &Path,
    create: bool,
    options: &WriteOptions,
    persist_deliveries: bool,
) -> Result<Store, Failure> {
    if !create || dir.exists() {
        check_dir(dir)?;
    }
    let segment_size = match options.segment_size {
        Some(size) => size,
        None => inferred_segment_size(dir),
    };
    let mut store_options = StoreOptions::new()
        .compaction(CompactionOptions::new().background(None))
        .segment_size(segment_size)
        .persist_deliveries(persist_deliveries);
    if let Some(max) = options.max_message_size {
        store_options = store_options.max_message_size(max);
    }
    Store::open(dir, store_options).map_err(|e| store_error(dir, e))
}

/// The size of the largest segment file of `dir` if it is a valid segment size (with
/// preallocation, the size the store's owner configured), else the default.
fn inferred_segment_size(dir: &Path) -> u64 {
    scan::list(dir)
        .ok()
        .and_then(|listing| listing.segments.iter().map(|s| s.file_len).max())
        .filter(|len| (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(len) && len % 8 == 0)
        .unwrap_or(DEFAULT_SEGMENT_SIZE)
}

/// Turns a library error into a failure with advice.
pub fn store_error(dir: &Path, e: Error) -> Failure {
    match e {
        Error::Locked { .. } => Failure::Locked(dir.to_path_buf()),
        Error::Corruption { .. } | Error::UnsupportedVersion { .. } | Error::ForeignFile { .. } => {
            Failure::Message(format!(
                "{}: {e}\n(run `walq verify {}` for every problem; docs/operations.md says what \
                 to do about corruption)",
                dir.display(),
                dir.display()
            ))
        }
        other => Failure::Message(format!("{}: {other}", dir.display())),
    }
}
