// The logic of the `api_model` fuzz target, shared by `fuzz/fuzz_targets/api_model.rs` (under
// libFuzzer) and by `tests/fuzz_corpus.rs` (which replays `fuzz/corpus/api_model/*` under
// `cargo test`). This file is `include!`d, so it holds no inner attributes or `//!` comments.
//
// The input is a script of API operations over two queues, run against a real `Store` and a
// small in-memory model of the documented semantics; a panic is a disagreement (or a store
// that fails where it must not). Checked after every operation: ids, payloads, `redelivered`,
// `delivery_count`, error kinds, per-queue counters (ready, unacked, published, acked,
// rejected, dropped), store counters, the consumer's unacked count; after every reopen, the
// number of records recovery replayed.
//
// Layout: `flags, op, operands..., op, operands...`; missing bytes read as zero; at most
// `MAX_OPS` operations run. Flags: bit 0: a `SimVfs` disk (the crash op is a real process
// crash) instead of `MemVfs`; bit 1: `persist_deliveries(false)`; bit 2:
// `FsyncPolicy::Always` (else `Never`); bits 3-4: `max_deliveries` of queue `b` (0: none;
// over-delivered messages are dropped, `b` has no dead-letter queue).
//
// Ops (`op % 16`), operands in brackets:
//  0, 1  publish [queue, len]          2  batch [queue, n % 4, len]   3, 4  receive [queue]
//  5  store ack [k]                     6  store nack requeue [k]       7  store reject [k]
//  8  settle through a queue handle [queue, k, how] (may be `WrongQueue` / `WrongConsumer`)
//  9  store settle of any id [pick, how] (`NotDelivered`, `AlreadySettled`, `UnknownMessage`)
// 10  open a consumer, replacing the one there [queue, prefetch % 4] (0: `InvalidOptions`,
//     else the limit; even bytes of the second operand's high bit mean no limit)
// 11  consumer receive                 12  consumer settle [k, how % 4] (3: `ack_multiple`)
// 13  reopen [mode % 3]: 0 drop every handle (the consumer first: it returns its deliveries),
//     1 close then drop, 2 crash the process (`SimVfs`; with `MemVfs` the same as 1)
// 14  sync, or compact if the operand is odd [how] (the replay count then restarts at the
//     checkpoint)                      15  close or drop the consumer [how]
// `k` picks the `k % n`-th delivery out, by id; `how % 3`: ack, nack requeue, reject.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use walq::io::{CrashMode, MemVfs, SimVfs, Vfs};
use walq::{
    CompactionOptions, Consumer, ConsumerOptions, Error, FsyncPolicy, MessageId, Queue, QueueOptions, Store,
    StoreOptions, MIN_SEGMENT_SIZE,
};

/// Operations run per input at most.
pub const MAX_OPS: usize = 200;
/// Largest payload an input can ask for.
pub const MAX_PAYLOAD: usize = 256;

const NAMES: [&str; 2] = ["a", "b"];

/// What one input did, so that the corpus replay can check its seeds reach deep paths.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApiOutcome {
    /// Operations run.
    pub ops: usize,
    /// Messages delivered.
    pub delivered: usize,
    /// Reopens, of any kind.
    pub reopens: usize,
    /// Process crashes on `SimVfs`.
    pub crashes: usize,
    /// Calls to `Store::compact`.
    pub compactions: usize,
    /// Messages those calls relocated.
    pub relocated: u64,
    /// Operations that failed as the model expected.
    pub errors: usize,
    /// Messages dropped (rejected, or over the delivery limit), by the end.
    pub dropped: u64,
}

/// Reads a fuzz input front to back; missing bytes read as zero.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn u8(&mut self) -> u8 {
        self.next().unwrap_or(0)
    }
}

/// The payload of the next message: derived from its id, so that any mix-up shows.
fn payload(id: u64, len: usize) -> Vec<u8> {
    (0..len.min(MAX_PAYLOAD))
        .map(|i| (id as u8).wrapping_mul(31) ^ (i as u8) ^ (id >> 8) as u8)
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Ready,
    Out,
    Acked,
    Dropped,
}

