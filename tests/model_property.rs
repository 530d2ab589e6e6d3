//! Model-based property test: random sequences of publish / receive / ack / nack / reopen
//! operations over two or three queues give the same results on a real `Store` (on
//! `MemVfs`, 64 KiB segments so that the log rolls over) as on a small in-memory model of
//! the documented semantics: ids, payloads, `redelivered`, `delivery_count`, error kinds,
//! per-queue and store counters, and the number of records recovery replays.
//!
//! Delivery order follows the documentation of `Queue::try_receive`: messages that were
//! delivered before and came back (nacked with requeue, or out with a consumer when the store
//! was dropped or closed) first, oldest id first; then never-delivered messages in publish
//! order. A reopen moves every outstanding delivery back to ready as "delivered before"; with
//! `persist_deliveries(false)` only the delivery count written by the last requeue survives.
//!
//! # Running and replaying
//! - `cargo test --test model_property` runs 200 cases (`PROPTEST_CASES=2000` for more).
//! - On failure proptest shrinks the case, prints the minimal failing input, and appends a
//!   `cc <seed>` line to `tests/proptest-regressions/model_property.txt`. Every seed in that
//!   file is replayed first on each later run, so keep the file to guard the regression.
//! - `PROPTEST_RNG_SEED=<u64>` makes the whole run deterministic (same cases in the same
//!   order), e.g. to reproduce a failure seen on another machine when only the seed was kept.
//! - `PROPTEST_VERBOSE=1` prints every generated case.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use walq::format::{frame_len, SealBody, PUBLISH_HEADER_LEN, SEGMENT_HEADER_LEN};
use walq::io::MemVfs;
use walq::{Delivery, Error, FsyncPolicy, MessageId, Queue, Store, StoreOptions};

const SEGMENT_SIZE: u64 = 64 << 10;
const MAX_MESSAGE: usize = 24 << 10;
const QUEUE_NAMES: [&str; 3] = ["alpha", "beta", "gamma"];
const DEFAULT_CASES: u32 = 200;

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

/// A payload: small ones are stored as generated; big ones (to fill segments and hit the
/// size limits) are expanded from a seed so that generation and shrinking stay cheap.
#[derive(Clone)]
enum Payload {
    Small(Vec<u8>),
    Big { len: usize, seed: u8 },
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Small(bytes) => write!(f, "Small({bytes:?})"),
            Payload::Big { len, seed } => write!(f, "Big {{ len: {len}, seed: {seed} }}"),
        }
    }
}

impl Payload {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Payload::Small(bytes) => bytes.clone(),
            Payload::Big { len, seed } => (0..*len)
                .map(|i| seed.wrapping_add((i as u8).wrapping_mul(31)) ^ (i >> 8) as u8)
                .collect(),
        }
    }
}

/// Which handle a settle goes through.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// `Store::ack` / `Store::nack`.
    Store,
    /// The handle of the queue the message belongs to.
    Own,
    /// The handle of queue `i % queues` (may be the wrong one: `WrongQueue`).
    Queue(usize),
}

#[derive(Debug, Clone, Copy)]
enum How {
    Ack,
    Nack { requeue: bool },
}

#[derive(Debug, Clone)]
enum Op {
    Publish {
        queue: usize,
        payload: Payload,
    },
    /// Zero payloads expect `EmptyBatch`.
    PublishBatch {
        queue: usize,
        payloads: Vec<Payload>,
    },
    Receive {
        queue: usize,
    },
    /// Settles the `k % n`-th outstanding delivery (oldest first); skipped if none.
    Settle {
        k: usize,
        how: How,
        via: Via,
    },
    /// Settles any id ever assigned, whatever its state: exercises `NotDelivered`,
    /// `AlreadySettled` and `WrongQueue`.
    SettleAny {
        pick: usize,
        how: How,
        via: Via,
    },
    /// Settles an id that was never assigned: `UnknownMessage`.
    AckUnknown {
        beyond: u64,
        how: How,
        via: Via,
    },
    /// Drops every handle without `close` and opens the store again.
    Reopen,
    /// `close`, checks that handles refuse work, then opens again.
    CloseReopen,
    Sync,
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        12 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Payload::Small),
        2 => (8_000usize..=26_000, any::<u8>()).prop_map(|(len, seed)| Payload::Big { len, seed }),
    ]
}

