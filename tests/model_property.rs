//! Model-based property test: random sequences of API operations give the same results on
//! a real `Store` (on `MemVfs`, 64 KiB segments so that the log rolls over, time from a
//! `ManualClock`) as on an in-memory model of the documented delivery semantics. Compared
//! after every operation: ids, payloads, `redelivered`, `delivery_count`, `published_at`,
//! `expires_at`, dead-letter reason and origin, error kinds, consumers' unacked counts,
//! per-queue stats (ready, delayed, bytes, unacked, published, acked, rejected, expired,
//! dead_lettered, dropped), store counters, and the number of records a reopen replays.
//!
//! The queues, in store order: `alpha` (maybe an ack timeout, maybe a delivery limit, no
//! dead-letter queue: over-delivered messages are dropped), `dead` (declared automatically
//! as `beta`'s dead-letter queue), `beta` (ack timeout, delivery limit, dead-letter queue
//! `dead`, maybe a queue TTL), `gamma` (queue TTL, maybe `dead` as dead-letter queue, maybe
//! `max_length` with drop-head or reject-publish overflow, maybe an ack timeout).
//!
//! Operations: publish (single or batch, some with a per-message TTL or a delay), receive
//! through queue handles and through up to three consumers with prefetch limits, ack / nack
//! / `requeue_after` through the store, the owning queue, another queue or a consumer
//! (`WrongQueue`, `WrongConsumer`, `NotDelivered`, `AlreadySettled`, `UnknownMessage`),
//! `ack_multiple` / `nack_multiple`, lease extension, consumer close or drop (returns its
//! deliveries), redrive, redeclaration (`QueueConfigMismatch`, `DeadLetterCycle`), sync,
//! advancing the clock (the only way time moves; sometimes without looking at the stats
//! afterwards, so that the next operation is the one that fires the timers), and reopening
//! (dropping every handle, consumers first, so that they return their deliveries) or
//! closing and reopening (consumers are dropped after `close`, so their deliveries come back
//! through recovery instead).
//!
//! What the model encodes (from `src/queue/mod.rs` and the API docs):
//! - Delivery order: messages delivered before (requeued, lease expired, returned by a
//!   consumer, out at a reopen) first, by id; then never-delivered messages by id (= publish
//!   order). A dead-lettered or redriven message enters its new queue as a fresh,
//!   never-delivered message (count reset), placed by id.
//! - Timers fire lazily: at the start of a publish, receive or `Queue::stats` on that queue,
//!   at `Store::stats` and at open (every queue, in store order), and before a settle or an
//!   extend (the queues of the messages named, settled ones still tracked included).
//!   Redrives and consumer releases fire none. In each queue: due delays make messages
//!   ready; expired leases return deliveries (redelivered, count kept) or dead-letter them
//!   at `max_deliveries`; then expired waiting messages (ready or delayed) are dead-lettered
//!   or dropped, so an expired message is never delivered, also when its lease ran out in
//!   the same pass.
//! - A drop-head queue over `max_length` is trimmed (requeued, then fresh, then delayed
//!   messages pushed out) by a publish making room, and after anything that gave it
//!   messages (a requeue, an expired lease, a released consumer, a redrive, a due delay); a
//!   queue that is over its limit after a reopen stays so until then.
//! - A publish that fails (`QueueFull`, `TooLarge`) changes nothing beyond the timers it
//!   fired.
//! - A reopen brings every delivery that was out back as delivered before (with
//!   `persist_deliveries(false)`, only the count written by the last requeue survives);
//!   delays and TTLs survive; leases and consumers do not. `open` then dead-letters the
//!   waiting messages whose count reached their queue's `max_deliveries`, and fires the due
//!   timers.
//!
//! # Running and replaying
//! - `cargo test --test model_property` runs 200 cases (`PROPTEST_CASES=2000` for more).
//! - On failure proptest shrinks the case, prints the minimal failing input, and appends a
//!   `cc <seed>` line to `tests/proptest-regressions/model_property.txt`. Every seed in that
//!   file is replayed first on each later run, so keep the file to guard the regression.
//!   (A seed stays meaningful only while the generators below are unchanged; a minimal
//!   case worth keeping for good belongs in a named test at the end of this file.)
//! - `PROPTEST_RNG_SEED=<u64>` makes the whole run deterministic (same cases in the same
//!   order), e.g. to reproduce a failure seen on another machine when only the seed was kept.
//! - `PROPTEST_VERBOSE=1` prints every generated case.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use walq::format::{frame_len, SealBody, MAX_ACK_RANGES, PUBLISH_HEADER_LEN, SEGMENT_HEADER_LEN};
use walq::io::MemVfs;
use walq::{
    CompactionOptions, Consumer, ConsumerOptions, DeadLetterReason, Delivery, Error, FsyncPolicy,
    ManualClock, MessageId, Overflow, PublishOptions, Queue, QueueOptions, Store, StoreOptions,
};

const SEGMENT_SIZE: u64 = 64 << 10;
const MAX_MESSAGE: usize = 24 << 10;
const START_MS: u64 = 1_700_000_000_000;
/// The queues in store order: declaring `beta` declares its dead-letter queue `dead` first.
const NAMES: [&str; 4] = ["alpha", "dead", "beta", "gamma"];
const ALPHA: usize = 0;
const DEAD: usize = 1;
const BETA: usize = 2;
const GAMMA: usize = 3;
/// Consumer slots.
const SLOTS: usize = 3;
const DEFAULT_CASES: u32 = 200;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn at_ms(n: u64) -> SystemTime {
    UNIX_EPOCH + ms(n)
}

// ---------------------------------------------------------------------------------------
// Queue options
// ---------------------------------------------------------------------------------------

/// A queue's options; 0 means "not set".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct QSpec {
    ack_ms: u64,
    ttl_ms: u64,
    max_deliveries: u32,
    /// Dead-letter queue `dead`.
    dlq: bool,
    max_length: u64,
    reject: bool,
}

impl QSpec {
    fn options(&self) -> QueueOptions {
        let mut o = QueueOptions::new();
        if self.ack_ms > 0 {
            o = o.ack_timeout(ms(self.ack_ms));
        }
        if self.ttl_ms > 0 {
            o = o.message_ttl(ms(self.ttl_ms));
        }
        if self.max_deliveries > 0 {
            o = o.max_deliveries(self.max_deliveries);
        }
        if self.dlq {
            o = o.dead_letter_queue(NAMES[DEAD]);
        }
        if self.max_length > 0 {
            o = o.max_length(self.max_length);
        }
        if self.reject {
            o = o.overflow(Overflow::RejectPublish);
        }
        o
    }
}

fn opt(s: impl Strategy<Value = u64>) -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), s]
}

fn specs() -> impl Strategy<Value = [QSpec; 4]> {
    let alpha = (opt(100u64..=1000), opt(1u64..=4)).prop_map(|(ack_ms, md)| QSpec {
        ack_ms,
        max_deliveries: md as u32,
        ..QSpec::default()
    });
    let beta =
        (100u64..=1000, 1u32..=3, opt(500u64..=10_000)).prop_map(|(ack_ms, md, ttl_ms)| QSpec {
            ack_ms,
            ttl_ms,
            max_deliveries: md,
            dlq: true,
            ..QSpec::default()
        });
    let gamma = (
        500u64..=10_000,
        any::<bool>(),
        opt(1u64..=4),
        any::<bool>(),
        opt(100u64..=1000),
    )
        .prop_map(|(ttl_ms, dlq, max_length, reject, ack_ms)| QSpec {
            ack_ms,
            ttl_ms,
            dlq,
            max_length,
            reject,
            ..QSpec::default()
        });
    (alpha, beta, gamma).prop_map(|(a, b, g)| [a, QSpec::default(), b, g])
}

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

