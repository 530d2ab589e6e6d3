//! Proves what `FsyncPolicy::{Batch, Interval, Never}` promise after a power loss: everything
//! confirmed before a `Store::sync` returned is recovered (and no ack confirmed before it
//! comes back), later operations may or may not survive but never corrupt the store, and
//! nothing unpublished appears. Seeded; a failure prints the seed and the policy.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{check, Confirmed, Driver, Op, Rng};
use walq::io::{CrashMode, FaultPlan, SimVfs};
use walq::{FsyncPolicy, StoreOptions};

const DIR: &str = "/policy";

fn policies() -> [FsyncPolicy; 3] {
    [
        FsyncPolicy::Batch {
            max_messages: 5,
            max_delay: Duration::from_millis(2),
        },
        FsyncPolicy::Interval(Duration::from_millis(3)),
        FsyncPolicy::Never,
    ]
}

/// The guarantees at the last sync, with everything after it counted as uncertain.
fn as_of_last_sync(driver: &Driver) -> Confirmed {
    let mut c = driver.synced.clone();
    c.attempted = driver.confirmed.attempted.clone();
    c.settle_attempted = driver.confirmed.settle_attempted.clone();
    // A requeue after the sync may be lost; its count may then be lower than confirmed.
    c.counts = driver.synced.counts.clone();
    c
}

fn run_case(seed: u64, policy: FsyncPolicy) {
    let mut rng = Rng(seed);
    let vfs = SimVfs::new(seed);
    let options = StoreOptions::new().fsync(policy).segment_size(64 << 10);
    let mut driver =
        Driver::open(Arc::new(vfs.clone()), Path::new(DIR), options.clone()).expect("open");
    vfs.set_faults(FaultPlan {
        halt_after_mutations: Some(1 + rng.below(200)),
        ..FaultPlan::default()
    });
    for _ in 0..(10 + rng.below(60)) {
        let op = match rng.below(10) {
            0..=3 => Op::Publish(rng.below(3000) as usize),
            4 => Op::Batch(1 + rng.below(4) as usize),
            5 => Op::Ack,
            6 => Op::Requeue,
            7 => Op::Reject,
            _ => Op::Sync,
        };
        if driver.apply(op).is_err() {
            break;
        }
    }
    let c = as_of_last_sync(&driver);
    drop(driver);
    let crashed = vfs.crash(CrashMode::PowerLoss, seed ^ 0xFEED);
    check(
        &format!("seed {seed}, {policy:?}"),
        Arc::new(crashed),
        Path::new(DIR),
        options,
        &c,
    );
}

#[test]
fn a_returned_sync_survives_power_loss_under_every_lazy_policy() {
    let cases: u64 = std::env::var("WALQ_POLICY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    for policy in policies() {
        for seed in 0..cases {
            if std::panic::catch_unwind(|| run_case(seed, policy)).is_err() {
                panic!("policy case failed: seed {seed}, {policy:?}");
            }
        }
    }
}
