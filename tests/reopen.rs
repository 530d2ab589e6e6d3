//! Proves that a store reopened after a clean close or after a drop without close, under every
//! fsync policy, serves exactly the state it had: un-acked messages with identical payloads,
//! no acked or rejected ones, delivery counts and order as documented, and fresh ids.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use walq::io::MemVfs;
use walq::{Delivery, FsyncPolicy, MessageId, Queue, Store, StoreOptions, StoreStats};

enum Backend {
    Mem(MemVfs),
    Disk(tempfile::TempDir),
}

impl Backend {
    fn mem() -> Backend {
        Backend::Mem(MemVfs::new())
    }

    fn disk() -> Backend {
        Backend::Disk(tempfile::tempdir().expect("create a temporary directory"))
    }

    fn dir(&self) -> PathBuf {
        match self {
            Backend::Mem(_) => PathBuf::from("/stores/reopen"),
            Backend::Disk(tmp) => tmp.path().join("store"),
        }
    }

    fn open(&self, options: StoreOptions) -> Store {
        let store = match self {
            Backend::Mem(vfs) => Store::open_with_vfs(Arc::new(vfs.clone()), &self.dir(), options),
            Backend::Disk(_) => Store::open(self.dir(), options),
        };
        store.expect("open the store")
    }
}

fn batch() -> FsyncPolicy {
    FsyncPolicy::Batch {
        max_messages: 16,
        max_delay: Duration::from_millis(2),
    }
}

fn interval() -> FsyncPolicy {
    FsyncPolicy::Interval(Duration::from_millis(2))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    InFlight,
    Acked,
    Rejected,
}

/// What the store should know about one message.
#[derive(Debug, Clone)]
struct Msg {
    queue: usize,
    payload: Vec<u8>,
    state: State,
    /// Deliveries so far, as the live store counts them.
    count: u32,
    /// Deliveries the log records (what a reopen will know).
    persisted: u32,
    published_at: Option<SystemTime>,
}

/// A store plus a model of what it must contain; every operation is checked against the
/// model, and so is everything a reopen brings back.
struct Harness<'a> {
    backend: &'a Backend,
    options: StoreOptions,
    persist_deliveries: bool,
    names: Vec<&'static str>,
    store: Option<Store>,
    queues: Vec<Queue>,
    msgs: BTreeMap<u64, Msg>,
    /// Per queue: ready messages delivered before, and ready never-delivered ones.
    ready_again: Vec<BTreeSet<u64>>,
    ready_fresh: Vec<BTreeSet<u64>>,
    next_id: u64,
}