/// Per-publish options, in milliseconds (0: none).
#[derive(Debug, Clone, Copy, Default)]
struct POpts {
    ttl: u64,
    delay: u64,
}

impl POpts {
    fn options(self) -> PublishOptions {
        let mut o = PublishOptions::new();
        if self.ttl > 0 {
            o = o.ttl(ms(self.ttl));
        }
        if self.delay > 0 {
            o = o.delay(ms(self.delay));
        }
        o
    }
}

/// Which handle a settle goes through.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// `Store::ack` / `Store::nack` (`requeue_after` becomes `nack` with requeue).
    Store,
    /// The handle of the queue the message is in.
    Own,
    /// The handle of queue `i % 4` (may be the wrong one: `WrongQueue`).
    Queue(usize),
}

#[derive(Debug, Clone, Copy)]
enum How {
    Ack,
    Nack {
        requeue: bool,
    },
    /// `requeue_after` with this many milliseconds (0 requeues at once).
    RequeueAfter(u64),
}

#[derive(Debug, Clone, Copy)]
enum Redeclare {
    /// The same options: the existing queue.
    Same,
    /// `declare_queue` without options: the existing queue, whatever its options.
    Plain,
    /// Another ack timeout: `QueueConfigMismatch`.
    Different,
    /// Itself as dead-letter queue: `DeadLetterCycle`.
    Cycle,
}

#[derive(Debug, Clone)]
enum Op {
    Publish {
        queue: usize,
        payload: Payload,
        opts: POpts,
    },
    /// Zero payloads expect `EmptyBatch`.
    PublishBatch {
        queue: usize,
        payloads: Vec<Payload>,
        opts: POpts,
    },
    /// `Queue::try_receive`.
    Receive {
        queue: usize,
    },
    /// Settles the `k % n`-th delivery out (by id); skipped if none.
    Settle {
        k: usize,
        how: How,
        via: Via,
    },
    /// Settles any id ever assigned, whatever its state.
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
    /// Extends the lease of the `k % n`-th delivery out, through its consumer (if
    /// `consumer` and it has one) or through its queue's handle.
    Extend {
        k: usize,
        by: u64,
        consumer: bool,
    },
    /// Opens a consumer in `slot`, first closing (or dropping) the one there.
    Consume {
        slot: usize,
        queue: usize,
        prefetch: Option<u32>,
        close: bool,
    },
    /// Closes (or drops) the consumer in `slot`; it returns its deliveries.
    CloseConsumer {
        slot: usize,
        close: bool,
    },
    ConsumerReceive {
        slot: usize,
    },
    /// Settles, through the consumer in `slot`, one of its own deliveries (`own`) or any
    /// delivery out (`WrongConsumer`, `WrongQueue`).
    ConsumerSettle {
        slot: usize,
        k: usize,
        own: bool,
        how: How,
    },
    /// `ack_multiple` / `nack_multiple` up to the `k`-th of the consumer's deliveries (or
    /// to id `k` if it has none).
    ConsumerMultiple {
        slot: usize,
        k: usize,
        how: How,
    },
    /// `Store::redrive` of queue `target` (4: a queue that does not exist).
    Redrive {
        target: usize,
    },
    Redeclare {
        queue: usize,
        how: Redeclare,
    },
    /// Moves the clock; with `quiet`, the stats are not looked at afterwards.
    Advance {
        by: u64,
        quiet: bool,
    },
    /// Drops every handle (consumers first) without `close`, and opens again.
    Reopen,
    /// `close`, checks that handles refuse work, drops them, then opens again.
    CloseReopen,
    Sync,
    /// `Store::compact`: checkpoint, relocation, segment deletion; nothing visible changes,
    /// and a later reopen replays only the records after the checkpoint.
    Compact,
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        12 => proptest::collection::vec(any::<u8>(), 0..48).prop_map(Payload::Small),
        3 => (8_000usize..=26_000, any::<u8>()).prop_map(|(len, seed)| Payload::Big { len, seed }),
    ]
}

fn popts() -> impl Strategy<Value = POpts> {
    prop_oneof![
        5 => Just(POpts::default()),
        2 => (1u64..=5000).prop_map(|ttl| POpts { ttl, delay: 0 }),
        2 => (1u64..=1500).prop_map(|delay| POpts { ttl: 0, delay }),
        1 => (1u64..=5000, 1u64..=1500).prop_map(|(ttl, delay)| POpts { ttl, delay }),
    ]
}

fn queue() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(ALPHA), 1 => Just(DEAD), 3 => Just(BETA), 3 => Just(GAMMA)]
}

fn via() -> impl Strategy<Value = Via> {
    prop_oneof![
        2 => Just(Via::Store),
        4 => Just(Via::Own),
        1 => (0usize..4).prop_map(Via::Queue),
    ]
}

fn how() -> impl Strategy<Value = How> {
    prop_oneof![
        4 => Just(How::Ack),
        3 => any::<bool>().prop_map(|requeue| How::Nack { requeue }),
        1 => prop_oneof![Just(0u64), 1u64..=1000].prop_map(How::RequeueAfter),
    ]
}

