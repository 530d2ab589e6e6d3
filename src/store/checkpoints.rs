//! Checkpoint files on disk: loading the newest valid one at open, writing a new one
//! atomically, and keeping the two newest (`docs/design.md`, "Checkpoints").
//!
//! Writing: encode to `checkpoint-N.ckpt.tmp`, fdatasync it, rename it to
//! `checkpoint-N.ckpt`, fsync the directory; only then are checkpoints older than the
//! previous one removed (and the directory synced again). A crash at any point leaves the
//! previous two checkpoints intact, plus possibly a temporary file that the next open
//! deletes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{
    checkpoint_file_name, parse_checkpoint_file_name, Checkpoint, CheckpointError,
    CheckpointMessage, CHECKPOINT_HEADER_LEN,
};
use crate::ids::{Position, SegmentId};
use crate::io::{read_exact_at, write_all_at, Vfs};
use crate::queue::{Frozen, Snapshot};

const TEMP_SUFFIX: &str = ".tmp";

/// Largest checkpoint file read at open (the format's body limit plus the header).
const MAX_FILE_LEN: u64 = crate::format::MAX_CHECKPOINT_BODY + CHECKPOINT_HEADER_LEN as u64;

/// What the store remembers of a checkpoint it keeps on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kept {
    pub(crate) sequence: u64,
    /// Where replay from it starts.
    pub(crate) position: Position,
    /// The segments its messages' payload records are in.
    pub(crate) referenced: BTreeSet<SegmentId>,
}

impl Kept {
    pub(crate) fn of(snapshot: &Snapshot) -> Kept {
        Kept {
            sequence: snapshot.sequence,
            position: snapshot.position,
            referenced: snapshot.referenced.clone(),
        }
    }

    /// Whether recovery from this checkpoint may need `segment`.
    pub(crate) fn needs(&self, segment: SegmentId) -> bool {
        segment >= self.position.segment || self.referenced.contains(&segment)
    }
}

/// A checkpoint file found valid at open, kept encoded: its messages are decoded again,
/// one at a time, as recovery applies them.
#[derive(Debug)]
pub(crate) struct LoadedCheckpoint {
    /// The header, scalars and queues (`messages` empty).
    pub(crate) head: Checkpoint,
    bytes: Vec<u8>,
    pub(crate) kept: Kept,
}

impl LoadedCheckpoint {
    /// Decodes and validates `bytes` in full, without keeping a decoded copy of the
    /// messages.
    fn decode(bytes: Vec<u8>) -> std::result::Result<LoadedCheckpoint, CheckpointError> {
        let (head, messages) = Checkpoint::decode_lazy(&bytes)?;
        let mut referenced = BTreeSet::new();
        for m in messages {
            referenced.insert(SegmentId(m?.segment));
        }
        let kept = Kept {
            sequence: head.sequence,
            position: Position {
                segment: SegmentId(head.segment),
                offset: head.offset,
            },
            referenced,
        };
        Ok(LoadedCheckpoint { head, bytes, kept })
    }

    /// Its messages, by increasing id (validated at load; an error here means the bytes
    /// changed in memory, and is reported as corruption by the caller).
    pub(crate) fn messages(
        &self,
    ) -> impl Iterator<Item = std::result::Result<CheckpointMessage, CheckpointError>> + '_ {
        let lazy = Checkpoint::decode_lazy(&self.bytes);
        let (first_error, messages) = match lazy {
            Ok((_, messages)) => (None, Some(messages)),
            Err(e) => (Some(Err(e)), None),
        };
        first_error
            .into_iter()
            .chain(messages.into_iter().flatten())
    }
}

/// The checkpoints found at open.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// The newest checkpoint that decoded, to recover from.
    pub(crate) newest: Option<LoadedCheckpoint>,
    /// The valid one before it, if any (the fallback).
    pub(crate) older_full: Option<LoadedCheckpoint>,
    /// Checkpoint files that did not decode, newest first, with the reason.
    pub(crate) rejected: Vec<(PathBuf, String)>,
    /// The highest sequence number of any checkpoint file, valid or not.
    pub(crate) max_sequence: u64,
}