#[derive(Debug)]
struct Msg {
    queue: usize,
    payload: Vec<u8>,
    state: St,
    count: u32,
    /// The count written by the last requeue record.
    logged: Option<u32>,
    /// Out with the consumer (rather than through a queue handle).
    consumer: bool,
}

#[derive(Debug, Default)]
struct MQueue {
    fresh: BTreeSet<u64>,
    again: BTreeSet<u64>,
    published: u64,
    acked: u64,
    rejected: u64,
    dropped: u64,
}

#[derive(Debug)]
struct MConsumer {
    queue: usize,
    prefetch: u32,
    out: BTreeSet<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Unknown(u64),
    AlreadySettled(u64),
    NotDelivered(u64),
    WrongQueue(u64),
    WrongConsumer(u64),
    EmptyBatch,
    InvalidOptions,
    Other(String),
}

fn kind(err: &Error) -> Kind {
    match err {
        Error::UnknownMessage { id } => Kind::Unknown(id.0),
        Error::AlreadySettled { id } => Kind::AlreadySettled(id.0),
        Error::NotDelivered { id } => Kind::NotDelivered(id.0),
        Error::WrongQueue { id, .. } => Kind::WrongQueue(id.0),
        Error::WrongConsumer { id } => Kind::WrongConsumer(id.0),
        Error::EmptyBatch => Kind::EmptyBatch,
        Error::InvalidOptions(_) => Kind::InvalidOptions,
        other => Kind::Other(other.to_string()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Ack,
    Requeue,
    Reject,
}

fn how(byte: u8) -> How {
    match byte % 3 {
        0 => How::Ack,
        1 => How::Requeue,
        _ => How::Reject,
    }
}

/// What a delivery must look like: (id, queue, payload, redelivered, delivery count).
type Seen = (u64, String, Vec<u8>, bool, u32);

#[derive(Debug)]
struct Model {
    msgs: Vec<Msg>,
    queues: [MQueue; 2],
    consumer: Option<MConsumer>,
    persist: bool,
    max_deliveries_b: u32,
    records: u64,
    acked: u64,
    rejected: u64,
}

impl Model {
    fn out(&self) -> Vec<u64> {
        (0..self.msgs.len() as u64)
            .filter(|&id| self.msgs[id as usize].state == St::Out)
            .collect()
    }

    fn publish(&mut self, q: usize, lens: &[usize]) -> Result<Vec<u64>, Kind> {
        if lens.is_empty() {
            return Err(Kind::EmptyBatch);
        }
        let mut ids = Vec::new();
        for &len in lens {
            let id = self.msgs.len() as u64;
            self.msgs.push(Msg {
                queue: q,
                payload: payload(id, len),
                state: St::Ready,
                count: 0,
                logged: None,
                consumer: false,
            });
            self.queues[q].fresh.insert(id);
            self.queues[q].published += 1;
            self.records += 1;
            ids.push(id);
        }
        Ok(ids)
    }

    fn receive(&mut self, q: usize, consumer: bool) -> Option<Seen> {
        if consumer {
            let c = self.consumer.as_ref()?;
            if c.prefetch > 0 && c.out.len() >= c.prefetch as usize {
                return None;
            }
        }
        let queue = &mut self.queues[q];
        let id = queue
            .again
            .pop_first()
            .or_else(|| queue.fresh.pop_first())?;
        if consumer {
            if let Some(c) = self.consumer.as_mut() {
                c.out.insert(id);
            }
        }
        if self.persist {
            self.records += 1;
        }
        let m = &mut self.msgs[id as usize];
        m.state = St::Out;
        m.count += 1;
        m.consumer = consumer;
        Some((
            id,
            NAMES[q].to_owned(),
            m.payload.clone(),
            m.count > 1,
            m.count,
        ))
    }

    /// `queue`: the handle's queue (`None`: the store); `consumer`: whether the handle is
    /// the consumer (`None`: the store, which may settle anything).
    fn check(&self, id: u64, queue: Option<usize>, consumer: Option<bool>) -> Result<(), Kind> {
        let Some(m) = self.msgs.get(id as usize) else {
            return Err(Kind::Unknown(id));
        };
        match m.state {
            St::Acked | St::Dropped => return Err(Kind::AlreadySettled(id)),
            St::Ready => return Err(Kind::NotDelivered(id)),
            St::Out => {}
        }
        if queue.is_some_and(|q| q != m.queue) {
            return Err(Kind::WrongQueue(id));
        }
        if consumer.is_some_and(|c| c != m.consumer) {
            return Err(Kind::WrongConsumer(id));
        }
        Ok(())
    }

    /// Drops a message that is out (rejected, or over the delivery limit).
    fn drop_msg(&mut self, id: u64, rejected: bool) {
        let m = &mut self.msgs[id as usize];
        m.state = St::Dropped;
        let q = &mut self.queues[m.queue];
        q.dropped += 1;
        if rejected {
            q.rejected += 1;
            self.rejected += 1;
        }
        self.records += 1;
    }

    /// A delivery comes back: requeued, or dropped at the delivery limit.
    fn back(&mut self, id: u64) {
        let m = &mut self.msgs[id as usize];
        let limit = if m.queue == 1 {
            self.max_deliveries_b
        } else {
            0
        };
        if limit > 0 && m.count >= limit {
            self.drop_msg(id, false);
            return;
        }
        m.state = St::Ready;
        m.logged = Some(m.count);
        self.queues[m.queue].again.insert(id);
        self.records += 1;
    }

    fn settle(
        &mut self,
        ids: &[u64],
        queue: Option<usize>,
        consumer: Option<bool>,
        how: How,
    ) -> Result<(), Kind> {
        let ids: BTreeSet<u64> = ids.iter().copied().collect();
        for &id in &ids {
            self.check(id, queue, consumer)?;
        }
        let mut acked = Vec::new();
        for &id in &ids {
            if self.msgs[id as usize].consumer {
                if let Some(c) = self.consumer.as_mut() {
                    c.out.remove(&id);
                }
            }
            self.msgs[id as usize].consumer = false;
            match how {
                How::Ack => {
                    let m = &mut self.msgs[id as usize];
                    m.state = St::Acked;
                    self.queues[m.queue].acked += 1;
                    self.acked += 1;
                    acked.push(id);
                }
                How::Requeue => self.back(id),
                How::Reject => self.drop_msg(id, true),
            }
        }
        // One Ack record holds up to 4096 ranges of consecutive ids: one is enough here.
        if !acked.is_empty() {
            self.records += 1;
        }
        Ok(())
    }

    /// The consumer is closed or dropped while the store is open.
    fn release(&mut self) {
        if let Some(c) = self.consumer.take() {
            for id in c.out {
                self.msgs[id as usize].consumer = false;
                self.back(id);
            }
        }
    }

    /// Reopened: every delivery out waits again. Returns the records replayed. Then, as
    /// `open` does, a message of `b` back with its `max_deliveries` used up is dropped.
    fn reopen(&mut self) -> u64 {
        self.consumer = None;
        for id in self.out() {
            let m = &mut self.msgs[id as usize];
            m.state = St::Ready;
            m.consumer = false;
            if !self.persist {
                m.count = m.logged.unwrap_or(0);
            }
            let q = &mut self.queues[m.queue];
            if m.count > 0 {
                q.again.insert(id);
            } else {
                q.fresh.insert(id);
            }
        }
        let replayed = self.records;
        let limit = self.max_deliveries_b;
        let over: Vec<u64> = self.queues[1]
            .again
            .iter()
            .copied()
            .filter(|&id| limit > 0 && self.msgs[id as usize].count >= limit)
            .collect();
        for id in over {
            self.queues[1].again.remove(&id);
            self.drop_msg(id, false);
        }
        replayed
    }

    fn tracked(&self) -> usize {
        let oldest = self
            .msgs
            .iter()
            .position(|m| !matches!(m.state, St::Acked | St::Dropped))
            .unwrap_or(self.msgs.len());
        self.msgs.len() - oldest
    }
}

/// The disk under the store.
enum Disk {
    Mem(MemVfs),
    Sim(SimVfs),
}

impl Disk {
    fn vfs(&self) -> Arc<dyn Vfs> {
        match self {
            Disk::Mem(v) => Arc::new(v.clone()),
            Disk::Sim(v) => Arc::new(v.clone()),
        }
    }
}

struct Sut {
    disk: Disk,
    opts: StoreOptions,
    store: Option<Store>,
    queues: Vec<Queue>,
    consumer: Option<Consumer>,
}

const DIR: &str = "/fuzz/api";

impl Sut {
    fn open(&mut self) {
        let store = Store::open_with_vfs(self.disk.vfs(), Path::new(DIR), self.opts.clone())
            .unwrap_or_else(|e| panic!("reopen failed: {e}"));
        let names: Vec<String> = store.queue_names().iter().map(|n| n.to_string()).collect();
        assert_eq!(names, NAMES, "queue names after reopen");
        self.queues = NAMES
            .iter()
            .map(|n| store.queue(n).expect("a declared queue exists"))
            .collect();
        self.store = Some(store);
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("the store is open")
    }

    fn drop_handles(&mut self) {
        self.consumer = None;
        self.queues.clear();
        self.store = None;
    }
}

fn settle_via_store(store: &Store, id: u64, how: How) -> Result<(), Kind> {
    let id = MessageId(id);
    match how {
        How::Ack => store.ack(id),
        How::Requeue => store.nack(id, true),
        How::Reject => store.nack(id, false),
    }
    .map_err(|e| kind(&e))
}

fn check_stats(sut: &Sut, model: &Model, step: usize) {
    let stats = sut.store().stats();
    for (q, (real, m)) in stats.queues.iter().zip(&model.queues).enumerate() {
        let unacked = model
            .msgs
            .iter()
            .filter(|msg| msg.queue == q && msg.state == St::Out)
            .count() as u64;
        assert_eq!(
            (
                real.ready,
                real.unacked,
                real.published,
                real.acked,
                real.rejected,
                real.dropped
            ),
            (
                (m.fresh.len() + m.again.len()) as u64,
                unacked,
                m.published,
                m.acked,
                m.rejected,
                m.dropped
            ),
            "step {step}: queue {} (ready, unacked, published, acked, rejected, dropped)",
            NAMES[q]
        );
    }
    assert_eq!(
        (
            stats.next_message_id,
            stats.acked,
            stats.rejected,
            stats.tracked_messages
        ),
        (
            model.msgs.len() as u64,
            model.acked,
            model.rejected,
            model.tracked()
        ),
        "step {step}: store (next_message_id, acked, rejected, tracked_messages)"
    );
    assert_eq!(
        sut.consumer.as_ref().map(Consumer::unacked),
        model.consumer.as_ref().map(|c| c.out.len()),
        "step {step}: consumer unacked"
    );
}

fn check_reopened(sut: &Sut, replayed: u64, step: usize) {
    let report = sut.store().recovery_report();
    assert_eq!(
        report.truncated, None,
        "step {step}: truncation after reopen"
    );
    assert_eq!(report.records, replayed, "step {step}: records replayed");
}

/// Target `api_model`: runs the script in `data` against a store and the model.
pub fn api_model_target(data: &[u8]) -> ApiOutcome {
    let mut s = Script(data);
    let flags = s.u8();
    let sim = flags & 1 != 0;
    let persist = flags & 2 == 0;
    let max_deliveries_b = u32::from((flags >> 3) & 3);
    let opts = StoreOptions::new()
        .segment_size(MIN_SEGMENT_SIZE)
        .persist_deliveries(persist)
        // No background thread: every input must run the same way each time.
        .compaction(CompactionOptions::new().background(None))
        .fsync(if flags & 4 != 0 {
            FsyncPolicy::Always
        } else {
            FsyncPolicy::Never
        });
    let disk = if sim {
        Disk::Sim(SimVfs::new(u64::from(flags)))
    } else {
        Disk::Mem(MemVfs::new())
    };
    let store = Store::open_with_vfs(disk.vfs(), Path::new(DIR), opts.clone())
        .expect("open an empty store");
    let mut b = QueueOptions::new();
    if max_deliveries_b > 0 {
        b = b.max_deliveries(max_deliveries_b);
    }
    let queues = vec![
        store.declare_queue(NAMES[0]).expect("declare a"),
        store.declare_queue_with(NAMES[1], b).expect("declare b"),
    ];
    let mut sut = Sut {
        disk,
        opts,
        store: Some(store),
        queues,
        consumer: None,
    };
    let mut model = Model {
        msgs: Vec::new(),
        queues: [MQueue::default(), MQueue::default()],
        consumer: None,
        persist,
        max_deliveries_b,
        records: 2,
        acked: 0,
        rejected: 0,
    };
    let mut outcome = ApiOutcome::default();

    for step in 0..MAX_OPS {
        let Some(op) = s.next() else { break };
        outcome.ops += 1;
        let mut failed = |real: &Result<(), Kind>| {
            if real.is_err() {
                outcome.errors += 1;
            }
        };
        match op % 16 {
            0..=2 => {
                let q = usize::from(s.u8() & 1);
                let n = if op % 16 == 2 {
                    usize::from(s.u8() % 4)
                } else {
                    1
                };
                let len = usize::from(s.u8());
                let next = model.msgs.len() as u64;
                let payloads: Vec<Vec<u8>> =
                    (0..n as u64).map(|i| payload(next + i, len)).collect();
                let handle = &sut.queues[q];
                let real = if op % 16 == 2 {
                    handle.publish_batch(&payloads)
                } else {
                    handle.publish(&payloads[0]).map(|id| vec![id])
                }
                .map(|ids| ids.iter().map(|id| id.0).collect::<Vec<_>>())
                .map_err(|e| kind(&e));
                let want = model.publish(q, &vec![len; n]);
                failed(&real.clone().map(drop));
                assert_eq!(real, want, "step {step}: publish of {n} to {}", NAMES[q]);
            }
            3 | 4 => {
                let q = usize::from(s.u8() & 1);
                let got = sut.queues[q]
                    .try_receive()
                    .unwrap_or_else(|e| panic!("step {step}: receive failed: {e}"));
                let want = model.receive(q, false);
                let got = got.map(|d| {
                    (
                        d.id.0,
                        d.queue.to_string(),
                        d.payload,
                        d.redelivered,
                        d.delivery_count,
                    )
                });
                outcome.delivered += usize::from(got.is_some());
                assert_eq!(got, want, "step {step}: receive from {}", NAMES[q]);
            }
            5..=7 => {
                let k = usize::from(s.u8());
                let out = model.out();
                if let Some(&id) = out.get(k % out.len().max(1)) {
                    let how = match op % 16 {
                        5 => How::Ack,
                        6 => How::Requeue,
                        _ => How::Reject,
                    };
                    let real = settle_via_store(sut.store(), id, how);
                    let want = model.settle(&[id], None, None, how);
                    failed(&real);
                    assert_eq!(real, want, "step {step}: store {how:?} of {id}");
                }
            }
            8 => {
                let q = usize::from(s.u8() & 1);
                let k = usize::from(s.u8());
                let how = how(s.u8());
                let out = model.out();
                if let Some(&id) = out.get(k % out.len().max(1)) {
                    let handle = &sut.queues[q];
                    let real = match how {
                        How::Ack => handle.ack(MessageId(id)),
                        How::Requeue => handle.nack(MessageId(id), true),
                        How::Reject => handle.nack(MessageId(id), false),
                    }
                    .map_err(|e| kind(&e));
                    let want = model.settle(&[id], Some(q), Some(false), how);
                    failed(&real);
                    assert_eq!(
                        real, want,
                        "step {step}: {how:?} of {id} through {}",
                        NAMES[q]
                    );
                }
            }
            9 => {
                let pick = u64::from(s.u8());
                let how = how(s.u8());
                let real = settle_via_store(sut.store(), pick, how);
                let want = model.settle(&[pick], None, None, how);
                failed(&real);
                assert_eq!(real, want, "step {step}: store {how:?} of any id {pick}");
            }
            10 => {
                let q = usize::from(s.u8() & 1);
                let p = s.u8();
                if sut.consumer.take().is_some() {
                    model.release();
                }
                let prefetch = if p & 0x80 != 0 {
                    None
                } else {
                    Some(u32::from(p % 4))
                };
                let mut options = ConsumerOptions::new();
                if let Some(p) = prefetch {
                    options = options.prefetch(p);
                }
                let real = sut.queues[q].consumer(options).map(|c| {
                    sut.consumer = Some(c);
                });
                let want = if prefetch == Some(0) {
                    Err(Kind::InvalidOptions)
                } else {
                    model.consumer = Some(MConsumer {
                        queue: q,
                        prefetch: prefetch.unwrap_or(0),
                        out: BTreeSet::new(),
                    });
                    Ok(())
                };
                let real = real.map_err(|e| kind(&e));
                failed(&real);
                assert_eq!(real, want, "step {step}: consumer on {}", NAMES[q]);
            }
            11 => {
                if let (Some(c), Some(mc)) = (&sut.consumer, &model.consumer) {
                    let q = mc.queue;
                    let got = c
                        .try_receive()
                        .unwrap_or_else(|e| panic!("step {step}: consumer receive failed: {e}"))
                        .map(|d| {
                            (
                                d.id.0,
                                d.queue.to_string(),
                                d.payload,
                                d.redelivered,
                                d.delivery_count,
                            )
                        });
                    let want = model.receive(q, true);
                    outcome.delivered += usize::from(got.is_some());
                    assert_eq!(got, want, "step {step}: consumer receive");
                }
            }
            12 => {
                let k = usize::from(s.u8());
                let which = s.u8() % 4;
                if let (Some(c), Some(mc)) = (&sut.consumer, &model.consumer) {
                    let q = mc.queue;
                    // Mostly its own deliveries; with none, any delivery out.
                    let pool: Vec<u64> = if mc.out.is_empty() {
                        model.out()
                    } else {
                        mc.out.iter().copied().collect()
                    };
                    if let Some(&id) = pool.get(k % pool.len().max(1)) {
                        if which == 3 {
                            let ids: Vec<u64> = mc.out.range(..=id).copied().collect();
                            let real = c.ack_multiple(MessageId(id)).map_err(|e| kind(&e));
                            let want = model
                                .settle(&ids, Some(q), Some(true), How::Ack)
                                .map(|()| ids.len());
                            assert_eq!(real, want, "step {step}: ack_multiple up to {id}");
                        } else {
                            let how = how(which);
                            let real = match how {
                                How::Ack => c.ack(MessageId(id)),
                                How::Requeue => c.nack(MessageId(id), true),
                                How::Reject => c.nack(MessageId(id), false),
                            }
                            .map_err(|e| kind(&e));
                            let want = model.settle(&[id], Some(q), Some(true), how);
                            failed(&real);
                            assert_eq!(real, want, "step {step}: consumer {how:?} of {id}");
                        }
                    }
                }
            }
            13 => {
                let mode = s.u8() % 3;
                outcome.reopens += 1;
                match mode {
                    0 => {
                        // Dropping the consumer while the store is open returns its
                        // deliveries (records written); then the store goes.
                        sut.drop_handles();
                        model.release();
                    }
                    1 => {
                        sut.store().close().expect("close");
                        sut.drop_handles();
                    }
                    _ => match &sut.disk {
                        Disk::Sim(disk) => {
                            outcome.crashes += 1;
                            let after = disk.crash(CrashMode::ProcessCrash, u64::from(op));
                            sut.drop_handles();
                            sut.disk = Disk::Sim(after);
                        }
                        Disk::Mem(_) => {
                            sut.store().close().expect("close");
                            sut.drop_handles();
                        }
                    },
                }
                let replayed = model.reopen();
                sut.open();
                check_reopened(&sut, replayed, step);
            }
            14 => {
                if s.u8() & 1 == 0 {
                    sut.store().sync().expect("sync");
                } else {
                    outcome.compactions += 1;
                    let report = sut.store().compact().expect("compact");
                    assert!(report.checkpoints >= 1, "step {step}: {report:?}");
                    outcome.relocated += report.relocated_messages;
                    // A reopen replays only what follows the checkpoint.
                    model.records = 0;
                }
            }
            _ => {
                let close = s.u8() & 1 != 0;
                if let Some(c) = sut.consumer.take() {
                    if close {
                        c.close().expect("close the consumer");
                    }
                    model.release();
                }
            }
        }
        check_stats(&sut, &model, step);
    }
    outcome.dropped = model.queues.iter().map(|q| q.dropped).sum();
    outcome
}