fn advance() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..=200,
        3 => 200u64..=1500,
        1 => 1500u64..=10_000,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (queue(), payload(), popts())
            .prop_map(|(queue, payload, opts)| Op::Publish { queue, payload, opts }),
        2 => (queue(), proptest::collection::vec(payload(), 0..=4), popts())
            .prop_map(|(queue, payloads, opts)| Op::PublishBatch { queue, payloads, opts }),
        5 => queue().prop_map(|queue| Op::Receive { queue }),
        5 => (any::<usize>(), how(), via()).prop_map(|(k, how, via)| Op::Settle { k, how, via }),
        1 => (any::<usize>(), how(), via())
            .prop_map(|(pick, how, via)| Op::SettleAny { pick, how, via }),
        1 => (prop_oneof![0u64..1000, Just(u64::MAX / 2)], how(), via())
            .prop_map(|(beyond, how, via)| Op::AckUnknown { beyond, how, via }),
        1 => (any::<usize>(), 0u64..=1000, any::<bool>())
            .prop_map(|(k, by, consumer)| Op::Extend { k, by, consumer }),
        3 => (
            0..SLOTS,
            queue(),
            prop_oneof![1 => Just(None), 1 => Just(Some(0u32)), 4 => (1u32..=3).prop_map(Some)],
            any::<bool>()
        )
            .prop_map(|(slot, queue, prefetch, close)| Op::Consume { slot, queue, prefetch, close }),
        1 => (0..SLOTS, any::<bool>()).prop_map(|(slot, close)| Op::CloseConsumer { slot, close }),
        8 => (0..SLOTS).prop_map(|slot| Op::ConsumerReceive { slot }),
        5 => (0..SLOTS, any::<usize>(), prop::bool::weighted(0.8), how())
            .prop_map(|(slot, k, own, how)| Op::ConsumerSettle { slot, k, own, how }),
        1 => (0..SLOTS, any::<usize>(), how())
            .prop_map(|(slot, k, how)| Op::ConsumerMultiple { slot, k, how }),
        1 => prop_oneof![3 => Just(DEAD), 1 => 0usize..=4].prop_map(|target| Op::Redrive { target }),
        1 => (0usize..4, prop_oneof![
                Just(Redeclare::Same),
                Just(Redeclare::Plain),
                Just(Redeclare::Different),
                Just(Redeclare::Cycle)
            ])
            .prop_map(|(queue, how)| Op::Redeclare { queue, how }),
        4 => (advance(), prop::bool::weighted(0.3))
            .prop_map(|(by, quiet)| Op::Advance { by, quiet }),
        1 => Just(Op::Reopen),
        1 => Just(Op::CloseReopen),
        1 => Just(Op::Sync),
        1 => Just(Op::Compact),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    specs: [QSpec; 4],
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
        specs(),
        fsync,
        prop::bool::weighted(0.75),
        proptest::collection::vec(op(), 1..=120),
    )
        .prop_map(|(specs, fsync, persist_deliveries, ops)| Case {
            specs,
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
    /// Waiting for its delay, until this time.
    Delayed(u64),
    InFlight,
    Acked,
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Rejected,
    Expired,
    DeliveryLimit,
    Overflow,
}

impl Reason {
    fn public(self) -> DeadLetterReason {
        match self {
            Reason::Rejected => DeadLetterReason::Rejected,
            Reason::Expired => DeadLetterReason::Expired,
            Reason::DeliveryLimit => DeadLetterReason::DeliveryLimit,
            Reason::Overflow => DeadLetterReason::Overflow,
        }
    }
}

#[derive(Debug)]
struct MMsg {
    /// The queue it is in now.
    queue: usize,
    payload: Vec<u8>,
    published_ms: u64,
    state: MState,
    /// Deliveries so far (since it entered its current queue).
    count: u32,
    /// The count written by the last requeue (what survives a reopen without deliver records).
    logged: Option<u32>,
    /// Its expiry, while it is in the queue it was published to.
    expires: Option<u64>,
    /// Where it was dead-lettered from, and why.
    origin: Option<(usize, Reason)>,
    /// While in flight: the consumer slot holding it (`None`: a queue handle).
    holder: Option<usize>,
    lease: Option<u64>,
}

impl MMsg {
    fn waiting(&self) -> bool {
        matches!(self.state, MState::Ready | MState::Delayed(_))
    }
}

#[derive(Debug, Default)]
struct MQueue {
    spec: QSpec,
    /// Never-delivered ready messages, by id.
    fresh: BTreeSet<u64>,
    /// Ready messages that were delivered before, by id.
    again: BTreeSet<u64>,
    /// Delayed messages by (due time, id).
    delayed: BTreeSet<(u64, u64)>,
    published: u64,
    acked: u64,
    rejected: u64,
    expired: u64,
    dead_lettered: u64,
    dropped: u64,
}

impl MQueue {
    fn waiting(&self) -> u64 {
        (self.fresh.len() + self.again.len() + self.delayed.len()) as u64
    }
}

#[derive(Debug)]
struct MConsumer {
    queue: usize,
    /// 0: unlimited.
    prefetch: u32,
    outstanding: BTreeSet<u64>,
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
    WrongConsumer(u64),
    TooLarge(&'static str),
    EmptyBatch,
    QueueFull {
        queue: String,
        limit: &'static str,
    },
    Closed,
    NotFound(String),
    Mismatch(String),
    Cycle(String),
    InvalidOptions,
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
        Error::WrongConsumer { id } => Kind::WrongConsumer(id.0),
        Error::TooLarge { what, .. } => Kind::TooLarge(what),
        Error::EmptyBatch => Kind::EmptyBatch,
        Error::QueueFull { queue, limit } => Kind::QueueFull {
            queue: queue.clone(),
            limit,
        },
        Error::Closed => Kind::Closed,
        Error::QueueNotFound { name } => Kind::NotFound(name.clone()),
        Error::QueueConfigMismatch { queue } => Kind::Mismatch(queue.clone()),
        Error::DeadLetterCycle { queue } => Kind::Cycle(queue.clone()),
        Error::InvalidOptions(_) => Kind::InvalidOptions,
        other => Kind::Other(format!("{other:?}")),
    }
}

/// Which deliveries a settle may touch: `queue` (a handle's queue) and `holder` (`Some(None)`
/// for a queue handle, `Some(Some(slot))` for a consumer); `None` for no restriction.
#[derive(Debug, Clone, Copy)]
struct MVia {
    queue: Option<usize>,
    holder: Option<Option<usize>>,
}

const ANY: MVia = MVia {
    queue: None,
    holder: None,
};

/// What a settle does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Ack,
    Requeue { delay: u64 },
    Reject,
}

impl How {
    /// The action and whether it goes through `requeue_after`.
    fn action(self) -> Action {
        match self {
            How::Ack => Action::Ack,
            How::Nack { requeue: true } => Action::Requeue { delay: 0 },
            How::Nack { requeue: false } => Action::Reject,
            How::RequeueAfter(delay) => Action::Requeue { delay },
        }
    }
}

/// What the model expects from a delivery.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    id: u64,
    queue: String,
    payload: Vec<u8>,
    redelivered: bool,
    delivery_count: u32,
    published_at: SystemTime,
    expires_at: Option<SystemTime>,
    dead_letter: Option<(DeadLetterReason, String)>,
}

fn view(d: &Delivery) -> Expected {
    Expected {
        id: d.id.0,
        queue: d.queue.to_string(),
        payload: d.payload.clone(),
        redelivered: d.redelivered,
        delivery_count: d.delivery_count,
        published_at: d.published_at,
        expires_at: d.expires_at,
        dead_letter: d
            .dead_letter
            .as_ref()
            .map(|dl| (dl.reason, dl.original_queue.to_string())),
    }
}

/// Expected per-queue stats: (ready, delayed, bytes, unacked, published, acked, rejected,
/// expired, dead_lettered, dropped).
type Row = (u64, u64, u64, u64, u64, u64, u64, u64, u64, u64);

#[derive(Debug)]
struct Model {
    now: u64,
    queues: Vec<MQueue>,
    msgs: Vec<MMsg>,
    consumers: Vec<Option<MConsumer>>,
    persist_deliveries: bool,
    /// Records of the store's kinds written so far (what a reopen must replay).
    records: u64,
    acked: u64,
    rejected: u64,
}

impl Model {
    fn new(specs: &[QSpec; 4], persist_deliveries: bool) -> Model {
        Model {
            now: START_MS,
            queues: specs
                .iter()
                .map(|&spec| MQueue {
                    spec,
                    ..MQueue::default()
                })
                .collect(),
            msgs: Vec::new(),
            consumers: (0..SLOTS).map(|_| None).collect(),
            persist_deliveries,
            records: NAMES.len() as u64,
            acked: 0,
            rejected: 0,
        }
    }

    fn next_id(&self) -> u64 {
        self.msgs.len() as u64
    }

    fn msg(&mut self, id: u64) -> &mut MMsg {
        &mut self.msgs[id as usize]
    }

    fn in_flight(&self) -> Vec<u64> {
        (0..self.next_id())
            .filter(|&id| self.msgs[id as usize].state == MState::InFlight)
            .collect()
    }

    /// Makes a message that is neither waiting nor out wait in its queue.
    fn enqueue(&mut self, id: u64, not_before: u64) {
        let now = self.now;
        let m = &mut self.msgs[id as usize];
        let q = &mut self.queues[m.queue];
        if not_before > now {
            m.state = MState::Delayed(not_before);
            q.delayed.insert((not_before, id));
        } else {
            m.state = MState::Ready;
            if m.count > 0 {
                q.again.insert(id);
            } else {
                q.fresh.insert(id);
            }
        }
    }