fn read_file(vfs: &dyn Vfs, path: &Path) -> Result<Vec<u8>> {
    let file = vfs
        .open(path, false)
        .map_err(|e| Error::io("open checkpoint", path, e))?;
    let len = file
        .len()
        .map_err(|e| Error::io("stat checkpoint", path, e))?;
    if len > MAX_FILE_LEN {
        return Err(Error::corruption(
            SegmentId(0),
            0,
            format!(
                "{} is {len} bytes, over the checkpoint size limit",
                path.display()
            ),
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    read_exact_at(file.as_ref(), &mut bytes, 0)
        .map_err(|e| Error::io("read checkpoint", path, e))?;
    Ok(bytes)
}

/// Lists the checkpoint files of `dir` (sequence, path), newest first; deletes leftover
/// temporary files.
fn list(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let names = vfs
        .list(dir)
        .map_err(|e| Error::io("list directory", dir, e))?;
    let mut found = Vec::new();
    let mut removed = false;
    for name in names {
        if let Some(seq) = parse_checkpoint_file_name(&name) {
            found.push((seq, dir.join(&name)));
        } else if name
            .strip_suffix(TEMP_SUFFIX)
            .and_then(parse_checkpoint_file_name)
            .is_some()
        {
            let path = dir.join(&name);
            vfs.remove(&path)
                .map_err(|e| Error::io("remove temporary checkpoint", &path, e))?;
            removed = true;
        }
    }
    if removed {
        vfs.sync_dir(dir)
            .map_err(|e| Error::io("fsync directory", dir, e))?;
    }
    found.sort_unstable_by_key(|&(seq, _)| std::cmp::Reverse(seq));
    Ok(found)
}

/// Loads the newest valid checkpoint of `dir` and notes the valid one before it.
///
/// A checkpoint that does not decode (torn, damaged, foreign) is passed over for an older
/// one and listed in [`Loaded::rejected`]; I/O errors other than a vanished file abort.
/// Cost: reads and decodes checkpoint files until two valid ones are found.
pub(crate) fn load(vfs: &dyn Vfs, dir: &Path) -> Result<Loaded> {
    let mut loaded = Loaded::default();
    let files = match list(vfs, dir) {
        Ok(files) => files,
        // A store being created: nothing to load.
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(loaded)
        }
        Err(err) => return Err(err),
    };
    loaded.max_sequence = files.first().map_or(0, |(seq, _)| *seq);
    for (seq, path) in files {
        let decoded = match read_file(vfs, &path) {
            Ok(bytes) => LoadedCheckpoint::decode(bytes).map_err(|e| e.to_string()),
            Err(err @ Error::Corruption { .. }) => Err(err.to_string()),
            Err(err) => return Err(err),
        };
        match decoded {
            Ok(cp) if cp.head.sequence == seq => {
                if loaded.newest.is_none() {
                    loaded.newest = Some(cp);
                } else {
                    loaded.older_full = Some(cp);
                    break;
                }
            }
            Ok(cp) => loaded.rejected.push((
                path,
                format!("holds sequence {} but is named {seq}", cp.head.sequence),
            )),
            Err(why) => loaded.rejected.push((path, why)),
        }
    }
    Ok(loaded)
}

/// Writes the checkpoint of `frozen` durably as `checkpoint-<sequence>.ckpt`, then removes
/// every other checkpoint file except the one of sequence `keep` (the previous checkpoint,
/// the fallback).
///
/// The file is encoded straight into the temporary file, a piece at a time; the header,
/// which holds the body's length and checksum, goes in last, before the fdatasync.
/// The caller has made the log durable up to the checkpoint's position first.
pub(crate) fn write(
    vfs: &dyn Vfs,
    dir: &Path,
    frozen: Frozen,
    sequence: u64,
    persist_deliveries: bool,
    keep: Option<u64>,
) -> Result<Snapshot> {
    let name = checkpoint_file_name(sequence);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let file = vfs
        .create(&tmp)
        .map_err(|e| Error::io("create checkpoint", &tmp, e))?;
    let mut at = CHECKPOINT_HEADER_LEN as u64;
    let snapshot = frozen
        .encode_to(sequence, persist_deliveries, |piece| {
            write_all_at(file.as_ref(), piece, at)?;
            at += piece.len() as u64;
            Ok(())
        })
        .map_err(|e| Error::io("write checkpoint", &tmp, e))?;
    if snapshot.messages != snapshot.declared {
        // The table's count of unsettled messages disagrees with its entries: the file
        // would not decode. Never put it in place.
        let why = format!(
            "{} messages written where the count says {}",
            snapshot.messages, snapshot.declared
        );
        return Err(Error::io(
            "encode checkpoint",
            &tmp,
            std::io::Error::other(why),
        ));
    }
    write_all_at(file.as_ref(), &snapshot.header, 0)
        .map_err(|e| Error::io("write checkpoint header", &tmp, e))?;
    file.sync_data()
        .map_err(|e| Error::io("fdatasync checkpoint", &tmp, e))?;
    drop(file);
    vfs.rename(&tmp, &path)
        .map_err(|e| Error::io("rename checkpoint", &tmp, e))?;
    vfs.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))?;
    let stale: Vec<PathBuf> = list(vfs, dir)?
        .into_iter()
        .filter(|&(seq, _)| seq != sequence && Some(seq) != keep)
        .map(|(_, path)| path)
        .collect();
    for old in &stale {
        vfs.remove(old)
            .map_err(|e| Error::io("remove old checkpoint", old, e))?;
    }
    if !stale.is_empty() {
        vfs.sync_dir(dir)
            .map_err(|e| Error::io("fsync directory", dir, e))?;
    }
    Ok(snapshot)
}
