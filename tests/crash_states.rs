//! Crash-state enumeration (CrashMonkey-style): for every short workload of engine
//! operations, cut the power after every file operation and check every reachable
//! persistence state (which unsynced writes landed, were torn after each sector, zeroed or
//! garbled; which unsynced directory entries survived) against the oracle.
//!
//! The default run covers every workload of up to 2 operations and a seeded sample of
//! longer ones, with a few states per crash point. `WALQ_CRASH_FULL=1` runs every workload
//! of up to 4 operations with up to 64 states per crash point (run it with `--release`);
//! both print how many crash states they checked. A failure names the workload, the crash
//! point and the state, and `WALQ_CRASH_ONLY=<workload index>` reruns one workload.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{check, Driver, Op, Rng};
use walq::io::{FaultPlan, SimVfs};
use walq::{FsyncPolicy, StoreOptions};

const DIR: &str = "/crash";

fn options() -> StoreOptions {
    // Small segments so that a large publish rolls over to a new segment.
    StoreOptions::new()
        .fsync(FsyncPolicy::Always)
        .segment_size(64 << 10)
}

/// The operations workloads are built from. `Publish(40_000)` twice forces a roll.
const ALPHABET: [Op; 7] = [
    Op::Publish(30),
    Op::Publish(1500),
    Op::Publish(40_000),
    Op::Batch(3),
    Op::Ack,
    Op::Requeue,
    Op::Reopen,
];

/// Every workload of `len` operations, in a fixed order.
fn workloads(len: usize) -> Vec<Vec<Op>> {
    let mut out = vec![Vec::new()];
    for _ in 0..len {
        out = out
            .into_iter()
            .flat_map(|w| {
                ALPHABET
                    .iter()
                    .map(move |&op| [w.clone(), vec![op]].concat())
            })
            .collect();
    }
    out
}

/// Some state before the workload proper: two messages, one delivered and requeued.
const PRELUDE: [Op; 3] = [Op::Publish(10), Op::Publish(700), Op::Requeue];

/// Runs the prelude and `ops` on a fresh disk that halts after `halt` mutations (counted
/// from the end of the prelude); returns the disk and the driver's record.
fn run(ops: &[Op], halt: Option<u64>) -> (SimVfs, common::Confirmed, u64) {
    let vfs = SimVfs::new(7);
    let mut driver = Driver::open(Arc::new(vfs.clone()), Path::new(DIR), options()).expect("open");
    for op in PRELUDE {
        driver.apply(op).expect("prelude");
    }
    let before = vfs.counters().mutations;
    vfs.set_faults(FaultPlan {
        halt_after_mutations: halt,
        ..FaultPlan::default()
    });
    for &op in ops {
        if driver.apply(op).is_err() {
            break;
        }
    }
    let used = vfs.counters().mutations - before;
    let confirmed = driver.confirmed.clone();
    drop(driver);
    (vfs, confirmed, used)
}

/// Cuts the power again after every file operation recovery itself makes on `disk`, then
/// recovers once more: recovery must be idempotent and crash-safe. Returns states checked.
fn crash_during_recovery(label: &str, disk: &SimVfs, confirmed: &common::Confirmed) -> u64 {
    let probe = disk.fork();
    let before = probe.counters().mutations;
    drop(walq::Store::open_with_vfs(
        Arc::new(probe.clone()),
        Path::new(DIR),
        options(),
    ));
    let recovery_mutations = probe.counters().mutations - before;
    let mut states = 0;
    for halt in 1..=recovery_mutations {
        let again = disk.fork();
        again.set_faults(FaultPlan {
            halt_after_mutations: Some(halt),
            ..FaultPlan::default()
        });
        // Interrupted recovery: it fails, or completes if the halt hit its last operation.
        drop(walq::Store::open_with_vfs(
            Arc::new(again.clone()),
            Path::new(DIR),
            options(),
        ));
        for seed in 0..2 {
            let after = again.fork().crash(walq::io::CrashMode::PowerLoss, seed);
            let label =
                format!("{label}, recovery interrupted after its mutation {halt} (seed {seed})");
            check(
                &label,
                Arc::new(after),
                Path::new(DIR),
                options(),
                confirmed,
            );
            states += 1;
        }
    }
    states
}

struct Budget {
    states_per_point: usize,
}

/// Checks every crash point of one workload; returns the number of states checked.
fn explore(index: usize, ops: &[Op], budget: &Budget) -> u64 {
    let (_, _, mutations) = run(ops, None);
    let mut states = 0;
    for halt in 1..=mutations {
        let (vfs, confirmed, _) = run(ops, Some(halt));
        let (_, disks) = vfs.power_loss_states(budget.states_per_point, halt ^ index as u64);
        for (k, disk) in disks.into_iter().enumerate() {
            let label =
                format!("workload #{index} {ops:?}, power cut after mutation {halt}, state {k}");
            if k == 0 {
                states += crash_during_recovery(&label, &disk, &confirmed);
            }
            check(
                &label,
                Arc::new(disk),
                Path::new(DIR),
                options(),
                &confirmed,
            );
            states += 1;
        }
    }
    states
}

#[test]
fn every_crash_state_of_short_workloads_recovers_correctly() {
    let full = std::env::var("WALQ_CRASH_FULL").is_ok_and(|v| v == "1");
    let budget = Budget {
        states_per_point: if full { 64 } else { 8 },
    };
    let mut all: Vec<Vec<Op>> = (1..=2).flat_map(workloads).collect();
    let longer: Vec<Vec<Op>> = (3..=4).flat_map(workloads).collect();
    if full {
        all.extend(longer);
    } else {
        // A seeded sample of the longer workloads.
        let mut rng = Rng(2024);
        for _ in 0..150 {
            all.push(longer[rng.below(longer.len() as u64) as usize].clone());
        }
    }
    let only: Option<usize> = std::env::var("WALQ_CRASH_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut states = 0;
    let mut workloads_run = 0;
    for (index, ops) in all.iter().enumerate() {
        if only.is_some_and(|o| o != index) {
            continue;
        }
        states += explore(index, ops, &budget);
        workloads_run += 1;
    }
    println!("crash-state enumeration: {workloads_run} workloads, {states} crash states checked, 0 violations");
    assert!(states > 0);
}