    /// Takes a waiting message out of its queue's waiting sets.
    fn unwait(&mut self, id: u64) {
        let m = &self.msgs[id as usize];
        let q = &mut self.queues[m.queue];
        match m.state {
            MState::Ready => {
                q.fresh.remove(&id);
                q.again.remove(&id);
            }
            MState::Delayed(at) => {
                q.delayed.remove(&(at, id));
            }
            _ => unreachable!("unwait of a message that is not waiting"),
        }
    }

    /// Forgets a delivery (its holder and lease).
    fn end_delivery(&mut self, id: u64) {
        let m = &mut self.msgs[id as usize];
        if let Some(slot) = m.holder.take() {
            if let Some(c) = self.consumers[slot].as_mut() {
                c.outstanding.remove(&id);
            }
        }
        m.lease = None;
    }

    /// Dead-letters or drops a message that is neither waiting nor out. Returns the queue
    /// that gained a message, if any.
    fn fate(&mut self, id: u64, reason: Reason) -> Option<usize> {
        let from = self.msgs[id as usize].queue;
        let dlq = self.queues[from].spec.dlq.then_some(DEAD);
        let q = &mut self.queues[from];
        match reason {
            Reason::Rejected => q.rejected += 1,
            Reason::Expired => q.expired += 1,
            Reason::DeliveryLimit | Reason::Overflow => {}
        }
        if dlq.is_some() {
            q.dead_lettered += 1;
        } else {
            q.dropped += 1;
        }
        if reason == Reason::Rejected {
            self.rejected += 1;
        }
        self.records += 1;
        let m = &mut self.msgs[id as usize];
        m.count = 0;
        m.logged = None;
        m.expires = None;
        match dlq {
            Some(to) => {
                m.queue = to;
                m.origin = Some((from, reason));
                self.enqueue(id, 0);
            }
            None => {
                m.state = MState::Dropped;
                m.origin = None;
            }
        }
        dlq
    }

    /// A delivery comes back (requeue, expired lease, released by its consumer): requeued
    /// after `not_before`, or dead-lettered at the delivery limit. One record either way.
    /// Returns the queue that gained a message, if any.
    fn settle_back(&mut self, id: u64, not_before: u64) -> Option<usize> {
        let m = &self.msgs[id as usize];
        let q = m.queue;
        let limit = self.queues[q].spec.max_deliveries;
        if limit > 0 && m.count >= limit {
            return self.fate(id, Reason::DeliveryLimit);
        }
        let count = m.count;
        self.msg(id).logged = Some(count);
        self.records += 1;
        self.enqueue(id, not_before);
        Some(q)
    }

    /// Pushes the oldest waiting messages out of a drop-head queue that is over its
    /// `max_length` (requeued first, then fresh, then the delayed one due first).
    fn trim(&mut self, q: usize) -> Vec<usize> {
        let spec = self.queues[q].spec;
        let mut woken = Vec::new();
        if spec.max_length == 0 || spec.reject {
            return woken;
        }
        while self.queues[q].waiting() > spec.max_length {
            let queue = &self.queues[q];
            let Some(victim) = queue
                .again
                .first()
                .or(queue.fresh.first())
                .copied()
                .or(queue.delayed.first().map(|&(_, id)| id))
            else {
                break;
            };
            self.unwait(victim);
            woken.extend(self.fate(victim, Reason::Overflow));
        }
        woken
    }

    /// Ends a change that gave messages to the queues in `woken`: trims each (and, in
    /// turn, the queues that trimming fed).
    fn after_change(&mut self, mut woken: Vec<usize>) {
        let mut touched = Vec::new();
        while let Some(q) = woken.pop() {
            if touched.contains(&q) {
                continue;
            }
            touched.push(q);
            let more = self.trim(q);
            woken.extend(more.into_iter().filter(|m| !touched.contains(m)));
        }
    }

    /// Fires the due timers of queue `q`: delays, then leases, then expiries (so that a
    /// delivery that comes back already expired expires); then trims what gained messages.
    fn fire(&mut self, q: usize) {
        let now = self.now;
        let mut woken = Vec::new();
        let due: Vec<(u64, u64)> = self.queues[q]
            .delayed
            .range(..=(now, u64::MAX))
            .copied()
            .collect();
        for (at, id) in due {
            self.queues[q].delayed.remove(&(at, id));
            self.msg(id).state = MState::Ready;
            self.enqueue(id, 0);
            woken.push(q);
        }
        let mut leases: Vec<(u64, u64)> = self
            .msgs
            .iter()
            .enumerate()
            .filter(|(_, m)| m.queue == q && m.state == MState::InFlight)
            .filter_map(|(id, m)| m.lease.filter(|&at| at <= now).map(|at| (at, id as u64)))
            .collect();
        leases.sort_unstable();
        for (_, id) in leases {
            self.end_delivery(id);
            woken.extend(self.settle_back(id, 0));
        }
        let mut expired: Vec<(u64, u64)> = self
            .msgs
            .iter()
            .enumerate()
            .filter(|(_, m)| m.queue == q && m.waiting())
            .filter_map(|(id, m)| m.expires.filter(|&at| at <= now).map(|at| (at, id as u64)))
            .collect();
        expired.sort_unstable();
        for (_, id) in expired {
            self.unwait(id);
            woken.extend(self.fate(id, Reason::Expired));
        }
        self.after_change(woken);
    }

    fn fire_all(&mut self) {
        for q in 0..self.queues.len() {
            self.fire(q);
        }
    }

    /// Fires the timers of the queues the messages `ids` are in (settled ones still in the
    /// store's table included), lowest queue first.
    fn fire_of(&mut self, ids: &[u64]) {
        let base = self.table_base();
        let queues: BTreeSet<usize> = ids
            .iter()
            .filter(|&&id| id >= base && id < self.next_id())
            .map(|&id| self.msgs[id as usize].queue)
            .collect();
        for q in queues {
            self.fire(q);
        }
    }

    fn publish(&mut self, q: usize, payloads: &[Vec<u8>], opts: POpts) -> Result<Vec<u64>, Kind> {
        if payloads.is_empty() {
            return Err(Kind::EmptyBatch);
        }
        if payloads.iter().any(|p| p.len() > MAX_MESSAGE) {
            return Err(Kind::TooLarge("message"));
        }
        self.fire(q);
        let now = self.now;
        let spec = self.queues[q].spec;
        let mut expires = (opts.ttl > 0).then(|| now + opts.ttl);
        if spec.ttl_ms > 0 {
            let queue_expiry = now + spec.ttl_ms;
            expires = Some(expires.map_or(queue_expiry, |e| e.min(queue_expiry)));
        }
        let not_before = if opts.delay > 0 { now + opts.delay } else { 0 };
        let n = payloads.len() as u64;
        // A batch no segment can hold is refused before anything changes. (Overflow records
        // that do not fit beside the publishes are written as groups of their own.)
        let publishes: usize = payloads
            .iter()
            .map(|p| frame_len(PUBLISH_HEADER_LEN + p.len()))
            .sum::<usize>();
        let capacity = SEGMENT_SIZE as usize - SEGMENT_HEADER_LEN - frame_len(SealBody::LEN);
        if publishes > capacity {
            return Err(Kind::TooLarge("batch"));
        }
        // Overflow: the victims, in the order drop-head takes them.
        let mut victims = Vec::new();
        let waiting = self.queues[q].waiting();
        if spec.max_length > 0 && waiting + n > spec.max_length {
            if spec.reject || n > spec.max_length {
                return Err(Kind::QueueFull {
                    queue: NAMES[q].to_owned(),
                    limit: "max_length",
                });
            }
            let queue = &self.queues[q];
            victims = queue
                .again
                .iter()
                .chain(&queue.fresh)
                .copied()
                .chain(queue.delayed.iter().map(|&(_, id)| id))
                .take((waiting + n - spec.max_length) as usize)
                .collect();
        }
        let mut woken = Vec::new();
        for id in victims {
            self.unwait(id);
            woken.extend(self.fate(id, Reason::Overflow));
        }
        self.after_change(woken);
        let mut ids = Vec::new();
        for payload in payloads {
            let id = self.next_id();
            self.msgs.push(MMsg {
                queue: q,
                payload: payload.clone(),
                published_ms: now,
                state: MState::Ready,
                count: 0,
                logged: None,
                expires,
                origin: None,
                holder: None,
                lease: None,
            });
            self.enqueue(id, not_before);
            ids.push(id);
        }
        self.queues[q].published += n;
        self.records += n;
        self.after_change(vec![q]);
        Ok(ids)
    }

