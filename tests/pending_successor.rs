//! Under `FsyncPolicy::Never` (and `Batch`, whose flusher syncs meanwhile) a roll-over goes
//! on into a *pending successor*
//! (`NNNN.wal.next`) while the sealed segment is synced and the successor published in the
//! background. Killing the process or cutting the power after every file operation of a
//! workload that rolls over several times: a process crash loses no publish that returned,
//! a power loss leaves a store that opens and holds a prefix of what was published, and
//! recovery is seen both adopting a pending successor behind a valid seal and discarding
//! one whose predecessor's seal never reached the disk.

mod common;

use std::path::Path;
use std::sync::Arc;

use walq::io::{CrashMode, FaultPlan, SimVfs, Vfs};
use walq::{FsyncPolicy, Store, StoreOptions};

const DIR: &str = "/roll";
const MESSAGES: u64 = 60;

fn options() -> StoreOptions {
    options_with(FsyncPolicy::Never)
}

fn options_with(policy: FsyncPolicy) -> StoreOptions {
    StoreOptions::new().fsync(policy).segment_size(64 << 10)
}

fn payload(i: u64) -> Vec<u8> {
    common::payload(i, 3000)
}

/// Publishes up to [`MESSAGES`] messages of 3 KB (several roll-overs of 64 KiB segments)
/// under `policy` on a disk that halts after `halt` mutations. Returns the disk, how many
/// publishes returned (the first ones: the workload stops at the first error) and the
/// mutations it made.
fn run(policy: FsyncPolicy, halt: Option<u64>) -> (SimVfs, u64, u64) {
    let vfs = SimVfs::new(11);
    let store = Store::open_with_vfs(Arc::new(vfs.clone()), Path::new(DIR), options_with(policy))
        .expect("open");
    let queue = store.declare_queue("q").expect("declare");
    let before = vfs.counters().mutations;
    vfs.set_faults(FaultPlan {
        halt_after_mutations: halt,
        ..FaultPlan::default()
    });
    let mut returned = 0;
    for i in 0..MESSAGES {
        if queue.publish(&payload(i)).is_err() {
            break;
        }
        returned += 1;
    }
    let used = vfs.counters().mutations - before;
    // Dropping the store joins its background thread: nothing touches the disk after this.
    drop(queue);
    drop(store);
    (vfs, returned, used)
}

/// What recovery did with a pending successor, over all the crashes checked.
#[derive(Debug, Default)]
struct Seen {
    adopted: usize,
    discarded: usize,
    /// Pending names left beside their published segment, removed.
    leftover: usize,
}

/// Opens the store on `disk`, checks that it holds the first `n` messages with `n` in
/// `min..=MESSAGES`, and notes what recovery did with a pending successor.
fn check(label: &str, disk: SimVfs, min: u64, seen: &mut Seen) {
    let before = disk.list(Path::new(DIR)).expect("list");
    let store = Store::open_with_vfs(Arc::new(disk.clone()), Path::new(DIR), options())
        .unwrap_or_else(|e| panic!("{label}: reopen failed: {e}"));
    let report = store.recovery_report().clone();
    seen.adopted += usize::from(report.adopted_successor.is_some());
    for removed in &report.removed_temp_files {
        let name = removed.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(segment) = name.strip_suffix(".next") {
            if before.iter().any(|n| n == segment) {
                seen.leftover += 1;
            } else {
                seen.discarded += 1;
            }
        }
    }
    let found: Vec<Vec<u8>> = common::drain(&store)
        .into_values()
        .map(|(p, _)| p)
        .collect();
    drop(store);
    assert!(
        found.len() as u64 >= min,
        "{label}: {} messages recovered, {min} publishes had returned",
        found.len()
    );
    for (i, got) in found.iter().enumerate() {
        assert!(
            *got == payload(i as u64),
            "{label}: message {i} of {} is not the {i}th published: not a prefix",
            found.len()
        );
    }
    let names = disk.list(Path::new(DIR)).expect("list");
    assert!(
        !names.iter().any(|n| n.ends_with(".next")),
        "{label}: a pending successor survived recovery: {names:?}"
    );
}

