//! Proves the fault semantics at every position they can occur in a workload that rolls
//! segments: an `EIO` from any `fdatasync` (or directory fsync, or segment creation) makes
//! that call fail and every later write fail with `Poisoned`, with no fsync retried; an
//! `ENOSPC` short write or a failed write makes the call fail, and after reopening the log
//! ends on a record boundary, the failed message's id is not taken and nothing earlier is
//! lost. Each case is also checked after a power loss, and `Log::truncate_from` is cut at
//! every file operation.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{check, Driver, Op};
use walq::io::{CrashMode, FaultPlan, SimVfs};
use walq::log::{Log, Record};
use walq::{Error, FsyncPolicy, LogOptions, StoreOptions};

const DIR: &str = "/faults";

fn options() -> StoreOptions {
    StoreOptions::new()
        .fsync(FsyncPolicy::Always)
        .segment_size(64 << 10)
}

/// A workload that publishes, settles, rolls segments twice and reopens.
const WORKLOAD: [Op; 12] = [
    Op::Publish(100),
    Op::Batch(3),
    Op::Ack,
    Op::Publish(40_000),
    Op::Requeue,
    Op::Publish(40_000),
    Op::Reject,
    Op::Reopen,
    Op::Publish(2_000),
    Op::Ack,
    Op::Publish(40_000),
    Op::Batch(2),
];

struct Outcome {
    vfs: SimVfs,
    driver: Driver,
    /// The operation that failed, if one did.
    failed_at: Option<usize>,
    error: Option<Error>,
}

fn run(plan: FaultPlan) -> Outcome {
    let vfs = SimVfs::new(11);
    vfs.set_faults(plan);
    let mut driver = match Driver::open(Arc::new(vfs.clone()), Path::new(DIR), options()) {
        Ok(driver) => driver,
        Err(e) => {
            // The fault hit the very first open: nothing was confirmed.
            // The fault hit the very first open: nothing was confirmed, and there is no
            // store to check for fail-stop behaviour.
            let fresh = SimVfs::new(11);
            let mut driver =
                Driver::open(Arc::new(fresh.clone()), Path::new(DIR), options()).expect("open");
            driver.store = None;
            return Outcome {
                vfs,
                driver,
                failed_at: Some(0),
                error: Some(e),
            };
        }
    };
    for (i, &op) in WORKLOAD.iter().enumerate() {
        if let Err(e) = driver.apply(op) {
            return Outcome {
                vfs,
                driver,
                failed_at: Some(i),
                error: Some(e),
            };
        }
    }
    Outcome {
        vfs,
        driver,
        failed_at: None,
        error: None,
    }
}

/// After a failure, every write through the store must fail with `Poisoned` (or `Io`, if the
/// failure happened while reopening), without any further `fdatasync`.
fn assert_fail_stop(label: &str, outcome: &Outcome) {
    let Some(store) = &outcome.driver.store else {
        return;
    };
    let syncs = outcome.vfs.counters().sync_data;
    let q = store.declare_queue("q");
    let attempts: Vec<Result<(), Error>> = match q {
        Ok(q) => vec![
            q.publish(b"after the failure").map(drop),
            q.publish_batch(&[b"x", b"y"]).map(drop),
            store.sync(),
            q.try_receive().map(drop),
        ],
        Err(e) => vec![Err(e)],
    };
    for result in attempts {
        assert!(
            matches!(result, Err(Error::Poisoned { .. })),
            "{label}: a write after the failure (op {:?}: {:?}) returned {result:?}, expected Poisoned", outcome.failed_at, outcome.error
        );
    }
    assert_eq!(
        outcome.vfs.counters().sync_data,
        syncs,
        "{label}: fsync was retried after a failure"
    );
}

/// Counts calls of a fault-free run, to know every position a fault can take.
fn fault_free() -> walq::io::SimCounters {
    let outcome = run(FaultPlan::default());
    assert!(
        outcome.failed_at.is_none(),
        "the workload must pass without faults: {:?}",
        outcome.error
    );
    outcome.vfs.counters()
}

/// Checks the state left by a fault, after reopening on the same (process-crashed) disk and
/// after a power loss.
fn check_after(label: &str, outcome: Outcome, write_fault: bool) {
    assert_fail_stop(label, &outcome);
    let confirmed = outcome.driver.confirmed.clone();
    drop(outcome.driver);
    let kill = outcome.vfs.fork().crash(CrashMode::ProcessCrash, 0);
    let found = check(
        &format!("{label}, process crash"),
        Arc::new(kill.clone()),
        Path::new(DIR),
        options(),
        &confirmed,
    );
    // The failed publish did not take an id: the next message gets the id after the last
    // one that exists.
    let store =
        walq::Store::open_with_vfs(Arc::new(kill), Path::new(DIR), options()).expect("reopen");
    let next = store.stats().next_message_id;
    let after_confirmed = confirmed.published.keys().max().map_or(0, |&id| id + 1);
    assert!(
        found.keys().all(|&id| id < next),
        "{label}: a message at or above the next id {next}"
    );
    if write_fault {
        // The failed write left no complete record, so its id is free again.
        assert_eq!(
            next, after_confirmed,
            "{label}: the failed publish took an id"
        );
    } else {
        assert!(
            next >= after_confirmed,
            "{label}: next id {next} below {after_confirmed}"
        );
    }
    drop(store);
    for seed in 0..3 {
        let after = outcome.vfs.fork().crash(CrashMode::PowerLoss, seed);
        check(
            &format!("{label}, power loss {seed}"),
            Arc::new(after),
            Path::new(DIR),
            options(),
            &confirmed,
        );
    }
}