    /// A receive on queue `q` through a queue handle (`holder` `None`) or a consumer slot.
    fn receive(&mut self, q: usize, holder: Option<usize>) -> Option<Expected> {
        self.fire(q);
        if let Some(slot) = holder {
            let c = self.consumers[slot].as_ref()?;
            if c.prefetch > 0 && c.outstanding.len() >= c.prefetch as usize {
                return None;
            }
        }
        let queue = &mut self.queues[q];
        let id = queue
            .again
            .pop_first()
            .or_else(|| queue.fresh.pop_first())?;
        let lease = (queue.spec.ack_ms > 0).then(|| self.now + queue.spec.ack_ms);
        if let Some(slot) = holder {
            if let Some(c) = self.consumers[slot].as_mut() {
                c.outstanding.insert(id);
            }
        }
        if self.persist_deliveries {
            self.records += 1;
        }
        let m = &mut self.msgs[id as usize];
        m.state = MState::InFlight;
        m.count += 1;
        m.holder = holder;
        m.lease = lease;
        Some(Expected {
            id,
            queue: NAMES[q].to_owned(),
            payload: m.payload.clone(),
            redelivered: m.count > 1,
            delivery_count: m.count,
            published_at: at_ms(m.published_ms),
            expires_at: m.expires.map(at_ms),
            dead_letter: m
                .origin
                .map(|(from, reason)| (reason.public(), NAMES[from].to_owned())),
        })
    }

    /// The checks every settle (and extend) makes, in the store's order.
    fn check(&self, id: u64, via: MVia) -> Result<(), Kind> {
        let Some(m) = self.msgs.get(id as usize) else {
            return Err(Kind::Unknown(id));
        };
        match m.state {
            MState::Acked | MState::Dropped => return Err(Kind::AlreadySettled(id)),
            MState::Ready | MState::Delayed(_) => return Err(Kind::NotDelivered(id)),
            MState::InFlight => {}
        }
        if let Some(handle) = via.queue {
            if handle != m.queue {
                return Err(Kind::WrongQueue {
                    id,
                    expected: NAMES[handle].to_owned(),
                    actual: NAMES[m.queue].to_owned(),
                });
            }
        }
        if let Some(holder) = via.holder {
            if holder != m.holder {
                return Err(Kind::WrongConsumer(id));
            }
        }
        Ok(())
    }

    /// Settles `ids` (all or none), after firing the timers of their queues (a lease that
    /// ran out is over even if nothing else touched the queue since).
    fn settle(&mut self, ids: &[u64], via: MVia, action: Action) -> Result<(), Kind> {
        let ids: BTreeSet<u64> = ids.iter().copied().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let list: Vec<u64> = ids.iter().copied().collect();
        self.fire_of(&list);
        for &id in &ids {
            self.check(id, via)?;
        }
        let not_before = match action {
            Action::Requeue { delay } if delay > 0 => self.now + delay,
            _ => 0,
        };
        let mut acked = Vec::new();
        let mut woken = Vec::new();
        for &id in &ids {
            let q = self.msgs[id as usize].queue;
            self.end_delivery(id);
            match action {
                Action::Ack => {
                    let m = self.msg(id);
                    m.state = MState::Acked;
                    m.origin = None;
                    self.queues[q].acked += 1;
                    self.acked += 1;
                    acked.push(id);
                }
                Action::Requeue { .. } => woken.extend(self.settle_back(id, not_before)),
                Action::Reject => woken.extend(self.fate(id, Reason::Rejected)),
            }
            // Capacity freed in `q`.
            woken.push(q);
        }
        // Acks share records: one range per run of consecutive ids.
        let runs = acked
            .iter()
            .enumerate()
            .filter(|&(i, &id)| i == 0 || acked[i - 1] + 1 != id)
            .count();
        self.records += runs.div_ceil(MAX_ACK_RANGES) as u64;
        self.after_change(woken);
        Ok(())
    }

    fn extend(&mut self, id: u64, via: MVia, by: u64) -> Result<(), Kind> {
        self.fire_of(&[id]);
        self.check(id, via)?;
        let until = self.now + by;
        self.msg(id).lease = Some(until);
        Ok(())
    }

    /// A consumer is closed or dropped: its deliveries come back (by id).
    fn release(&mut self, slot: usize) {
        let Some(c) = self.consumers[slot].take() else {
            return;
        };
        let mut woken = vec![c.queue];
        for id in c.outstanding {
            let m = self.msg(id);
            m.holder = None;
            m.lease = None;
            woken.extend(self.settle_back(id, 0));
        }
        self.after_change(woken);
    }

    fn redrive(&mut self, target: usize) -> Result<u64, Kind> {
        if target >= NAMES.len() {
            return Err(Kind::NotFound(redrive_name(target)));
        }
        let ids: Vec<u64> = (0..self.next_id())
            .filter(|&id| {
                let m = &self.msgs[id as usize];
                m.queue == target && m.waiting() && m.origin.is_some()
            })
            .collect();
        let mut woken = Vec::new();
        for &id in &ids {
            self.unwait(id);
            let m = self.msg(id);
            let (from, _) = m.origin.take().unwrap_or((target, Reason::Rejected));
            m.queue = from;
            m.count = 0;
            m.logged = None;
            self.enqueue(id, 0);
            self.records += 1;
            woken.push(from);
        }
        self.after_change(woken);
        Ok(ids.len() as u64)
    }

    /// The store was dropped or closed and opened again (consumers already released or
    /// forgotten). Returns the records the reopen must have replayed. Then, as `open` does:
    /// messages back with `max_deliveries` used up are dead-lettered, and due timers fire.
    fn reopen(&mut self) -> u64 {
        for c in &mut self.consumers {
            *c = None;
        }
        for id in self.in_flight() {
            let persist = self.persist_deliveries;
            let m = self.msg(id);
            m.holder = None;
            m.lease = None;
            if !persist {
                m.count = m.logged.unwrap_or(0);
            }
            self.enqueue(id, 0);
        }
        let replayed = self.records;
        let over: Vec<u64> = (0..self.next_id())
            .filter(|&id| {
                let m = &self.msgs[id as usize];
                let limit = self.queues[m.queue].spec.max_deliveries;
                m.waiting() && limit > 0 && m.count >= limit
            })
            .collect();
        let mut woken = Vec::new();
        for id in over {
            self.unwait(id);
            woken.extend(self.fate(id, Reason::DeliveryLimit));
        }
        self.after_change(woken);
        self.fire_all();
        replayed
    }

    /// The first id in the store's table: the oldest message not settled.
    fn table_base(&self) -> u64 {
        self.msgs
            .iter()
            .position(|m| !matches!(m.state, MState::Acked | MState::Dropped))
            .map_or(self.next_id(), |i| i as u64)
    }

