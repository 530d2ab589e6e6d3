//! A damaged or torn newest checkpoint makes recovery fall back to the previous one, and
//! with no readable checkpoint at all the store replays the whole log if nothing was
//! reclaimed, or refuses to open (naming the checkpoints) if segments were: never a wrong
//! state. Leftover temporary checkpoint files are deleted.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::compaction::{options, payload, DIR};
use walq::io::{SimVfs, Vfs};
use walq::{Error, Store};

fn open(vfs: &SimVfs) -> walq::Result<Store> {
    let vfs: Arc<dyn Vfs> = Arc::new(vfs.clone());
    Store::open_with_vfs(vfs, Path::new(DIR), options())
}

fn checkpoints(vfs: &SimVfs) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = vfs
        .files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "ckpt"))
        .collect();
    found.sort();
    found
}

fn live(store: &Store) -> BTreeMap<u64, Vec<u8>> {
    let q = store.queue("jobs").unwrap();
    let mut out = BTreeMap::new();
    while let Some(d) = q.try_receive().unwrap() {
        out.insert(d.id.0, d.payload);
    }
    out
}

/// Publishes `n` messages and acks all but every 50th; returns the unacked ones.
fn traffic(store: &Store, n: u64, live: &mut BTreeMap<u64, Vec<u8>>) {
    let jobs = store.declare_queue("jobs").unwrap();
    for _ in 0..n {
        let id = store.stats().next_message_id;
        jobs.publish(&payload(id, 200)).unwrap();
        live.insert(id, payload(id, 200));
    }
    let mut back = Vec::new();
    while let Some(d) = jobs.try_receive().unwrap() {
        if d.id.0 % 50 == 0 {
            back.push(d.id);
        } else {
            jobs.ack(d.id).unwrap();
            live.remove(&d.id.0);
        }
    }
    for id in back {
        jobs.nack(id, true).unwrap();
    }
}

/// A store with two checkpoints, reclaimed segments, and traffic after the checkpoints.
fn compacted() -> (SimVfs, BTreeMap<u64, Vec<u8>>) {
    let vfs = SimVfs::new(3);
    let store = open(&vfs).unwrap();
    let mut expected = BTreeMap::new();
    traffic(&store, 1500, &mut expected);
    let report = store.compact().unwrap();
    assert!(!report.segments_deleted.is_empty());
    traffic(&store, 300, &mut expected);
    store.compact().unwrap();
    traffic(&store, 300, &mut expected);
    store.close().unwrap();
    assert_eq!(checkpoints(&vfs).len(), 2, "the newest two are kept");
    (vfs, expected)
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_previous_one() {
    let (vfs, expected) = compacted();
    let [older, newest] = <[PathBuf; 2]>::try_from(checkpoints(&vfs)).unwrap();
    let clean = open(&vfs.fork()).unwrap();
    let used = clean.recovery_report().checkpoint.unwrap();
    assert_eq!(live(&clean), expected);
    drop(clean);

    for damage in ["flip", "torn"] {
        let disk = vfs.fork();
        let mut bytes = disk.read_file(&newest).unwrap();
        match damage {
            "flip" => {
                let at = bytes.len() / 2;
                bytes[at] ^= 0x10;
            }
            _ => bytes.truncate(bytes.len() * 2 / 3),
        }
        disk.write_file(&newest, bytes);
        let store = open(&disk).unwrap();
        let report = store.recovery_report().clone();
        assert_eq!(report.rejected_checkpoints.len(), 1, "{damage}");
        assert_eq!(report.rejected_checkpoints[0].0, newest, "{damage}");
        let fallback = report
            .checkpoint
            .expect("recovered from the older checkpoint");
        assert!(
            fallback < used,
            "{damage}: used {fallback}, newest is {used}"
        );
        assert!(older.to_string_lossy().contains(&format!("{fallback:020}")));
        assert_eq!(
            live(&store),
            expected,
            "{damage}: the same state as from the newest"
        );
    }
}

#[test]
fn no_readable_checkpoint_after_reclaiming_refuses_to_open() {
    let (vfs, _) = compacted();
    for path in checkpoints(&vfs) {
        let mut bytes = vfs.read_file(&path).unwrap();
        bytes[70] ^= 1;
        vfs.write_file(&path, bytes);
    }
    match open(&vfs) {
        Err(Error::Corruption { reason, .. }) => {
            assert!(reason.contains("no checkpoint is readable"), "{reason}");
            assert!(reason.contains("reclaimed"), "{reason}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("opened a store whose acks only the lost checkpoints held"),
    }
}

#[test]
fn no_readable_checkpoint_without_reclaiming_replays_everything() {
    let vfs = SimVfs::new(4);
    let store = open(&vfs).unwrap();
    let jobs = store.declare_queue("jobs").unwrap();
    let mut expected = BTreeMap::new();
    for _ in 0..600 {
        let id = store.stats().next_message_id;
        jobs.publish(&payload(id, 200)).unwrap();
        expected.insert(id, payload(id, 200));
    }
    // Everything is live: nothing to reclaim.
    let report = store.compact().unwrap();
    assert!(report.segments_deleted.is_empty());
    drop(jobs);
    store.close().unwrap();
    drop(store);
    let files = checkpoints(&vfs);
    assert!(!files.is_empty());
    for path in &files {
        vfs.write_file(path, b"not a checkpoint".to_vec());
    }
    let store = open(&vfs).unwrap();
    let report = store.recovery_report().clone();
    assert_eq!(report.checkpoint, None);
    assert_eq!(report.rejected_checkpoints.len(), files.len());
    assert_eq!(
        report.records, 601,
        "a full replay: the declaration and every publish"
    );
    assert_eq!(live(&store), expected);
}

#[test]
fn a_leftover_temporary_checkpoint_is_deleted() {
    let (vfs, expected) = compacted();
    let tmp = Path::new(DIR).join("checkpoint-00000000000000000099.ckpt.tmp");
    vfs.write_file(&tmp, b"half a checkpoint".to_vec());
    let store = open(&vfs).unwrap();
    assert!(store.recovery_report().rejected_checkpoints.is_empty());
    assert!(
        !vfs.files().contains(&tmp),
        "the temporary file was deleted"
    );
    assert_eq!(live(&store), expected);
}
