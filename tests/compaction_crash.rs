//! A crash after every file operation of a compaction (relocated copies, log sync,
//! checkpoint write / fdatasync / rename / directory fsync, old checkpoint removal, segment
//! unlinks, directory fsync), by process crash and by power loss, recovers exactly the
//! messages that were live: none lost, none acked come back, payloads and delivery counts
//! intact; and compacting the recovered store again converges.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::compaction::{options, payload, DIR};
use walq::io::{CrashMode, FaultPlan, SimVfs, Vfs};
use walq::Store;

/// id → (payload, delivery count the next delivery must exceed)
type Expected = BTreeMap<u64, (Vec<u8>, u32)>;

fn open(vfs: &SimVfs) -> walq::Result<Store> {
    let vfs: Arc<dyn Vfs> = Arc::new(vfs.clone());
    Store::open_with_vfs(vfs, Path::new(DIR), options())
}

/// A store whose segments are mostly acked, with stragglers (some delivered and requeued)
/// in every segment, a dead-lettered message, and an earlier checkpoint on disk.
fn workload() -> (SimVfs, Expected) {
    let vfs = SimVfs::new(7);
    let store = open(&vfs).unwrap();
    let jobs = store
        .declare_queue_with(
            "jobs",
            walq::QueueOptions::new().dead_letter_queue("jobs.dead"),
        )
        .unwrap();
    let mut expected = Expected::new();
    for round in 0..2u64 {
        for _ in 0..700 {
            let next = store.stats().next_message_id;
            jobs.publish(&payload(next, 200)).unwrap();
        }
        let mut requeue = Vec::new();
        while let Some(d) = jobs.try_receive().unwrap() {
            match d.id.0 % 97 {
                0 => requeue.push((d.id, d.delivery_count)),
                1 => {
                    expected.insert(d.id.0, (d.payload, 0));
                    jobs.nack(d.id, false).unwrap();
                }
                _ if d.redelivered => requeue.push((d.id, d.delivery_count)),
                _ => jobs.ack(d.id).unwrap(),
            }
        }
        for (id, count) in requeue {
            expected.insert(id.0, (payload(id.0, 200), count));
            jobs.nack(id, true).unwrap();
        }
        if round == 0 {
            store.compact().unwrap();
        }
    }
    drop(jobs);
    store.close().unwrap();
    drop(store);
    (vfs, expected)
}

/// Opens the crashed disk and checks it holds exactly `expected`.
fn check(vfs: &SimVfs, expected: &Expected, label: &str) {
    let store = open(vfs).unwrap_or_else(|e| panic!("{label}: recovery failed: {e}"));
    let mut found = BTreeMap::new();
    for name in store.queue_names() {
        let q = store.queue(&name).unwrap();
        while let Some(d) = q.try_receive().unwrap() {
            assert!(found
                .insert(d.id.0, (d.payload, d.delivery_count))
                .is_none());
        }
    }
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{label}: the live ids"
    );
    for (id, (p, floor)) in expected {
        let (got, count) = &found[id];
        assert_eq!(got, p, "{label}: payload of {id}");
        assert!(
            count > floor,
            "{label}: delivery count of {id} went backwards"
        );
    }
}

#[test]
fn a_crash_at_every_step_of_a_compaction_recovers_the_live_set() {
    let (base, expected) = workload();
    check(&base.fork(), &expected, "before compaction");
    let mut steps = 0;
    for n in 1.. {
        let vfs = base.fork();
        let store = open(&vfs).unwrap();
        vfs.set_faults(FaultPlan {
            halt_after_mutations: Some(n),
            ..FaultPlan::default()
        });
        let result = store.compact();
        let halted = vfs.halted();
        drop(store);
        if !halted {
            let report = result.unwrap();
            assert!(report.relocated_messages > 0 && !report.segments_deleted.is_empty());
            break;
        }
        steps += 1;
        for (mode, seed) in [
            (CrashMode::ProcessCrash, 0),
            (CrashMode::PowerLoss, n),
            (CrashMode::PowerLoss, n + 1000),
        ] {
            let label = format!("halt after mutation {n}, {mode:?} seed {seed}");
            let crashed = vfs.crash(mode, seed);
            check(&crashed.fork(), &expected, &label);
            // Compaction resumes on the recovered store and converges.
            let store = open(&crashed).unwrap();
            store
                .compact()
                .unwrap_or_else(|e| panic!("{label}: compaction after recovery: {e}"));
            drop(store);
            check(&crashed, &expected, &format!("{label}, compacted again"));
        }
    }
    println!("crashed at {steps} points of one compaction, 3 ways each");
    assert!(steps >= 10, "a compaction has more steps than {steps}");
}
