//! Shared by the crash tests: a workload driver that records what the engine confirmed,
//! and the oracle that checks a recovered store against it.

#![allow(dead_code)] // each test binary uses a different part

pub mod compaction;
pub mod frames;
pub mod seeded;
pub mod semantics;

#[allow(unused_imports)] // each test binary uses a different part
pub use seeded::Rng;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use walq::io::Vfs;
use walq::{Error, MessageId, Queue, Store, StoreOptions};

/// The payload of message `id`: derived from the id so any recovered payload can be checked.
pub fn payload(id: u64, len: usize) -> Vec<u8> {
    let mut p = id.to_le_bytes().to_vec();
    p.extend((0..len).map(|i| (i as u64).wrapping_mul(31) as u8 ^ id as u8));
    p
}

/// What the engine confirmed before a crash.
#[derive(Default, Debug, Clone)]
pub struct Confirmed {
    /// Publishes that returned Ok: id → payload.
    pub published: BTreeMap<u64, Vec<u8>>,
    /// Every publish attempted, confirmed or not: id → payload.
    pub attempted: BTreeMap<u64, Vec<u8>>,
    /// Acks and rejects that returned Ok.
    pub settled: BTreeSet<u64>,
    /// Acks and rejects attempted (confirmed or not).
    pub settle_attempted: BTreeSet<u64>,
    /// The delivery count of a nack-requeue that returned Ok.
    pub counts: BTreeMap<u64, u32>,
}

/// One engine operation of a crash workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Publish one message with a payload of this many bytes.
    Publish(usize),
    /// Publish this many messages atomically.
    Batch(usize),
    /// Receive the next message and ack it.
    Ack,
    /// Receive the next message and nack it with requeue.
    Requeue,
    /// Receive the next message and reject it (nack without requeue).
    Reject,
    /// Drop the store and open it again (an unclean restart).
    Reopen,
    /// `Store::sync`: everything before it becomes durable under every policy.
    Sync,
}

/// Drives a store through operations, recording what it confirmed. Stops at the first error
/// (the disk halted or the store is poisoned) and reports it.
pub struct Driver {
    pub vfs: Arc<dyn Vfs>,
    pub dir: &'static Path,
    pub options: StoreOptions,
    pub store: Option<Store>,
    pub confirmed: Confirmed,
    /// What was confirmed when the last `Op::Sync` returned: durable under every policy.
    pub synced: Confirmed,
    next_id: u64,
}

impl Driver {
    pub fn open(
        vfs: Arc<dyn Vfs>,
        dir: &'static Path,
        options: StoreOptions,
    ) -> Result<Driver, Error> {
        let store = Store::open_with_vfs(Arc::clone(&vfs), dir, options.clone())?;
        let next_id = store.stats().next_message_id;
        Ok(Driver {
            vfs,
            dir,
            options,
            store: Some(store),
            confirmed: Confirmed::default(),
            synced: Confirmed::default(),
            next_id,
        })
    }

    fn queue(&self) -> Result<Queue, Error> {
        match &self.store {
            Some(store) => store.declare_queue("q"),
            None => Err(Error::Closed),
        }
    }