fn via() -> impl Strategy<Value = Via> {
    prop_oneof![
        2 => Just(Via::Store),
        3 => Just(Via::Own),
        1 => (0usize..3).prop_map(Via::Queue),
    ]
}

fn how() -> impl Strategy<Value = How> {
    prop_oneof![
        3 => Just(How::Ack),
        2 => any::<bool>().prop_map(|requeue| How::Nack { requeue }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..3, payload()).prop_map(|(queue, payload)| Op::Publish { queue, payload }),
        2 => (0usize..3, proptest::collection::vec(payload(), 0..=5))
            .prop_map(|(queue, payloads)| Op::PublishBatch { queue, payloads }),
        7 => (0usize..3).prop_map(|queue| Op::Receive { queue }),
        3 => (any::<usize>(), Just(How::Ack), via())
            .prop_map(|(k, how, via)| Op::Settle { k, how, via }),
        2 => (any::<usize>(), any::<bool>(), via()).prop_map(|(k, requeue, via)| Op::Settle {
            k,
            how: How::Nack { requeue },
            via
        }),
        1 => (any::<usize>(), how(), via()).prop_map(|(pick, how, via)| Op::SettleAny {
            pick,
            how,
            via
        }),
        1 => (prop_oneof![0u64..1000, Just(u64::MAX / 2)], how(), via())
            .prop_map(|(beyond, how, via)| Op::AckUnknown { beyond, how, via }),
        1 => Just(Op::Reopen),
        1 => Just(Op::CloseReopen),
        1 => Just(Op::Sync),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    queues: usize,
    fsync: FsyncPolicy,
    persist_deliveries: bool,
    ops: Vec<Op>,
}

fn case() -> impl Strategy<Value = Case> {
    let fsync = prop_oneof![
        Just(FsyncPolicy::Always),
        Just(FsyncPolicy::Never),
        Just(FsyncPolicy::Batch {
            max_messages: 4,
            max_delay: Duration::from_millis(1)
        }),
        Just(FsyncPolicy::Interval(Duration::from_millis(2))),
    ];
    (
        2usize..=3,
        fsync,
        prop::bool::weighted(0.75),
        proptest::collection::vec(op(), 1..=60),
    )
        .prop_map(|(queues, fsync, persist_deliveries, ops)| Case {
            queues,
            fsync,
            persist_deliveries,
            ops,
        })
}

// ---------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MState {
    Ready,
    InFlight,
    Acked,
    Dropped,
}

#[derive(Debug)]
struct MMsg {
    queue: usize,
    payload: Vec<u8>,
    state: MState,
    /// Deliveries so far (kept across requeues and reopens).
    count: u32,
    /// The count written by the last requeue (what survives a reopen without deliver records).
    logged_count: Option<u32>,
    /// Set at the first delivery; later deliveries must report the same time.
    published_at: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct MQueue {
    /// Never-delivered ready messages; ids are assigned in publish order.
    fresh: BTreeSet<u64>,
    /// Ready messages that were delivered before.
    again: BTreeSet<u64>,
    unacked: u64,
    published: u64,
    acked: u64,
    rejected: u64,
}

/// What an operation is expected to fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Unknown(u64),
    AlreadySettled(u64),
    NotDelivered(u64),
    WrongQueue {
        id: u64,
        expected: String,
        actual: String,
    },
    TooLarge(&'static str),
    EmptyBatch,
    Closed,
    Other(String),
}

fn kind(err: &Error) -> Kind {
    match err {
        Error::UnknownMessage { id } => Kind::Unknown(id.0),
        Error::AlreadySettled { id } => Kind::AlreadySettled(id.0),
        Error::NotDelivered { id } => Kind::NotDelivered(id.0),
        Error::WrongQueue {
            id,
            expected,
            actual,
        } => Kind::WrongQueue {
            id: id.0,
            expected: expected.clone(),
            actual: actual.clone(),
        },
        Error::TooLarge { what, .. } => Kind::TooLarge(what),
        Error::EmptyBatch => Kind::EmptyBatch,
        Error::Closed => Kind::Closed,
        other => Kind::Other(format!("{other:?}")),
    }
}

#[derive(Debug)]
struct Model {
    queues: Vec<MQueue>,
    msgs: BTreeMap<u64, MMsg>,
    /// Outstanding deliveries, oldest delivery first.
    outstanding: Vec<u64>,
    persist_deliveries: bool,
    /// Records of the store's kinds written so far (what a reopen must replay).
    records: u64,
    acked: u64,
    rejected: u64,
}

/// What the model expects from a delivery.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    id: u64,
    queue: String,
    payload: Vec<u8>,
    redelivered: bool,
    delivery_count: u32,
}