#[test]
fn eio_on_every_fdatasync_poisons_and_is_never_retried() {
    let total = fault_free().sync_data;
    assert!(total > 10, "the workload must sync often (got {total})");
    for n in 1..=total {
        let outcome = run(FaultPlan {
            fail_sync_data: Some(n),
            ..FaultPlan::default()
        });
        let label = format!("EIO on fdatasync #{n}");
        assert!(outcome.failed_at.is_some(), "{label}: no operation failed");
        check_after(&label, outcome, false);
    }
}

#[test]
fn eio_on_every_directory_fsync_and_segment_creation() {
    let counters = fault_free();
    for n in 1..=counters.sync_dir {
        let outcome = run(FaultPlan {
            fail_sync_dir: Some(n),
            ..FaultPlan::default()
        });
        let label = format!("EIO on directory fsync #{n}");
        assert!(outcome.failed_at.is_some(), "{label}: no operation failed");
        check_after(&label, outcome, false);
    }
    for n in 1..=counters.creates {
        let outcome = run(FaultPlan {
            fail_create: Some(n),
            ..FaultPlan::default()
        });
        let label = format!("ENOSPC creating segment #{n}");
        assert!(outcome.failed_at.is_some(), "{label}: no operation failed");
        check_after(&label, outcome, false);
    }
}

#[test]
fn short_write_or_eio_on_every_write_keeps_the_log_on_a_record_boundary() {
    let total = fault_free().writes;
    for n in 1..=total {
        for (kind, plan) in [
            (
                "ENOSPC short write",
                FaultPlan {
                    short_write: Some(n),
                    ..FaultPlan::default()
                },
            ),
            (
                "EIO write",
                FaultPlan {
                    fail_write: Some(n),
                    ..FaultPlan::default()
                },
            ),
        ] {
            let outcome = run(plan);
            let label = format!("{kind} #{n}");
            assert!(outcome.failed_at.is_some(), "{label}: no operation failed");
            check_after(&label, outcome, true);
        }
    }
}

/// Cutting the log back is crash-safe: after a power cut at any of its file operations the
/// log reopens as either the old log or the truncated one, with every other record intact.
#[test]
fn truncate_from_survives_a_crash_at_every_step() {
    let dir = Path::new("/log");
    let opts = LogOptions::new()
        .segment_size(64 << 10)
        .fsync(FsyncPolicy::Always);
    let body = vec![7u8; 9_000];
    let build = || {
        let vfs = SimVfs::new(5);
        let (log, _) =
            Log::open(Arc::new(vfs.clone()), dir, opts.clone(), &mut |_| Ok(())).expect("open");
        let positions: Vec<_> = (0..20u8)
            .map(|i| {
                let tag = [i];
                log.append(&[Record {
                    kind: 16,
                    body: &[&tag, &body],
                }])
                .expect("append")
                .positions[0]
            })
            .collect();
        (vfs, log, positions)
    };
    let replay = |vfs: SimVfs| {
        let mut tags = Vec::new();
        let (log, _) = Log::open(Arc::new(vfs), dir, opts.clone(), &mut |r| {
            tags.push(r.body[0]);
            Ok(())
        })
        .expect("reopen after a crash during truncation");
        drop(log);
        tags
    };
    let cut = 5usize;
    let (vfs, log, positions) = build();
    let before = vfs.counters().mutations;
    log.truncate_from(positions[cut]).expect("truncate");
    let steps = vfs.counters().mutations - before;
    drop(log);
    assert!(steps >= 3, "truncation spans several segments");
    let all: Vec<u8> = (0..20).collect();
    let kept: Vec<u8> = (0..cut as u8).collect();
    for halt in 1..=steps {
        let (vfs, log, positions) = build();
        vfs.set_faults(FaultPlan {
            halt_after_mutations: Some(halt),
            ..FaultPlan::default()
        });
        let _ = log.truncate_from(positions[cut]);
        drop(log);
        for seed in 0..4 {
            let tags = replay(vfs.fork().crash(CrashMode::PowerLoss, seed));
            // Later segments go newest first, so a crash can leave any prefix of the old log
            // that is at least the truncated one.
            assert!(
                tags.len() >= cut && tags[..] == all[..tags.len()],
                "truncation interrupted after step {halt} (seed {seed}) left {tags:?}"
            );
        }
        let tags = replay(vfs.fork().crash(CrashMode::ProcessCrash, 0));
        assert!(
            tags[..] == all[..tags.len()] && tags.len() >= cut,
            "step {halt}: {tags:?}"
        );
    }
    let (vfs, log, positions) = build();
    log.truncate_from(positions[cut]).expect("truncate");
    drop(log);
    assert_eq!(
        replay(vfs.crash(CrashMode::PowerLoss, 9)),
        kept,
        "a completed truncation is durable"
    );
}