    /// Runs `op`; an error means the run is over.
    pub fn apply(&mut self, op: Op) -> Result<(), Error> {
        match op {
            Op::Publish(len) => {
                let q = self.queue()?;
                let p = payload(self.next_id, len);
                self.confirmed.attempted.insert(self.next_id, p.clone());
                let id = q.publish(&p)?;
                assert_eq!(id.0, self.next_id, "ids are dense");
                self.confirmed.published.insert(id.0, p);
                self.next_id += 1;
            }
            Op::Batch(n) => {
                let q = self.queue()?;
                let batch: Vec<Vec<u8>> = (0..n as u64)
                    .map(|i| payload(self.next_id + i, 40))
                    .collect();
                for (i, p) in batch.iter().enumerate() {
                    self.confirmed
                        .attempted
                        .insert(self.next_id + i as u64, p.clone());
                }
                let ids = q.publish_batch(&batch)?;
                for (id, p) in ids.iter().zip(batch) {
                    self.confirmed.published.insert(id.0, p);
                }
                self.next_id += n as u64;
            }
            Op::Ack | Op::Requeue | Op::Reject => {
                let q = self.queue()?;
                let Some(d) = q.try_receive()? else {
                    return Ok(());
                };
                match op {
                    Op::Ack => {
                        self.confirmed.settle_attempted.insert(d.id.0);
                        q.ack(d.id)?;
                        self.confirmed.settled.insert(d.id.0);
                    }
                    Op::Reject => {
                        self.confirmed.settle_attempted.insert(d.id.0);
                        q.nack(d.id, false)?;
                        self.confirmed.settled.insert(d.id.0);
                    }
                    _ => {
                        q.nack(d.id, true)?;
                        self.confirmed.counts.insert(d.id.0, d.delivery_count);
                    }
                }
            }
            Op::Sync => {
                match &self.store {
                    Some(store) => store.sync()?,
                    None => return Err(Error::Closed),
                }
                self.synced = self.confirmed.clone();
            }
            Op::Reopen => {
                self.store = None;
                let store =
                    Store::open_with_vfs(Arc::clone(&self.vfs), self.dir, self.options.clone())?;
                // Messages lost with an unconfirmed tail give their ids to later messages.
                self.next_id = store.stats().next_message_id;
                if let Some(lost) = self
                    .confirmed
                    .published
                    .keys()
                    .find(|&&id| id >= self.next_id)
                {
                    panic!("confirmed message {lost} lost by an unclean restart");
                }
                for id in self
                    .confirmed
                    .attempted
                    .keys()
                    .copied()
                    .filter(|&id| id >= self.next_id)
                    .collect::<Vec<_>>()
                {
                    self.confirmed.attempted.remove(&id);
                }
                self.store = Some(store);
            }
        }
        Ok(())
    }
}

/// Receives everything in every queue: id → (payload, delivery count).
pub fn drain(store: &Store) -> BTreeMap<u64, (Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    for name in store.queue_names() {
        let q = store.queue(&name).expect("listed queue exists");
        while let Some(d) = q.try_receive().expect("receive after recovery") {
            assert!(
                out.insert(d.id.0, (d.payload, d.delivery_count)).is_none(),
                "{} delivered twice",
                d.id
            );
        }
    }
    out
}

/// Opens the store on `vfs` and checks it against what was confirmed under
/// `FsyncPolicy::Always`. Panics with `label` on any violation; returns what it found.
pub fn check(
    label: &str,
    vfs: Arc<dyn Vfs>,
    dir: &Path,
    options: StoreOptions,
    c: &Confirmed,
) -> BTreeMap<u64, (Vec<u8>, u32)> {
    let store = Store::open_with_vfs(vfs, dir, options)
        .unwrap_or_else(|e| panic!("{label}: reopen after the crash failed: {e}"));
    let found = drain(&store);
    drop(store);
    for (id, p) in &c.published {
        if c.settle_attempted.contains(id) {
            continue;
        }
        let got = found
            .get(id)
            .unwrap_or_else(|| panic!("{label}: confirmed message {id} lost"));
        assert_eq!(&got.0, p, "{label}: payload of {id} changed");
    }
    for id in &c.settled {
        assert!(
            !found.contains_key(id),
            "{label}: acked or rejected message {id} came back"
        );
    }
    for (id, (p, count)) in &found {
        let sent = c
            .attempted
            .get(id)
            .unwrap_or_else(|| panic!("{label}: phantom message {id}"));
        assert_eq!(
            p, sent,
            "{label}: payload of {id} differs from what was published"
        );
        let floor = c.counts.get(id).copied().unwrap_or(0);
        assert!(
            *count > floor,
            "{label}: delivery count of {id} went backwards ({count} <= {floor})"
        );
    }
    found
}

/// A message id, for tests that need one.
pub fn id(n: u64) -> MessageId {
    MessageId(n)
}