impl Model {
    fn new(queues: usize, persist_deliveries: bool) -> Model {
        Model {
            queues: (0..queues).map(|_| MQueue::default()).collect(),
            msgs: BTreeMap::new(),
            outstanding: Vec::new(),
            persist_deliveries,
            records: queues as u64,
            acked: 0,
            rejected: 0,
        }
    }

    fn next_id(&self) -> u64 {
        self.msgs.len() as u64
    }

    fn publish(&mut self, queue: usize, payloads: &[Vec<u8>]) -> Result<Vec<u64>, Kind> {
        if payloads.is_empty() {
            return Err(Kind::EmptyBatch);
        }
        if payloads.iter().any(|p| p.len() > MAX_MESSAGE) {
            return Err(Kind::TooLarge("message"));
        }
        let group: usize = payloads
            .iter()
            .map(|p| frame_len(PUBLISH_HEADER_LEN + p.len()))
            .sum();
        let capacity = SEGMENT_SIZE as usize - SEGMENT_HEADER_LEN - frame_len(SealBody::LEN);
        if group > capacity {
            return Err(Kind::TooLarge("record group"));
        }
        let mut ids = Vec::new();
        for payload in payloads {
            let id = self.next_id();
            self.msgs.insert(
                id,
                MMsg {
                    queue,
                    payload: payload.clone(),
                    state: MState::Ready,
                    count: 0,
                    logged_count: None,
                    published_at: None,
                },
            );
            self.queues[queue].fresh.insert(id);
            self.queues[queue].published += 1;
            self.records += 1;
            ids.push(id);
        }
        Ok(ids)
    }

    fn receive(&mut self, queue: usize) -> Option<Expected> {
        let q = &mut self.queues[queue];
        let id = q.again.pop_first().or_else(|| q.fresh.pop_first())?;
        q.unacked += 1;
        let msg = self.msgs.get_mut(&id)?;
        msg.state = MState::InFlight;
        msg.count += 1;
        self.outstanding.push(id);
        if self.persist_deliveries {
            self.records += 1;
        }
        Some(Expected {
            id,
            queue: QUEUE_NAMES[queue].to_owned(),
            payload: msg.payload.clone(),
            redelivered: msg.count > 1,
            delivery_count: msg.count,
        })
    }

    /// Settles `id` through `via` (`None` for the store, else a queue index).
    fn settle(&mut self, id: u64, via: Option<usize>, how: How) -> Result<(), Kind> {
        let Some(msg) = self.msgs.get_mut(&id) else {
            return Err(Kind::Unknown(id));
        };
        match msg.state {
            MState::Acked | MState::Dropped => return Err(Kind::AlreadySettled(id)),
            MState::Ready => return Err(Kind::NotDelivered(id)),
            MState::InFlight => {}
        }
        if let Some(handle) = via {
            if handle != msg.queue {
                return Err(Kind::WrongQueue {
                    id,
                    expected: QUEUE_NAMES[handle].to_owned(),
                    actual: QUEUE_NAMES[msg.queue].to_owned(),
                });
            }
        }
        let q = &mut self.queues[msg.queue];
        q.unacked -= 1;
        match how {
            How::Ack => {
                msg.state = MState::Acked;
                q.acked += 1;
                self.acked += 1;
            }
            How::Nack { requeue: false } => {
                msg.state = MState::Dropped;
                q.rejected += 1;
                self.rejected += 1;
            }
            How::Nack { requeue: true } => {
                msg.state = MState::Ready;
                msg.logged_count = Some(msg.count);
                q.again.insert(id);
            }
        }
        self.records += 1;
        self.outstanding.retain(|&o| o != id);
        Ok(())
    }

    /// The store was dropped or closed and opened again.
    fn reopen(&mut self) {
        for id in std::mem::take(&mut self.outstanding) {
            let Some(msg) = self.msgs.get_mut(&id) else {
                continue;
            };
            msg.state = MState::Ready;
            if !self.persist_deliveries {
                msg.count = msg.logged_count.unwrap_or(0);
            }
            let q = &mut self.queues[msg.queue];
            q.unacked -= 1;
            if msg.count > 0 {
                q.again.insert(id);
            } else {
                q.fresh.insert(id);
            }
        }
    }