/// Crashes the workload under `policy` after every file operation, each time as a process
/// crash and as 8 sampled power losses, and checks every recovery; returns what recovery
/// did with pending successors.
fn crash_everywhere(policy: FsyncPolicy) -> Seen {
    let (_, returned, total) = run(policy, None);
    assert_eq!(returned, MESSAGES);
    let mut seen = Seen::default();
    for halt in 1..=total {
        let (disk, returned, _) = run(policy, Some(halt));
        check(
            &format!("{policy:?}: process crash after mutation {halt}"),
            disk.crash(CrashMode::ProcessCrash, halt),
            returned,
            &mut seen,
        );
        let (states, disks) = disk.power_loss_states(8, halt);
        for (k, state) in disks.into_iter().enumerate() {
            check(
                &format!("{policy:?}: power loss after mutation {halt}, state {k} of {states}"),
                state,
                0,
                &mut seen,
            );
        }
    }
    eprintln!("{policy:?}: {total} crash points: {seen:?}");
    seen
}

#[test]
fn a_crash_at_any_file_operation_through_background_roll_overs_recovers_a_prefix() {
    let seen = crash_everywhere(FsyncPolicy::Never);
    assert!(seen.adopted > 0, "no crash left a successor to adopt");
    assert!(seen.discarded > 0, "no crash left a successor to discard");
}

#[test]
fn the_same_under_batch_whose_flusher_syncs_meanwhile() {
    // Which file operations the flusher's syncs land between depends on timing; every
    // outcome must pass the same checks.
    crash_everywhere(FsyncPolicy::Batch {
        max_messages: 4,
        max_delay: std::time::Duration::from_millis(1),
    });
}

/// Publishes under `Never` until the log has two segments, closes the store cleanly and
/// returns the disk and the number of messages published.
fn two_segments() -> (SimVfs, u64) {
    let disk = SimVfs::new(5);
    let store =
        Store::open_with_vfs(Arc::new(disk.clone()), Path::new(DIR), options()).expect("open");
    let queue = store.declare_queue("q").expect("declare");
    let mut n = 0;
    while store.stats().segments < 2 {
        queue.publish(&payload(n)).expect("publish");
        n += 1;
    }
    store.close().expect("close");
    (disk, n)
}

fn segment(id: u64) -> std::path::PathBuf {
    Path::new(DIR).join(walq::format::segment_file_name(id))
}

fn pending(id: u64) -> std::path::PathBuf {
    let mut name = segment(id).into_os_string();
    name.push(".next");
    name.into()
}

#[test]
fn a_pending_name_left_beside_its_published_segment_is_removed() {
    // A crash between publishing's rename and its directory sync may keep both names.
    let (disk, published) = two_segments();
    let bytes = disk.read_file(&segment(1)).expect("segment 1");
    disk.write_file(&pending(1), bytes);
    let mut seen = Seen::default();
    check("both names", disk.clone(), published, &mut seen);
    assert_eq!(
        (seen.adopted, seen.discarded, seen.leftover),
        (0, 0, 1),
        "{seen:?}"
    );
    assert!(
        disk.read_file(&segment(1)).is_some(),
        "the segment itself was kept"
    );
}

#[test]
fn a_pending_successor_that_does_not_follow_the_last_segment_is_refused() {
    let (disk, _) = two_segments();
    let bytes = disk.read_file(&segment(1)).expect("segment 1");
    disk.write_file(&pending(3), bytes);
    let err = Store::open_with_vfs(Arc::new(disk), Path::new(DIR), options())
        .expect_err("a pending successor with a gap before it");
    assert!(
        matches!(&err, walq::Error::ForeignFile { path } if *path == pending(3)),
        "{err}"
    );
}