impl<'a> Harness<'a> {
    fn new(
        backend: &'a Backend,
        options: StoreOptions,
        persist: bool,
        names: &[&'static str],
    ) -> Self {
        let options = options.persist_deliveries(persist);
        let store = backend.open(options.clone());
        let queues = names
            .iter()
            .map(|n| store.declare_queue(n).unwrap())
            .collect();
        Harness {
            backend,
            options,
            persist_deliveries: persist,
            names: names.to_vec(),
            store: Some(store),
            queues,
            msgs: BTreeMap::new(),
            ready_again: vec![BTreeSet::new(); names.len()],
            ready_fresh: vec![BTreeSet::new(); names.len()],
            next_id: 0,
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("the store is open")
    }

    fn publish(&mut self, queue: usize, payload: Vec<u8>) -> u64 {
        let id = self.queues[queue].publish(&payload).unwrap();
        assert_eq!(
            id,
            MessageId(self.next_id),
            "ids are dense and never reused"
        );
        self.add(queue, payload);
        id.get()
    }

    fn publish_batch(&mut self, queue: usize, payloads: Vec<Vec<u8>>) {
        let ids = self.queues[queue].publish_batch(&payloads).unwrap();
        let want: Vec<MessageId> = (self.next_id..self.next_id + payloads.len() as u64)
            .map(MessageId)
            .collect();
        assert_eq!(ids, want);
        for payload in payloads {
            self.add(queue, payload);
        }
    }

    fn add(&mut self, queue: usize, payload: Vec<u8>) {
        self.msgs.insert(
            self.next_id,
            Msg {
                queue,
                payload,
                state: State::Ready,
                count: 0,
                persisted: 0,
                published_at: None,
            },
        );
        self.ready_fresh[queue].insert(self.next_id);
        self.next_id += 1;
    }

    /// The id the model says `queue` serves next: delivered-before messages first, oldest id
    /// first, then never-delivered ones in publish (= id) order.
    fn expected_next(&self, queue: usize) -> Option<u64> {
        let again = self.ready_again[queue].first();
        again.or_else(|| self.ready_fresh[queue].first()).copied()
    }

    /// Marks a message ready again (requeued, or back after a reopen).
    fn make_ready(&mut self, id: u64) {
        let msg = self.msgs.get_mut(&id).unwrap();
        msg.state = State::Ready;
        if msg.count > 0 {
            self.ready_again[msg.queue].insert(id);
        } else {
            self.ready_fresh[msg.queue].insert(id);
        }
    }

    fn receive(&mut self, queue: usize) -> Option<u64> {
        self.receive_delivery(queue).map(|d| d.id.get())
    }

    /// Receives from `queue` and checks the delivery against the model.
    fn receive_delivery(&mut self, queue: usize) -> Option<Delivery> {
        let expected = self.expected_next(queue);
        let got = self.queues[queue].try_receive().unwrap();
        let Some(d) = got else {
            assert_eq!(expected, None, "queue {queue} is empty but should not be");
            return None;
        };
        assert_eq!(
            Some(d.id.get()),
            expected,
            "delivery order of queue {queue}"
        );
        self.ready_again[queue].remove(&d.id.get());
        self.ready_fresh[queue].remove(&d.id.get());
        let persist = self.persist_deliveries;
        let msg = self.msgs.get_mut(&d.id.get()).expect("a published message");
        assert_eq!(d.payload, msg.payload, "payload of message {}", d.id);
        assert_eq!(&*d.queue, self.names[queue]);
        msg.count += 1;
        if persist {
            msg.persisted = msg.count;
        }
        assert_eq!(
            d.delivery_count, msg.count,
            "delivery count of message {}",
            d.id
        );
        assert_eq!(
            d.redelivered,
            msg.count > 1,
            "redelivered flag of message {}",
            d.id
        );
        match msg.published_at {
            Some(at) => assert_eq!(d.published_at, at, "publish time of message {}", d.id),
            None => msg.published_at = Some(d.published_at),
        }
        msg.state = State::InFlight;
        Some(d)
    }

    fn ack(&mut self, id: u64) {
        let msg = self.msgs.get_mut(&id).unwrap();
        self.queues[msg.queue].ack(MessageId(id)).unwrap();
        msg.state = State::Acked;
    }

    fn nack(&mut self, id: u64, requeue: bool) {
        let msg = self.msgs.get_mut(&id).unwrap();
        self.queues[msg.queue].nack(MessageId(id), requeue).unwrap();
        if requeue {
            // The rollback record carries the delivery count.
            msg.persisted = msg.count;
            self.make_ready(id);
        } else {
            msg.state = State::Rejected;
        }
    }

    fn count(&self, queue: Option<usize>, state: State) -> u64 {
        self.msgs
            .values()
            .filter(|m| m.state == state && queue.is_none_or(|q| q == m.queue))
            .count() as u64
    }

    #[track_caller]
    fn check_stats(&self) -> StoreStats {
        let s = self.store().stats();
        assert_eq!(
            (s.ready, s.unacked, s.next_message_id, s.acked, s.rejected),
            (
                self.count(None, State::Ready),
                self.count(None, State::InFlight),
                self.next_id,
                self.count(None, State::Acked),
                self.count(None, State::Rejected),
            ),
            "(ready, unacked, next_message_id, acked, rejected)"
        );
        for (i, q) in s.queues.iter().enumerate() {
            assert_eq!(&*q.name, self.names[i]);
            let published = self.msgs.values().filter(|m| m.queue == i).count() as u64;
            assert_eq!(
                (q.ready, q.unacked, q.published, q.acked, q.rejected),
                (
                    self.count(Some(i), State::Ready),
                    self.count(Some(i), State::InFlight),
                    published,
                    self.count(Some(i), State::Acked),
                    self.count(Some(i), State::Rejected),
                ),
                "counters of queue {}",
                self.names[i]
            );
        }
        s
    }

    /// Closes (if `clean`) or just drops the store, and opens it again.
    fn reopen(&mut self, clean: bool) {
        let store = self.store.take().expect("the store is open");
        if clean {
            store.close().unwrap();
        }
        self.queues.clear();
        drop(store);
        let store = self.backend.open(self.options.clone());
        let report = store.recovery_report();
        assert_eq!(report.truncated, None, "nothing was torn: {report:?}");
        let names: Vec<String> = store.queue_names().iter().map(|n| n.to_string()).collect();
        assert_eq!(names, self.names, "queues survive in declaration order");
        self.queues = self
            .names
            .iter()
            .map(|n| store.queue(n).expect("a declared queue"))
            .collect();
        self.store = Some(store);
        let in_flight: Vec<u64> = self
            .msgs
            .iter()
            .filter(|(_, m)| m.state == State::InFlight)
            .map(|(&id, _)| id)
            .collect();
        for id in in_flight {
            let msg = self.msgs.get_mut(&id).unwrap();
            msg.count = msg.persisted;
            self.make_ready(id);
        }
    }

    /// Receives everything and acks it, checking order, payloads and counts.
    fn drain(&mut self) {
        for q in 0..self.queues.len() {
            while let Some(id) = self.receive(q) {
                self.ack(id);
            }
        }
        let s = self.check_stats();
        assert_eq!((s.ready, s.unacked), (0, 0));
    }
}

fn payload(i: u64) -> Vec<u8> {
    let len = (i * 37 % 300) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

/// Builds a mixed state: settled, rejected, requeued (with several deliveries), in flight
/// and never delivered messages in two queues.
fn build_mixed_state(h: &mut Harness<'_>) {
    for i in 0..24 {
        h.publish((i % 2) as usize, payload(i));
    }
    h.publish(0, Vec::new());
    h.publish_batch(1, (100..110).map(payload).collect());
    h.check_stats();

    // Queue 0: ack, reject, leave in flight, requeue once, requeue twice.
    let a = h.receive(0).unwrap();
    h.ack(a);
    let r = h.receive(0).unwrap();
    h.nack(r, false);
    let _in_flight = h.receive(0).unwrap();
    let once = h.receive(0).unwrap();
    h.nack(once, true);
    let twice = h.receive(0).unwrap();
    assert_eq!(
        twice, once,
        "a requeued message is served before never-delivered ones"
    );
    h.nack(twice, true);
    let third = h.receive(0).unwrap();
    assert_eq!(third, once);
    h.nack(third, true);
    // Delivered a fourth time and left in flight.
    let fourth = h.receive(0).unwrap();
    assert_eq!(fourth, once);

    // Queue 1: ack, then a requeued message that is out again, and one in flight.
    let b = h.receive(1).unwrap();
    h.ack(b);
    let c = h.receive(1).unwrap();
    h.nack(c, true);
    let c_again = h.receive(1).unwrap();
    assert_eq!(c_again, c);
    let _d = h.receive(1).unwrap();
    h.check_stats();
}

fn reopen_scenario(backend: &Backend, policy: FsyncPolicy, clean: bool) {
    let options = StoreOptions::new().segment_size(1 << 20).fsync(policy);
    let mut h = Harness::new(backend, options, true, &["alpha", "beta"]);
    build_mixed_state(&mut h);
    let before = h.check_stats();

    h.reopen(clean);
    let after = h.check_stats();
    assert_eq!(after.next_message_id, before.next_message_id);
    assert_eq!(
        after.unacked, 0,
        "nothing is out with a consumer after a reopen"
    );
    assert_eq!(after.ready, before.ready + before.unacked);

    // A message published now gets the next id; nothing is reused.
    let fresh = h.publish(0, b"after reopen".to_vec());
    assert_eq!(fresh, before.next_message_id);

    // Everything un-acked comes back once, in the documented order, with its counts.
    h.drain();

    // A second reopen finds nothing left, and ids still continue.
    h.reopen(clean);
    let last = h.check_stats();
    assert_eq!((last.ready, last.unacked), (0, 0));
    assert!(h.queues[0].try_receive().unwrap().is_none());
    assert!(h.queues[1].try_receive().unwrap().is_none());
    assert_eq!(h.publish(1, b"later".to_vec()), fresh + 1);
}

macro_rules! reopen_cases {
    ($($name:ident: $backend:ident, $policy:expr, $clean:expr;)*) => {
        $(
            #[test]
            fn $name() {
                reopen_scenario(&Backend::$backend(), $policy, $clean);
            }
        )*
    };
}

reopen_cases! {
    close_always_mem: mem, FsyncPolicy::Always, true;
    close_batch_mem: mem, batch(), true;
    close_interval_mem: mem, interval(), true;
    close_never_mem: mem, FsyncPolicy::Never, true;
    drop_always_mem: mem, FsyncPolicy::Always, false;
    drop_batch_mem: mem, batch(), false;
    drop_interval_mem: mem, interval(), false;
    drop_never_mem: mem, FsyncPolicy::Never, false;
    close_always_disk: disk, FsyncPolicy::Always, true;
    close_batch_disk: disk, batch(), true;
    close_interval_disk: disk, interval(), true;
    close_never_disk: disk, FsyncPolicy::Never, true;
    drop_always_disk: disk, FsyncPolicy::Always, false;
    drop_batch_disk: disk, batch(), false;
    drop_interval_disk: disk, interval(), false;
    drop_never_disk: disk, FsyncPolicy::Never, false;
}

/// Publishes three messages into one queue, receives the first two and leaves them out.
fn in_flight_then_reopen(persist: bool, clean: bool) {
    let backend = Backend::mem();
    let options = StoreOptions::new().segment_size(1 << 20);
    let mut h = Harness::new(&backend, options, persist, &["q"]);
    let ids: Vec<u64> = (0..4).map(|i| h.publish(0, payload(i + 1))).collect();
    assert_eq!(h.receive(0), Some(ids[0]));
    assert_eq!(h.receive(0), Some(ids[1]));
    h.reopen(clean);
    h.check_stats();

    let first = h.receive_delivery(0).unwrap();
    assert_eq!(first.id.get(), ids[0]);
    if persist {
        assert!(
            first.redelivered,
            "it was out with a consumer before the reopen"
        );
        assert_eq!(first.delivery_count, 2);
    } else {
        // Without delivery records the store cannot know: the message looks new.
        assert!(!first.redelivered);
        assert_eq!(first.delivery_count, 1);
    }
    let second = h.receive_delivery(0).unwrap();
    assert_eq!(second.id.get(), ids[1]);
    assert_eq!(second.redelivered, persist);
    h.nack(first.id.get(), true);
    h.ack(second.id.get());
    h.drain();
}

#[test]
fn received_unsettled_messages_come_back_redelivered_after_close() {
    in_flight_then_reopen(true, true);
}

#[test]
fn received_unsettled_messages_come_back_redelivered_after_drop() {
    in_flight_then_reopen(true, false);
}

#[test]
fn without_persisted_deliveries_unsettled_messages_come_back_looking_new_after_close() {
    in_flight_then_reopen(false, true);
}

#[test]
fn without_persisted_deliveries_unsettled_messages_come_back_looking_new_after_drop() {
    in_flight_then_reopen(false, false);
}

#[test]
fn without_persisted_deliveries_nack_requeue_counts_still_survive() {
    let backend = Backend::disk();
    let options = StoreOptions::new().segment_size(1 << 20);
    let mut h = Harness::new(&backend, options, false, &["q"]);
    let a = h.publish(0, b"a".to_vec());
    h.publish(0, b"b".to_vec());
    for _ in 0..3 {
        assert_eq!(h.receive(0), Some(a));
        h.nack(a, true);
    }
    h.reopen(false);
    let d = h.receive_delivery(0).unwrap();
    assert_eq!(d.id.get(), a);
    assert!(d.redelivered);
    assert_eq!(
        d.delivery_count, 4,
        "three nack-requeues were logged with their counts"
    );
    h.ack(a);
    h.drain();
}

#[test]
fn delivery_counts_from_nack_requeue_survive_reopen() {
    for clean in [true, false] {
        let backend = Backend::disk();
        let options = StoreOptions::new().segment_size(1 << 20);
        let mut h = Harness::new(&backend, options, true, &["q"]);
        let ids: Vec<u64> = (0..3).map(|i| h.publish(0, payload(i + 5))).collect();
        for _ in 0..2 {
            assert_eq!(h.receive(0), Some(ids[0]));
            h.nack(ids[0], true);
        }
        h.reopen(clean);
        let d = h.receive_delivery(0).unwrap();
        assert_eq!(d.id.get(), ids[0]);
        assert!(d.redelivered);
        assert_eq!(d.delivery_count, 3, "clean = {clean}");
        // Once more across a reopen while it is out: count 4 next time.
        h.reopen(clean);
        let d = h.receive_delivery(0).unwrap();
        assert_eq!(d.id.get(), ids[0]);
        assert_eq!(d.delivery_count, 4, "clean = {clean}");
        h.ack(ids[0]);
        h.drain();
    }
}

#[test]
fn delivery_order_after_reopen_puts_delivered_before_messages_first_in_id_order() {
    let backend = Backend::mem();
    let options = StoreOptions::new().segment_size(1 << 20);
    let mut h = Harness::new(&backend, options, true, &["q"]);
    let ids: Vec<u64> = (0..8).map(|i| h.publish(0, payload(i))).collect();
    // Deliver 0..5; requeue 4 and 1 (out of id order); leave 0, 2, 3 out; ack none.
    let delivered: Vec<u64> = (0..5).map(|_| h.receive(0).unwrap()).collect();
    assert_eq!(delivered, ids[..5]);
    h.nack(ids[4], true);
    h.nack(ids[1], true);
    h.reopen(false);
    let order: Vec<(u64, bool)> = (0..8)
        .map(|_| {
            let d = h.receive_delivery(0).unwrap();
            (d.id.get(), d.redelivered)
        })
        .collect();
    assert_eq!(
        order,
        [
            (ids[0], true),
            (ids[1], true),
            (ids[2], true),
            (ids[3], true),
            (ids[4], true),
            (ids[5], false),
            (ids[6], false),
            (ids[7], false),
        ]
    );
}

#[test]
fn ids_continue_after_the_highest_id_even_when_everything_was_settled() {
    for clean in [true, false] {
        let backend = Backend::disk();
        let options = StoreOptions::new().segment_size(1 << 20);
        let mut h = Harness::new(&backend, options, true, &["q", "r"]);
        for i in 0..6 {
            h.publish((i % 2) as usize, payload(i));
        }
        // Settle everything, the newest ids last, one of them by rejection.
        for q in 0..2 {
            while let Some(id) = h.receive(q) {
                if id == 5 {
                    h.nack(id, false);
                } else {
                    h.ack(id);
                }
            }
        }
        h.reopen(clean);
        let s = h.check_stats();
        assert_eq!(s.next_message_id, 6, "clean = {clean}");
        assert_eq!(h.publish(0, b"new".to_vec()), 6);
        // Declaring an existing queue again after a reopen must not log a second declaration
        // (the next reopen would refuse it).
        let again = h.store().declare_queue("r").unwrap();
        assert_eq!(again.name(), "r");
        drop(again);
        h.reopen(clean);
        assert_eq!(h.store().queue_names().len(), 2);
        h.drain();
        assert_eq!(h.publish(1, b"newer".to_vec()), 7);
    }
}

fn multi_segment_scenario(backend: &Backend, policy: FsyncPolicy, clean: bool) {
    let options = StoreOptions::new().segment_size(64 << 10).fsync(policy);
    let mut h = Harness::new(backend, options, true, &["bulk", "side"]);
    for chunk in 0..60u64 {
        let payloads = (chunk * 50..chunk * 50 + 50).map(payload).collect();
        h.publish_batch((chunk % 3 == 2) as usize, payloads);
    }
    assert_eq!(h.next_id, 3000);
    // Settle a good part of queue 0 in a pattern, leave some out, requeue some.
    for n in 0..1200u64 {
        let id = h.receive(0).unwrap();
        match n % 10 {
            0 => h.nack(id, false),
            1 => h.nack(id, true),
            2 | 3 => {} // left in flight
            _ => h.ack(id),
        }
    }
    for _ in 0..100 {
        let id = h.receive(1).unwrap();
        h.ack(id);
    }
    let before = h.check_stats();
    assert!(
        before.segments >= 5,
        "the scenario must span several segments, got {}",
        before.segments
    );
    h.reopen(clean);
    let after = h.check_stats();
    assert_eq!(after.segments, before.segments);
    assert_eq!(after.next_message_id, 3000);
    h.drain();
    h.reopen(clean);
    let last = h.check_stats();
    assert_eq!(
        (last.ready, last.unacked, last.next_message_id),
        (0, 0, 3000)
    );
}

#[test]
fn multi_segment_store_reopens_correctly_after_close_mem() {
    multi_segment_scenario(&Backend::mem(), FsyncPolicy::Always, true);
}

#[test]
fn multi_segment_store_reopens_correctly_after_drop_mem() {
    multi_segment_scenario(&Backend::mem(), batch(), false);
}

#[test]
fn multi_segment_store_reopens_correctly_after_close_disk() {
    multi_segment_scenario(&Backend::disk(), FsyncPolicy::Never, true);
}

#[test]
fn multi_segment_store_reopens_correctly_after_drop_disk() {
    multi_segment_scenario(&Backend::disk(), interval(), false);
}

/// The fields of the stats that a reopen must reproduce exactly.
fn logical(s: &StoreStats) -> impl PartialEq + std::fmt::Debug {
    (
        s.queues.clone(),
        s.ready,
        s.unacked,
        s.next_message_id,
        s.acked,
        s.rejected,
        s.segments,
        s.tracked_messages,
    )
}

fn repeated_reopen(backend: &Backend, clean: bool) {
    let options = StoreOptions::new()
        .segment_size(64 << 10)
        .fsync(FsyncPolicy::Never);
    let mut h = Harness::new(backend, options, true, &["alpha", "beta"]);
    build_mixed_state(&mut h);
    for i in 0..400 {
        h.publish((i % 2) as usize, payload(i));
    }
    h.reopen(clean);
    let first = h.check_stats();
    assert!(first.segments >= 2, "the log spans several segments");
    for round in 0..3 {
        h.reopen(clean);
        let again = h.check_stats();
        assert_eq!(logical(&again), logical(&first), "reopen round {round}");
        if !clean {
            // Recovery itself writes nothing: the log is byte-for-byte the same size.
            assert_eq!(again.log_bytes, first.log_bytes, "reopen round {round}");
        }
    }
    h.drain();
}

#[test]
fn reopening_repeatedly_after_drop_is_idempotent() {
    repeated_reopen(&Backend::disk(), false);
}

#[test]
fn reopening_repeatedly_after_close_is_idempotent() {
    repeated_reopen(&Backend::mem(), true);
}

#[test]
fn a_store_with_queues_but_no_messages_reopens_empty() {
    for clean in [true, false] {
        let backend = Backend::disk();
        let options = StoreOptions::new().segment_size(1 << 20);
        let mut h = Harness::new(&backend, options, true, &["idle", "spare"]);
        h.reopen(clean);
        let s = h.check_stats();
        assert_eq!((s.ready, s.next_message_id, s.acked), (0, 0, 0));
        assert_eq!(h.publish(1, b"first ever".to_vec()), 0);
        h.reopen(clean);
        h.drain();
    }
}