    /// Table entries from the oldest unsettled message to the newest one.
    fn tracked(&self) -> usize {
        let oldest = self
            .msgs
            .iter()
            .find(|(_, m)| !matches!(m.state, MState::Acked | MState::Dropped))
            .map_or(self.next_id(), |(&id, _)| id);
        (self.next_id() - oldest) as usize
    }
}

// ---------------------------------------------------------------------------------------
// The system under test
// ---------------------------------------------------------------------------------------

struct Sut {
    vfs: MemVfs,
    dir: PathBuf,
    opts: StoreOptions,
    store: Option<Store>,
    queues: Vec<Queue>,
}

fn open(vfs: &MemVfs, dir: &Path, opts: &StoreOptions) -> Store {
    Store::open_with_vfs(Arc::new(vfs.clone()), dir, opts.clone()).expect("open the store")
}

impl Sut {
    fn new(case: &Case) -> Sut {
        let vfs = MemVfs::new();
        let dir = PathBuf::from("/model/store");
        let opts = StoreOptions::new()
            .segment_size(SEGMENT_SIZE)
            .max_message_size(MAX_MESSAGE as u64)
            .fsync(case.fsync)
            .persist_deliveries(case.persist_deliveries);
        let store = open(&vfs, &dir, &opts);
        let queues = QUEUE_NAMES[..case.queues]
            .iter()
            .map(|name| store.declare_queue(name).expect("declare"))
            .collect();
        Sut {
            vfs,
            dir,
            opts,
            store: Some(store),
            queues,
        }
    }