    /// Table entries from the oldest unsettled message to the newest one.
    fn tracked(&self) -> usize {
        (self.next_id() - self.table_base()) as usize
    }

    fn row(&self, q: usize) -> Row {
        let queue = &self.queues[q];
        let bytes = self
            .msgs
            .iter()
            .filter(|m| m.queue == q && m.waiting())
            .map(|m| m.payload.len() as u64)
            .sum();
        let unacked = self
            .msgs
            .iter()
            .filter(|m| m.queue == q && m.state == MState::InFlight)
            .count() as u64;
        (
            (queue.fresh.len() + queue.again.len()) as u64,
            queue.delayed.len() as u64,
            bytes,
            unacked,
            queue.published,
            queue.acked,
            queue.rejected,
            queue.expired,
            queue.dead_lettered,
            queue.dropped,
        )
    }
}

fn redrive_name(target: usize) -> String {
    NAMES
        .get(target)
        .map_or_else(|| "nowhere".to_owned(), |n| (*n).to_owned())
}

// ---------------------------------------------------------------------------------------
// The system under test
// ---------------------------------------------------------------------------------------

struct Sut {
    vfs: MemVfs,
    dir: PathBuf,
    opts: StoreOptions,
    clock: ManualClock,
    store: Option<Store>,
    queues: Vec<Queue>,
    consumers: Vec<Option<Consumer>>,
}

fn open(vfs: &MemVfs, dir: &Path, opts: &StoreOptions) -> Store {
    Store::open_with_vfs(Arc::new(vfs.clone()), dir, opts.clone()).expect("open the store")
}

impl Sut {
    fn new(case: &Case) -> Result<Sut, TestCaseError> {
        let vfs = MemVfs::new();
        let dir = PathBuf::from("/model/store");
        let clock = ManualClock::new(START_MS);
        let opts = StoreOptions::new()
            .segment_size(SEGMENT_SIZE)
            .max_message_size(MAX_MESSAGE as u64)
            .fsync(case.fsync)
            .persist_deliveries(case.persist_deliveries)
            .compaction(CompactionOptions::new().background(None))
            .clock(Arc::new(clock.clone()));
        let store = open(&vfs, &dir, &opts);
        for q in [ALPHA, BETA, GAMMA] {
            store
                .declare_queue_with(NAMES[q], case.specs[q].options())
                .map_err(|e| TestCaseError::fail(format!("declare {}: {e}", NAMES[q])))?;
        }
        let mut sut = Sut {
            vfs,
            dir,
            opts,
            clock,
            store: Some(store),
            queues: Vec::new(),
            consumers: (0..SLOTS).map(|_| None).collect(),
        };
        sut.handles()?;
        Ok(sut)
    }

    /// Queue handles in store order; the names must be the expected ones.
    fn handles(&mut self) -> Result<(), TestCaseError> {
        let store = self.store();
        let names: Vec<String> = store.queue_names().iter().map(|n| n.to_string()).collect();
        check(names == NAMES, || format!("queue names {names:?}"))?;
        self.queues = NAMES
            .iter()
            .map(|n| self.store().queue(n).expect("queue"))
            .collect();
        Ok(())
    }

    /// Drops every handle, consumers first (in slot order), and opens the store again.
    fn reopen(&mut self) -> Result<(), TestCaseError> {
        for slot in &mut self.consumers {
            *slot = None;
        }
        self.queues.clear();
        self.store = None;
        self.store = Some(open(&self.vfs, &self.dir, &self.opts));
        self.handles()
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

fn fail(step: usize, what: &str, err: Error) -> TestCaseError {
    TestCaseError::fail(format!("step {step}: {what}: {err}"))
}

/// Settles through a queue handle (`Some(q)`) or the store (`None`).
fn settle_real(sut: &Sut, id: u64, handle: Option<usize>, how: How) -> Result<(), Kind> {
    let id = MessageId(id);
    let result = match (handle, how) {
        (None, How::Ack) => sut.store().ack(id),
        (None, How::Nack { requeue }) => sut.store().nack(id, requeue),
        (None, How::RequeueAfter(_)) => sut.store().nack(id, true),
        (Some(q), How::Ack) => sut.queues[q].ack(id),
        (Some(q), How::Nack { requeue }) => sut.queues[q].nack(id, requeue),
        (Some(q), How::RequeueAfter(d)) => sut.queues[q].requeue_after(id, ms(d)),
    };
    result.map_err(|e| kind(&e))
}

/// The model's view of a settle through a queue handle or the store.
fn settle_model(model: &mut Model, id: u64, handle: Option<usize>, how: How) -> Result<(), Kind> {
    match handle {
        None => {
            let action = match how {
                How::RequeueAfter(_) => Action::Requeue { delay: 0 },
                how => how.action(),
            };
            model.settle(&[id], ANY, action)
        }
        Some(q) => model.settle(
            &[id],
            MVia {
                queue: Some(q),
                holder: Some(None),
            },
            how.action(),
        ),
    }
}

fn consumer_via(model: &Model, slot: usize) -> MVia {
    MVia {
        queue: model.consumers[slot].as_ref().map(|c| c.queue),
        holder: Some(Some(slot)),
    }
}

fn resolve_via(via: Via, owner: Option<usize>) -> Option<usize> {
    match via {
        Via::Store => None,
        Via::Own => Some(owner.unwrap_or(ALPHA)),
        Via::Queue(i) => Some(i % NAMES.len()),
    }
}

fn check_delivery(
    step: usize,
    op: &Op,
    got: Option<Delivery>,
    want: Option<Expected>,
) -> Result<(), TestCaseError> {
    same(step, op, "delivery", got.as_ref().map(view), want)
}

fn check_stats(step: usize, op: &Op, sut: &Sut, model: &mut Model) -> Result<(), TestCaseError> {
    let stats = sut.store().stats();
    model.fire_all();
    let ready: u64 = (0..NAMES.len()).map(|q| model.row(q).0).sum();
    let unacked: u64 = (0..NAMES.len()).map(|q| model.row(q).3).sum();
    let tracked = model.tracked();
    same(step, op, "queue count", stats.queues.len(), NAMES.len())?;
    for (q, real) in stats.queues.iter().enumerate() {
        let got: Row = (
            real.ready,
            real.delayed,
            real.bytes,
            real.unacked,
            real.published,
            real.acked,
            real.rejected,
            real.expired,
            real.dead_lettered,
            real.dropped,
        );
        same(
            step,
            op,
            &format!(
                "{} (ready, delayed, bytes, unacked, published, acked, rejected, expired, \
                 dead_lettered, dropped)",
                NAMES[q]
            ),
            got,
            model.row(q),
        )?;
        // Nothing is due any more: the queue's own stats fire nothing new.
        same(
            step,
            op,
            "Queue::stats vs Store::stats",
            &sut.queues[q].stats(),
            real,
        )?;
    }
    for (slot, (real, m)) in sut.consumers.iter().zip(&model.consumers).enumerate() {
        same(
            step,
            op,
            &format!("consumer {slot} unacked"),
            real.as_ref().map(Consumer::unacked),
            m.as_ref().map(|c| c.outstanding.len()),
        )?;
    }
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
            tracked,
        ),
    )?;
    check(stats.segments >= 1, || format!("step {step}: no segment"))
}