    fn reopen(&mut self) {
        // Every handle must go first, or the directory stays locked.
        self.queues.clear();
        self.store = None;
        let store = open(&self.vfs, &self.dir, &self.opts);
        self.queues = store
            .queue_names()
            .iter()
            .map(|n| store.queue(n).expect("queue"))
            .collect();
        self.store = Some(store);
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("the store is open")
    }
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if cond {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

fn same<T: PartialEq + std::fmt::Debug>(
    step: usize,
    op: &Op,
    what: &str,
    real: T,
    model: T,
) -> Result<(), TestCaseError> {
    check(real == model, || {
        format!("step {step} ({op:?}): {what}: store gave {real:?}, model expects {model:?}")
    })
}

fn settle_real(sut: &Sut, id: u64, via: Option<usize>, how: How) -> Result<(), Kind> {
    let id = MessageId(id);
    let result = match (via, how) {
        (None, How::Ack) => sut.store().ack(id),
        (None, How::Nack { requeue }) => sut.store().nack(id, requeue),
        (Some(q), How::Ack) => sut.queues[q].ack(id),
        (Some(q), How::Nack { requeue }) => sut.queues[q].nack(id, requeue),
    };
    result.map_err(|e| kind(&e))
}

fn resolve_via(via: Via, owner: Option<usize>, queues: usize) -> Option<usize> {
    match via {
        Via::Store => None,
        Via::Own => Some(owner.unwrap_or(0)),
        Via::Queue(i) => Some(i % queues),
    }
}

fn check_delivery(
    step: usize,
    op: &Op,
    model: &mut Model,
    got: Option<Delivery>,
    want: Option<Expected>,
    started: SystemTime,
) -> Result<(), TestCaseError> {
    let got_view = got.as_ref().map(|d| Expected {
        id: d.id.0,
        queue: d.queue.to_string(),
        payload: d.payload.clone(),
        redelivered: d.redelivered,
        delivery_count: d.delivery_count,
    });
    same(step, op, "delivery", got_view, want)?;
    if let Some(d) = got {
        let msg = model
            .msgs
            .get_mut(&d.id.0)
            .expect("delivered id is modelled");
        match msg.published_at {
            Some(first) => same(step, op, "published_at", d.published_at, first)?,
            None => {
                let floor = started - Duration::from_millis(1);
                check(
                    d.published_at >= floor && d.published_at <= SystemTime::now(),
                    || {
                        format!(
                            "step {step}: published_at {:?} out of range",
                            d.published_at
                        )
                    },
                )?;
                msg.published_at = Some(d.published_at);
            }
        }
    }
    Ok(())
}

fn check_stats(step: usize, op: &Op, sut: &Sut, model: &Model) -> Result<(), TestCaseError> {
    let stats = sut.store().stats();
    same(
        step,
        op,
        "queue names",
        sut.store()
            .queue_names()
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        QUEUE_NAMES[..model.queues.len()]
            .iter()
            .map(|n| n.to_string())
            .collect(),
    )?;
    same(
        step,
        op,
        "queue count",
        stats.queues.len(),
        model.queues.len(),
    )?;
    for (i, (real, m)) in stats.queues.iter().zip(&model.queues).enumerate() {
        let ready = (m.fresh.len() + m.again.len()) as u64;
        let want = (ready, m.unacked, m.published, m.acked, m.rejected);
        let got = (
            real.ready,
            real.unacked,
            real.published,
            real.acked,
            real.rejected,
        );
        same(
            step,
            op,
            &format!("queue {i} (ready, unacked, published, acked, rejected)"),
            got,
            want,
        )?;
        let handle = sut.queues[i].stats();
        same(step, op, "Queue::stats vs Store::stats", &handle, real)?;
    }
    let ready: u64 = model
        .queues
        .iter()
        .map(|q| (q.fresh.len() + q.again.len()) as u64)
        .sum();
    let unacked: u64 = model.queues.iter().map(|q| q.unacked).sum();
    same(
        step,
        op,
        "store (ready, unacked, next_message_id, acked, rejected, tracked_messages)",
        (
            stats.ready,
            stats.unacked,
            stats.next_message_id,
            stats.acked,
            stats.rejected,
            stats.tracked_messages,
        ),
        (
            ready,
            unacked,
            model.next_id(),
            model.acked,
            model.rejected,
            model.tracked(),
        ),
    )?;
    check(stats.segments >= 1, || format!("step {step}: no segment"))
}

fn check_recovery(step: usize, op: &Op, sut: &Sut, model: &Model) -> Result<(), TestCaseError> {
    let report = sut.store().recovery_report();
    same(
        step,
        op,
        "truncation after reopen",
        &report.truncated,
        &None,
    )?;
    check(
        report.quarantined.is_empty() && report.removed_temp_files.is_empty(),
        || format!("step {step}: unexpected recovery actions {report:?}"),
    )?;
    same(step, op, "records replayed", report.records, model.records)?;
    // A reopen scans every segment and adds one only if the last one was sealed.
    let segments = sut.store().stats().segments;
    check(
        segments == report.segments || segments == report.segments + 1,
        || {
            format!(
                "step {step}: {segments} segments after scanning {}",
                report.segments
            )
        },
    )
}

/// Runs one case; returns how many segments the store ended with.
fn run_case(case: &Case) -> Result<usize, TestCaseError> {
    let started = SystemTime::now();
    let n = case.queues;
    let mut sut = Sut::new(case);
    let mut model = Model::new(n, case.persist_deliveries);
    let mut max_segments = 1;
    for (step, op) in case.ops.iter().enumerate() {
        match op {
            Op::Publish { queue, payload } => {
                let q = queue % n;
                let bytes = payload.bytes();
                let real = sut.queues[q].publish(&bytes).map_err(|e| kind(&e));
                let want = model
                    .publish(q, std::slice::from_ref(&bytes))
                    .map(|ids| MessageId(ids[0]));
                same(step, op, "publish", real, want)?;
            }
            Op::PublishBatch { queue, payloads } => {
                let q = queue % n;
                let bytes: Vec<Vec<u8>> = payloads.iter().map(Payload::bytes).collect();
                let real = sut.queues[q]
                    .publish_batch(&bytes)
                    .map(|ids| ids.iter().map(|id| id.0).collect::<Vec<_>>())
                    .map_err(|e| kind(&e));
                let want = model.publish(q, &bytes);
                same(step, op, "publish_batch", real, want)?;
            }
            Op::Receive { queue } => {
                let q = queue % n;
                let got = sut.queues[q]
                    .try_receive()
                    .map_err(|e| TestCaseError::fail(format!("step {step}: receive: {e}")))?;
                let want = model.receive(q);
                check_delivery(step, op, &mut model, got, want, started)?;
            }
            Op::Settle { k, how, via } => {
                if model.outstanding.is_empty() {
                    continue;
                }
                let id = model.outstanding[k % model.outstanding.len()];
                let owner = model.msgs.get(&id).map(|m| m.queue);
                let via = resolve_via(*via, owner, n);
                let real = settle_real(&sut, id, via, *how);
                let want = model.settle(id, via, *how);
                same(step, op, "settle", real, want)?;
            }
            Op::SettleAny { pick, how, via } => {
                if model.msgs.is_empty() {
                    continue;
                }
                let id = (*pick % model.msgs.len()) as u64;
                let owner = model.msgs.get(&id).map(|m| m.queue);
                let via = resolve_via(*via, owner, n);
                let real = settle_real(&sut, id, via, *how);
                let want = model.settle(id, via, *how);
                same(step, op, "settle any", real, want)?;
            }
            Op::AckUnknown { beyond, how, via } => {
                let id = model.next_id() + beyond;
                let via = resolve_via(*via, None, n);
                let real = settle_real(&sut, id, via, *how);
                same(step, op, "settle unknown", real, Err(Kind::Unknown(id)))?;
            }
            Op::Reopen => {
                sut.reopen();
                model.reopen();
                check_recovery(step, op, &sut, &model)?;
            }
            Op::CloseReopen => {
                sut.store()
                    .close()
                    .map_err(|e| TestCaseError::fail(format!("step {step}: close: {e}")))?;
                // A second close is a no-op; every handle now refuses work.
                same(step, op, "second close", sut.store().close().is_ok(), true)?;
                let q = &sut.queues[0];
                same(
                    step,
                    op,
                    "publish after close",
                    q.publish(b"late").map_err(|e| kind(&e)),
                    Err(Kind::Closed),
                )?;
                same(
                    step,
                    op,
                    "receive after close",
                    q.try_receive().map_err(|e| kind(&e)),
                    Err(Kind::Closed),
                )?;
                if let Some(&id) = model.outstanding.first() {
                    same(
                        step,
                        op,
                        "ack after close",
                        sut.store().ack(MessageId(id)).map_err(|e| kind(&e)),
                        Err(Kind::Closed),
                    )?;
                }
                sut.reopen();
                model.reopen();
                check_recovery(step, op, &sut, &model)?;
            }
            Op::Sync => {
                sut.store()
                    .sync()
                    .map_err(|e| TestCaseError::fail(format!("step {step}: sync: {e}")))?;
            }
        }
        check_stats(step, op, &sut, &model)?;
        max_segments = max_segments.max(sut.store().stats().segments);
    }

    // Finally drain everything: a reopen, then every queue until empty, acking all.
    sut.reopen();
    model.reopen();
    let end = Op::Reopen;
    let step = case.ops.len();
    check_recovery(step, &end, &sut, &model)?;
    for q in 0..n {
        loop {
            let got = sut.queues[q]
                .try_receive()
                .map_err(|e| TestCaseError::fail(format!("drain: receive: {e}")))?;
            let want = model.receive(q);
            let done = got.is_none();
            let id = got.as_ref().map(|d| d.id.0);
            check_delivery(step, &end, &mut model, got, want, started)?;
            if done {
                break;
            }
            if let Some(id) = id {
                let real = settle_real(&sut, id, None, How::Ack);
                let want = model.settle(id, None, How::Ack);
                same(step, &end, "drain ack", real, want)?;
            }
        }
    }
    check_stats(step, &end, &sut, &model)?;
    let stats = sut.store().stats();
    same(step, &end, "drained ready", stats.ready, 0)?;
    same(step, &end, "drained tracked", stats.tracked_messages, 0)?;
    Ok(max_segments)
}

#[test]
fn store_matches_the_model() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let config = Config {
        cases,
        failure_persistence: if std::env::var_os("PROPTEST_DISABLE_FAILURE_PERSISTENCE").is_some() {
            None
        } else {
            Some(Box::new(FileFailurePersistence::Direct(
                "tests/proptest-regressions/model_property.txt",
            )))
        },
        source_file: Some(file!()),
        // Shrinking replays whole cases; keep it bounded.
        max_shrink_iters: 2048,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let rolled = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&case(), |case| {
        if run_case(&case)? > 1 {
            rolled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}\n(replay: see the header of tests/model_property.rs)");
    }
    // The generator must keep exercising segment roll-over, or the test silently weakens.
    if cases >= 100 {
        let rolled = rolled.into_inner();
        assert!(
            rolled > 0,
            "no case out of {cases} rolled over to a second segment"
        );
        eprintln!("model_property: {rolled} of {cases} cases rolled over to a second segment");
    }
}