fn check_recovery(step: usize, op: &Op, sut: &Sut, replayed: u64) -> Result<(), TestCaseError> {
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
    same(step, op, "records replayed", report.records, replayed)?;
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

/// What every handle must say once the store is closed.
fn check_closed(step: usize, op: &Op, sut: &Sut, model: &Model) -> Result<(), TestCaseError> {
    same(step, op, "second close", sut.store().close().is_ok(), true)?;
    let q = &sut.queues[ALPHA];
    let closed = Err(Kind::Closed);
    same(
        step,
        op,
        "publish after close",
        q.publish(b"late").map(|_| ()).map_err(|e| kind(&e)),
        closed.clone(),
    )?;
    same(
        step,
        op,
        "receive after close",
        q.try_receive().map(|_| ()).map_err(|e| kind(&e)),
        closed.clone(),
    )?;
    same(
        step,
        op,
        "redrive after close",
        sut.store()
            .redrive(NAMES[DEAD])
            .map(|_| ())
            .map_err(|e| kind(&e)),
        closed.clone(),
    )?;
    if let Some(c) = sut.consumers.iter().flatten().next() {
        same(
            step,
            op,
            "consumer receive after close",
            c.try_receive().map(|_| ()).map_err(|e| kind(&e)),
            closed.clone(),
        )?;
    }
    if let Some(&id) = model.in_flight().first() {
        same(
            step,
            op,
            "ack after close",
            sut.store().ack(MessageId(id)).map_err(|e| kind(&e)),
            closed,
        )?;
    }
    Ok(())
}

/// Runs one case; returns how many segments the store ended with.
fn run_case(case: &Case) -> Result<usize, TestCaseError> {
    let mut sut = Sut::new(case)?;
    let mut model = Model::new(&case.specs, case.persist_deliveries);
    let mut max_segments = 1;
    for (step, op) in case.ops.iter().enumerate() {
        let mut look = true;
        match op {
            Op::Publish {
                queue,
                payload,
                opts,
            } => {
                let bytes = payload.bytes();
                let real = sut.queues[*queue]
                    .publish_with(&bytes, &opts.options())
                    .map(|id| vec![id.0])
                    .map_err(|e| kind(&e));
                let want = model.publish(*queue, std::slice::from_ref(&bytes), *opts);
                same(step, op, "publish", real, want)?;
            }
            Op::PublishBatch {
                queue,
                payloads,
                opts,
            } => {
                let bytes: Vec<Vec<u8>> = payloads.iter().map(Payload::bytes).collect();
                let real = sut.queues[*queue]
                    .publish_batch_with(&bytes, &opts.options())
                    .map(|ids| ids.iter().map(|id| id.0).collect::<Vec<_>>())
                    .map_err(|e| kind(&e));
                let want = model.publish(*queue, &bytes, *opts);
                same(step, op, "publish_batch", real, want)?;
            }
            Op::Receive { queue } => {
                let got = sut.queues[*queue]
                    .try_receive()
                    .map_err(|e| fail(step, "receive", e))?;
                let want = model.receive(*queue, None);
                check_delivery(step, op, got, want)?;
            }
            Op::Settle { k, how, via } => {
                let out = model.in_flight();
                if out.is_empty() {
                    continue;
                }
                let id = out[k % out.len()];
                let handle = resolve_via(*via, Some(model.msgs[id as usize].queue));
                let real = settle_real(&sut, id, handle, *how);
                let want = settle_model(&mut model, id, handle, *how);
                same(step, op, "settle", real, want)?;
            }
            Op::SettleAny { pick, how, via } => {
                if model.msgs.is_empty() {
                    continue;
                }
                let id = (*pick % model.msgs.len()) as u64;
                let handle = resolve_via(*via, Some(model.msgs[id as usize].queue));
                let real = settle_real(&sut, id, handle, *how);
                let want = settle_model(&mut model, id, handle, *how);
                same(step, op, "settle any", real, want)?;
            }
            Op::AckUnknown { beyond, how, via } => {
                let id = model.next_id() + beyond;
                let handle = resolve_via(*via, None);
                let real = settle_real(&sut, id, handle, *how);
                same(step, op, "settle unknown", real, Err(Kind::Unknown(id)))?;
            }
            Op::Extend { k, by, consumer } => {
                let out = model.in_flight();
                if out.is_empty() {
                    continue;
                }
                let id = out[k % out.len()];
                let m = &model.msgs[id as usize];
                let (real, via) = match m.holder {
                    Some(slot) if *consumer => {
                        let c = sut.consumers[slot].as_ref().expect("holder is open");
                        (c.extend(MessageId(id), ms(*by)), consumer_via(&model, slot))
                    }
                    _ => (
                        sut.queues[m.queue].extend(MessageId(id), ms(*by)),
                        MVia {
                            queue: Some(m.queue),
                            holder: Some(None),
                        },
                    ),
                };
                let want = model.extend(id, via, *by);
                same(step, op, "extend", real.map_err(|e| kind(&e)), want)?;
            }
            Op::Consume {
                slot,
                queue,
                prefetch,
                close,
            } => {
                if let Some(old) = sut.consumers[*slot].take() {
                    if *close {
                        old.close().map_err(|e| fail(step, "close consumer", e))?;
                    } else {
                        drop(old);
                    }
                    model.release(*slot);
                }
                let mut options = ConsumerOptions::new();
                if let Some(p) = prefetch {
                    options = options.prefetch(*p);
                }
                let want = if *prefetch == Some(0) {
                    Err(Kind::InvalidOptions)
                } else {
                    Ok(())
                };
                let real = sut.queues[*queue].consumer(options).map(|c| {
                    sut.consumers[*slot] = Some(c);
                });
                if real.is_ok() {
                    model.consumers[*slot] = Some(MConsumer {
                        queue: *queue,
                        prefetch: prefetch.unwrap_or(0),
                        outstanding: BTreeSet::new(),
                    });
                }
                same(step, op, "consumer", real.map_err(|e| kind(&e)), want)?;
            }
            Op::CloseConsumer { slot, close } => {
                let Some(old) = sut.consumers[*slot].take() else {
                    continue;
                };
                if *close {
                    old.close().map_err(|e| fail(step, "close consumer", e))?;
                } else {
                    drop(old);
                }
                model.release(*slot);
            }
            Op::ConsumerReceive { slot } => {
                let (Some(c), Some(mc)) = (&sut.consumers[*slot], &model.consumers[*slot]) else {
                    continue;
                };
                let q = mc.queue;
                let got = c
                    .try_receive()
                    .map_err(|e| fail(step, "consumer receive", e))?;
                let want = model.receive(q, Some(*slot));
                check_delivery(step, op, got, want)?;
            }
            Op::ConsumerSettle { slot, k, own, how } => {
                let (Some(c), Some(mc)) = (&sut.consumers[*slot], &model.consumers[*slot]) else {
                    continue;
                };
                let pool: Vec<u64> = if *own && !mc.outstanding.is_empty() {
                    mc.outstanding.iter().copied().collect()
                } else {
                    model.in_flight()
                };
                if pool.is_empty() {
                    continue;
                }
                let id = pool[k % pool.len()];
                let real = match how {
                    How::Ack => c.ack(MessageId(id)),
                    How::Nack { requeue } => c.nack(MessageId(id), *requeue),
                    How::RequeueAfter(d) => c.requeue_after(MessageId(id), ms(*d)),
                };
                let via = consumer_via(&model, *slot);
                let want = model.settle(&[id], via, how.action());
                same(
                    step,
                    op,
                    "consumer settle",
                    real.map_err(|e| kind(&e)),
                    want,
                )?;
            }
            Op::ConsumerMultiple { slot, k, how } => {
                let (Some(c), Some(mc)) = (&sut.consumers[*slot], &model.consumers[*slot]) else {
                    continue;
                };
                let up_to = if mc.outstanding.is_empty() {
                    (*k % 64) as u64
                } else {
                    let mine: Vec<u64> = mc.outstanding.iter().copied().collect();
                    mine[k % mine.len()]
                };
                let ids: Vec<u64> = mc.outstanding.range(..=up_to).copied().collect();
                let (real, action) = match how {
                    How::Ack => (c.ack_multiple(MessageId(up_to)), Action::Ack),
                    How::Nack { requeue: false } => {
                        (c.nack_multiple(MessageId(up_to), false), Action::Reject)
                    }
                    How::Nack { requeue: true } | How::RequeueAfter(_) => (
                        c.nack_multiple(MessageId(up_to), true),
                        Action::Requeue { delay: 0 },
                    ),
                };
                let via = consumer_via(&model, *slot);
                let want = model.settle(&ids, via, action).map(|()| ids.len());
                same(
                    step,
                    op,
                    "settle multiple",
                    real.map_err(|e| kind(&e)),
                    want,
                )?;
            }
            Op::Redrive { target } => {
                let real = sut
                    .store()
                    .redrive(&redrive_name(*target))
                    .map_err(|e| kind(&e));
                let want = model.redrive(*target);
                same(step, op, "redrive", real, want)?;
            }
            Op::Redeclare { queue, how } => {
                let spec = case.specs[*queue];
                let name = NAMES[*queue];
                let (real, want) = match how {
                    Redeclare::Same => {
                        (sut.store().declare_queue_with(name, spec.options()), Ok(()))
                    }
                    Redeclare::Plain => (sut.store().declare_queue(name), Ok(())),
                    Redeclare::Different => {
                        let other = QSpec {
                            ack_ms: spec.ack_ms + 1,
                            ..spec
                        };
                        (
                            sut.store().declare_queue_with(name, other.options()),
                            Err(Kind::Mismatch(name.to_owned())),
                        )
                    }
                    Redeclare::Cycle => (
                        sut.store()
                            .declare_queue_with(name, spec.options().dead_letter_queue(name)),
                        Err(Kind::Cycle(name.to_owned())),
                    ),
                };
                let real = real.map(|q| q.name().to_owned());
                let want = want.map(|()| name.to_owned());
                same(step, op, "redeclare", real.map_err(|e| kind(&e)), want)?;
            }
            Op::Advance { by, quiet } => {
                sut.clock.advance(ms(*by));
                model.now += by;
                look = !quiet;
            }
            Op::Reopen => {
                sut.reopen()?;
                for slot in 0..SLOTS {
                    model.release(slot);
                }
                let replayed = model.reopen();
                check_recovery(step, op, &sut, replayed)?;
            }
            Op::CloseReopen => {
                sut.store().close().map_err(|e| fail(step, "close", e))?;
                check_closed(step, op, &sut, &model)?;
                // Consumers dropped after close return nothing: recovery brings their
                // deliveries back.
                sut.reopen()?;
                let replayed = model.reopen();
                check_recovery(step, op, &sut, replayed)?;
            }
            Op::Sync => {
                sut.store().sync().map_err(|e| fail(step, "sync", e))?;
            }
            Op::Compact => {
                sut.store()
                    .compact()
                    .map_err(|e| fail(step, "compact", e))?;
                // Everything written so far is in the checkpoint.
                model.records = 0;
            }
        }
        if look {
            check_stats(step, op, &sut, &mut model)?;
            max_segments = max_segments.max(sut.store().stats().segments);
        }
    }

    // Finally: a day later every delay and TTL has run out. Reopen, then drain every queue
    // (the dead-letter queue last, since draining may dead-letter into it), acking all.
    let end = Op::Reopen;
    let step = case.ops.len();
    let day = 86_400_000;
    sut.clock.advance(ms(day));
    model.now += day;
    sut.reopen()?;
    for slot in 0..SLOTS {
        model.release(slot);
    }
    let replayed = model.reopen();
    check_recovery(step, &end, &sut, replayed)?;
    check_stats(step, &end, &sut, &mut model)?;
    for q in [ALPHA, BETA, GAMMA, DEAD] {
        loop {
            let got = sut.queues[q]
                .try_receive()
                .map_err(|e| fail(step, "drain receive", e))?;
            let want = model.receive(q, None);
            let id = got.as_ref().map(|d| d.id.0);
            check_delivery(step, &end, got, want)?;
            let Some(id) = id else { break };
            let real = settle_real(&sut, id, None, How::Ack);
            let want = settle_model(&mut model, id, None, How::Ack);
            same(step, &end, "drain ack", real, want)?;
        }
    }
    check_stats(step, &end, &sut, &mut model)?;
    let stats = sut.store().stats();
    let delayed: u64 = stats.queues.iter().map(|q| q.delayed).sum();
    same(
        step,
        &end,
        "drained (ready, delayed)",
        (stats.ready, delayed),
        (0, 0),
    )?;
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

// ---------------------------------------------------------------------------------------
// Minimal cases kept for good (found by the generator above, shrunk, and written out so
// that they survive changes to the generators)
// ---------------------------------------------------------------------------------------

/// `alpha` and `dead` plain, `beta` with only its dead-letter queue, `gamma` as given.
fn with_gamma(gamma: QSpec) -> [QSpec; 4] {
    let beta = QSpec {
        dlq: true,
        ..QSpec::default()
    };
    [QSpec::default(), QSpec::default(), beta, gamma]
}

fn kept_case(specs: [QSpec; 4], ops: Vec<Op>) -> Case {
    Case {
        specs,
        fsync: FsyncPolicy::Never,
        persist_deliveries: true,
        ops,
    }
}

fn run_kept(case: &Case) {
    if let Err(err) = run_case(case) {
        panic!("{err}");
    }
}

/// A delivery whose lease runs out after its message's TTL comes back expired: it must be
/// dead-lettered (here dropped), not delivered again, also by the receive that fires the lease.
#[test]
fn kept_an_expired_message_returned_by_its_lease_is_not_delivered() {
    let gamma = QSpec {
        ack_ms: 100,
        ttl_ms: 150,
        ..QSpec::default()
    };
    let specs = with_gamma(gamma);
    let publish = Op::Publish {
        queue: GAMMA,
        payload: Payload::Small(b"x".to_vec()),
        opts: POpts::default(),
    };
    let receive = Op::Receive { queue: GAMMA };
    let quiet = Op::Advance {
        by: 200,
        quiet: true,
    };
    run_kept(&kept_case(
        specs,
        vec![publish.clone(), receive.clone(), quiet.clone(), receive],
    ));
    let loud = Op::Advance {
        by: 200,
        quiet: false,
    };
    run_kept(&kept_case(
        specs,
        vec![publish, Op::Receive { queue: GAMMA }, loud],
    ));
}

/// A drop-head publish that fails with `TooLarge` (its record group does not fit in a
/// segment) must change nothing: the message it would have pushed out stays, live and after
/// a reopen alike.
#[test]
fn kept_a_publish_refused_as_too_large_pushes_nothing_out() {
    let gamma = QSpec {
        ttl_ms: 10_000,
        max_length: 3,
        ..QSpec::default()
    };
    let specs = with_gamma(gamma);
    let big = Payload::Big {
        len: 24_000,
        seed: 7,
    };
    run_kept(&kept_case(
        specs,
        vec![
            Op::Publish {
                queue: GAMMA,
                payload: Payload::Small(b"old".to_vec()),
                opts: POpts::default(),
            },
            Op::PublishBatch {
                queue: GAMMA,
                payloads: vec![big.clone(), big.clone(), big],
                opts: POpts::default(),
            },
            Op::Reopen,
        ],
    ));
}
