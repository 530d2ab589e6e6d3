//! Proves that every public operation of `Store` and `Queue` behaves as documented, on the
//! in-memory file system and on a real directory alike.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use walq::io::{FileView, LockGuard, MemVfs, Vfs, VfsFile};
use walq::{Error, FsyncPolicy, MessageId, Store, StoreOptions};

/// Where a test's store lives.
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
            Backend::Mem(_) => PathBuf::from("/stores/api"),
            Backend::Disk(tmp) => tmp.path().join("store"),
        }
    }

    fn open_with(&self, options: StoreOptions) -> walq::Result<Store> {
        match self {
            Backend::Mem(vfs) => Store::open_with_vfs(Arc::new(vfs.clone()), &self.dir(), options),
            Backend::Disk(_) => Store::open(self.dir(), options),
        }
    }

    fn open(&self) -> Store {
        self.open_with(options()).expect("open the store")
    }
}

/// Small segments keep the in-memory preallocation and the recovery scan cheap.
fn options() -> StoreOptions {
    StoreOptions::new().segment_size(1 << 20)
}

/// Runs each scenario once on `MemVfs` and once on a real directory.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod mem {
            $(
                #[test]
                fn $name() {
                    super::$name(&super::Backend::mem());
                }
            )*
        }
        mod disk {
            $(
                #[test]
                fn $name() {
                    super::$name(&super::Backend::disk());
                }
            )*
        }
    };
}

on_both_backends!(
    declare_queue_is_idempotent_and_returns_the_same_queue,
    queue_finds_declared_queues_and_refuses_unknown_ones,
    queue_names_lists_queues_in_declaration_order,
    publish_assigns_dense_increasing_ids_across_queues,
    publish_batch_assigns_consecutive_ids_and_keeps_order,
    try_receive_returns_none_on_an_empty_queue,
    receive_blocks_until_another_thread_publishes,
    receive_timeout_returns_none_after_the_timeout,
    receive_timeout_returns_a_message_published_during_the_wait,
    ack_settles_a_message_for_good,
    nack_requeue_redelivers_before_never_delivered_messages,
    requeued_messages_are_served_oldest_id_first,
    nack_without_requeue_drops_the_message,
    store_ack_and_nack_settle_by_id,
    stats_stay_consistent_after_each_step,
    close_makes_later_calls_fail_with_closed,
    close_wakes_a_receiver_blocked_in_another_thread,
    delivery_carries_queue_name_and_publish_time,
);

fn declare_queue_is_idempotent_and_returns_the_same_queue(b: &Backend) {
    let store = b.open();
    let first = store.declare_queue("jobs").unwrap();
    let second = store.declare_queue("jobs").unwrap();
    assert_eq!(first.name(), "jobs");
    assert_eq!(second.name(), "jobs");
    assert_eq!(
        store.queue_names().len(),
        1,
        "a second declare must not add a queue"
    );
    assert_eq!(store.stats().queues.len(), 1);

    // Both handles address the same queue: what goes in through one comes out of the other.
    let id = first.publish(b"shared").unwrap();
    let got = second
        .try_receive()
        .unwrap()
        .expect("the message published via `first`");
    assert_eq!(got.id, id);
    assert_eq!(got.payload, b"shared");
    second.ack(got.id).unwrap();
    assert_eq!(first.stats().acked, 1);
    assert_eq!(first.stats(), second.stats());
    assert_eq!(first.store().dir(), store.dir());
    assert_eq!(store.dir(), b.dir().as_path());
}

fn queue_finds_declared_queues_and_refuses_unknown_ones(b: &Backend) {
    let store = b.open();
    match store.queue("missing") {
        Err(Error::QueueNotFound { name }) => assert_eq!(name, "missing"),
        other => panic!("expected QueueNotFound, got {other:?}"),
    }
    let declared = store.declare_queue("present").unwrap();
    let found = store.queue("present").unwrap();
    assert_eq!(found.name(), "present");
    declared.publish(b"x").unwrap();
    assert_eq!(
        found.stats().ready,
        1,
        "queue() returns a handle on the declared queue"
    );
    // Looking a queue up never declares it.
    assert!(matches!(
        store.queue("missing"),
        Err(Error::QueueNotFound { .. })
    ));
    assert_eq!(store.queue_names().len(), 1);
}

fn queue_names_lists_queues_in_declaration_order(b: &Backend) {
    let store = b.open();
    assert!(store.queue_names().is_empty());
    for name in ["beta", "alpha", "gamma"] {
        store.declare_queue(name).unwrap();
    }
    store.declare_queue("alpha").unwrap();
    let names: Vec<String> = store.queue_names().iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["beta", "alpha", "gamma"]);
    let stat_names: Vec<String> = store
        .stats()
        .queues
        .iter()
        .map(|q| q.name.to_string())
        .collect();
    assert_eq!(stat_names, names);
}

fn publish_assigns_dense_increasing_ids_across_queues(b: &Backend) {
    let store = b.open();
    let queues = [
        store.declare_queue("a").unwrap(),
        store.declare_queue("b").unwrap(),
        store.declare_queue("c").unwrap(),
    ];
    let mut expected: Vec<Vec<(MessageId, Vec<u8>)>> = vec![Vec::new(); 3];
    for i in 0..30u64 {
        let q = (i * 7 % 3) as usize;
        let payload = format!("message {i}").into_bytes();
        let id = queues[q].publish(&payload).unwrap();
        assert_eq!(id, MessageId(i), "ids are dense and shared by all queues");
        assert_eq!(id.get(), i);
        expected[q].push((id, payload));
    }
    assert_eq!(store.stats().next_message_id, 30);
    for (q, want) in queues.iter().zip(&expected) {
        assert_eq!(q.stats().published, want.len() as u64);
        for (id, payload) in want {
            let got = q.try_receive().unwrap().expect("a ready message");
            assert_eq!((got.id, &got.payload), (*id, payload), "queue {}", q.name());
        }
        assert!(q.try_receive().unwrap().is_none());
    }
}

fn publish_batch_assigns_consecutive_ids_and_keeps_order(b: &Backend) {
    let store = b.open();
    let q = store.declare_queue("batch").unwrap();
    let other = store.declare_queue("other").unwrap();
    assert_eq!(q.publish(b"single").unwrap(), MessageId(0));
    let ids = q
        .publish_batch(&["one", "two", "three", "four", "five"])
        .unwrap();
    assert_eq!(ids, (1..=5).map(MessageId).collect::<Vec<_>>());
    let owned: Vec<Vec<u8>> = vec![vec![1; 10], vec![2; 20]];
    assert_eq!(
        other.publish_batch(&owned).unwrap(),
        [MessageId(6), MessageId(7)]
    );
    assert_eq!(q.publish(b"after").unwrap(), MessageId(8));
    assert_eq!(store.stats().next_message_id, 9);
    assert_eq!(q.stats().ready, 7);
    assert_eq!(other.stats().ready, 2);

    let want: [(u64, &[u8]); 7] = [
        (0, b"single"),
        (1, b"one"),
        (2, b"two"),
        (3, b"three"),
        (4, b"four"),
        (5, b"five"),
        (8, b"after"),
    ];
    for (id, payload) in want {
        let got = q.try_receive().unwrap().expect("a ready message");
        assert_eq!(got.id, MessageId(id));
        assert_eq!(got.payload, payload);
    }
    for (id, payload) in [(6, &owned[0]), (7, &owned[1])] {
        let got = other.try_receive().unwrap().expect("a ready message");
        assert_eq!(got.id, MessageId(id));
        assert_eq!(&got.payload, payload);
    }
}

fn try_receive_returns_none_on_an_empty_queue(b: &Backend) {
    let store = b.open();
    let empty = store.declare_queue("empty").unwrap();
    let busy = store.declare_queue("busy").unwrap();
    assert!(empty.try_receive().unwrap().is_none());
    busy.publish(b"not for `empty`").unwrap();
    assert!(
        empty.try_receive().unwrap().is_none(),
        "messages of another queue are not served"
    );
    let got = busy.try_receive().unwrap().expect("busy has a message");
    assert!(
        busy.try_receive().unwrap().is_none(),
        "a delivered message is not ready"
    );
    busy.ack(got.id).unwrap();
    assert!(busy.try_receive().unwrap().is_none());
    let stats = store.stats();
    assert_eq!((stats.ready, stats.unacked), (0, 0));
}

/// Waits (bounded) until `handle` has been blocked for a while, asserting it did not finish.
fn assert_still_blocked<T>(handle: &thread::JoinHandle<T>, what: &str) {
    thread::sleep(Duration::from_millis(150));
    assert!(
        !handle.is_finished(),
        "{what} returned before anything happened"
    );
}

fn receive_blocks_until_another_thread_publishes(b: &Backend) {
    let store = b.open();
    let q = store.declare_queue("blocking").unwrap();
    let consumer = {
        let q = q.clone();
        thread::spawn(move || q.receive())
    };
    assert_still_blocked(&consumer, "receive() on an empty queue");
    let producer = {
        let q = q.clone();
        thread::spawn(move || q.publish(b"wake up").unwrap())
    };
    let id = producer.join().unwrap();
    let got = consumer
        .join()
        .unwrap()
        .expect("receive returns the published message");
    assert_eq!(got.id, id);
    assert_eq!(got.payload, b"wake up");
    assert_eq!(got.delivery_count, 1);
    assert!(!got.redelivered);
    assert_eq!(q.stats().unacked, 1);
    q.ack(got.id).unwrap();
}

fn receive_timeout_returns_none_after_the_timeout(b: &Backend) {
    let store = b.open();
    let q = store.declare_queue("quiet").unwrap();
    let timeout = Duration::from_millis(120);
    let start = Instant::now();
    assert!(q.receive_timeout(timeout).unwrap().is_none());
    let waited = start.elapsed();
    assert!(
        waited >= timeout,
        "returned after {waited:?}, before the timeout"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    // A zero timeout behaves like try_receive.
    assert!(q.receive_timeout(Duration::ZERO).unwrap().is_none());
    q.publish(b"ready").unwrap();
    let got = q.receive_timeout(Duration::ZERO).unwrap();
    assert_eq!(got.expect("a ready message").payload, b"ready");
}

fn receive_timeout_returns_a_message_published_during_the_wait(b: &Backend) {
    let store = b.open();
    let q = store.declare_queue("late").unwrap();
    let consumer = {
        let q = q.clone();
        thread::spawn(move || {
            let start = Instant::now();
            let got = q.receive_timeout(Duration::from_secs(20));
            (got, start.elapsed())
        })
    };
    assert_still_blocked(&consumer, "receive_timeout() on an empty queue");
    let id = q.publish(b"in time").unwrap();
    let (got, waited) = consumer.join().unwrap();
    let got = got.unwrap().expect("the message published during the wait");
    assert_eq!(got.id, id);
    assert_eq!(got.payload, b"in time");
    assert!(
        waited < Duration::from_secs(10),
        "the receiver waited {waited:?} instead of waking on the publish"
    );

    // A timeout too large to add to `Instant::now()` means "wait without limit".
    let consumer = {
        let q = q.clone();
        thread::spawn(move || q.receive_timeout(Duration::MAX))
    };
    assert_still_blocked(&consumer, "receive_timeout(Duration::MAX)");
    let id = q.publish(b"eventually").unwrap();
    let got = consumer.join().unwrap().unwrap().expect("the message");
    assert_eq!(got.id, id);
}

fn ack_settles_a_message_for_good(b: &Backend) {
    let store = b.open();
    let q = store.declare_queue("acks").unwrap();
    let id = q.publish(b"payload").unwrap();
    let got = q.try_receive().unwrap().unwrap();
    assert_eq!(got.id, id);
    q.ack(id).unwrap();
    assert!(
        q.try_receive().unwrap().is_none(),
        "an acked message never comes back"
    );
    let qs = q.stats();
    assert_eq!((qs.ready, qs.unacked, qs.acked, qs.rejected), (0, 0, 1, 0));
    let stats = store.stats();
    assert_eq!((stats.acked, stats.rejected), (1, 0));
    assert!(matches!(q.ack(id), Err(Error::AlreadySettled { .. })));
}

fn nack_requeue_redelivers_before_never_delivered_messages(b: &Backend) {
    let store = b.open();
    let q = store.declare_queue("retry").unwrap();
    let ids = q.publish_batch(&["first", "second", "third"]).unwrap();

    let first = q.try_receive().unwrap().unwrap();
    assert_eq!(first.id, ids[0]);
    assert!(!first.redelivered);
    assert_eq!(first.delivery_count, 1);
    q.nack(first.id, true).unwrap();
    let qs = q.stats();
    assert_eq!((qs.ready, qs.unacked, qs.rejected), (3, 0, 0));

    let again = q.try_receive().unwrap().unwrap();
    assert_eq!(again.id, ids[0], "the requeued message is served first");
    assert_eq!(again.payload, b"first");
    assert!(again.redelivered);
    assert_eq!(again.delivery_count, 2);

    // A second round trip bumps the count again.
    q.nack(again.id, true).unwrap();
    let third_time = q.try_receive().unwrap().unwrap();
    assert_eq!(third_time.id, ids[0]);
    assert!(third_time.redelivered);
    assert_eq!(third_time.delivery_count, 3);
    q.ack(third_time.id).unwrap();

    // The never-delivered messages follow in publish order, looking new.
    for (id, payload) in [(ids[1], &b"second"[..]), (ids[2], b"third")] {
        let got = q.try_receive().unwrap().unwrap();
        assert_eq!((got.id, got.payload.as_slice()), (id, payload));
        assert!(!got.redelivered);
        assert_eq!(got.delivery_count, 1);
        q.ack(got.id).unwrap();
    }
    let stats = store.stats();
    assert_eq!((stats.ready, stats.unacked, stats.acked), (0, 0, 3));
}

fn requeued_messages_are_served_oldest_id_first(b: &Backend) {
    let store = b.open();
    let q = store.declare_queue("order").unwrap();
    let ids = q.publish_batch(&["a", "b", "c", "d"]).unwrap();
    let a = q.try_receive().unwrap().unwrap();
    let bee = q.try_receive().unwrap().unwrap();
    let c = q.try_receive().unwrap().unwrap();
    assert_eq!([a.id, bee.id, c.id], [ids[0], ids[1], ids[2]]);
    // Requeue out of order: c, then a. b stays out.
    q.nack(c.id, true).unwrap();
    q.nack(a.id, true).unwrap();
    let order: Vec<(MessageId, bool)> = (0..3)
        .map(|_| {
            let d = q.try_receive().unwrap().unwrap();
            (d.id, d.redelivered)
        })
        .collect();
    assert_eq!(
        order,
        [(ids[0], true), (ids[2], true), (ids[3], false)],
        "requeued messages first, oldest id first, then never-delivered ones"
    );
    assert_eq!(q.stats().unacked, 4);
}

fn nack_without_requeue_drops_the_message(b: &Backend) {
    let store = b.open();
    let q = store.declare_queue("reject").unwrap();
    let bad = q.publish(b"poison").unwrap();
    let good = q.publish(b"fine").unwrap();
    let got = q.try_receive().unwrap().unwrap();
    assert_eq!(got.id, bad);
    q.nack(bad, false).unwrap();
    let qs = q.stats();
    assert_eq!((qs.ready, qs.unacked, qs.rejected, qs.acked), (1, 0, 1, 0));
    assert_eq!(store.stats().rejected, 1);

    let next = q.try_receive().unwrap().unwrap();
    assert_eq!(
        next.id, good,
        "the rejected message is never delivered again"
    );
    q.ack(good).unwrap();
    assert!(q.try_receive().unwrap().is_none());
    assert!(matches!(
        q.nack(bad, true),
        Err(Error::AlreadySettled { .. })
    ));
    assert!(matches!(q.ack(bad), Err(Error::AlreadySettled { .. })));
    let stats = store.stats();
    assert_eq!(
        (stats.acked, stats.rejected, stats.ready, stats.unacked),
        (1, 1, 0, 0)
    );
}

fn store_ack_and_nack_settle_by_id(b: &Backend) {
    let store = b.open();
    let left = store.declare_queue("left").unwrap();
    let right = store.declare_queue("right").unwrap();
    let l = left.publish(b"l").unwrap();
    let r = right.publish(b"r").unwrap();
    let r2 = right.publish(b"r2").unwrap();

    assert_eq!(left.try_receive().unwrap().unwrap().id, l);
    assert_eq!(right.try_receive().unwrap().unwrap().id, r);
    store.ack(l).unwrap();
    store.nack(r, true).unwrap();
    let back = right.try_receive().unwrap().unwrap();
    assert_eq!(back.id, r);
    assert!(back.redelivered);
    store.nack(r, false).unwrap();
    assert_eq!(right.try_receive().unwrap().unwrap().id, r2);
    store.ack(r2).unwrap();

    assert_eq!(left.stats().acked, 1);
    let rs = right.stats();
    assert_eq!((rs.acked, rs.rejected, rs.ready, rs.unacked), (1, 1, 0, 0));
    let stats = store.stats();
    assert_eq!((stats.acked, stats.rejected), (2, 1));
}

/// Checks the store-wide counters against expectations and against the per-queue ones.
#[track_caller]
fn check_stats(store: &Store, ready: u64, unacked: u64, next_id: u64, acked: u64, rejected: u64) {
    let s = store.stats();
    assert_eq!(
        (s.ready, s.unacked, s.next_message_id, s.acked, s.rejected),
        (ready, unacked, next_id, acked, rejected),
        "(ready, unacked, next_message_id, acked, rejected)"
    );
    assert_eq!(s.ready, s.queues.iter().map(|q| q.ready).sum::<u64>());
    assert_eq!(s.unacked, s.queues.iter().map(|q| q.unacked).sum::<u64>());
    assert_eq!(s.acked, s.queues.iter().map(|q| q.acked).sum::<u64>());
    assert_eq!(s.rejected, s.queues.iter().map(|q| q.rejected).sum::<u64>());
    assert_eq!(
        s.next_message_id,
        s.queues.iter().map(|q| q.published).sum::<u64>()
    );
    assert!(s.segments >= 1, "a store always has a segment");
    assert!(s.bytes_on_disk > 0);
    assert!(s.log_bytes > 0);
    assert!(s.log_bytes <= s.bytes_on_disk);
}

fn stats_stay_consistent_after_each_step(b: &Backend) {
    let store = b.open();
    check_stats(&store, 0, 0, 0, 0, 0);
    let bytes_before = store.stats().log_bytes;
    let q = store.declare_queue("counted").unwrap();
    let p = store.declare_queue("other").unwrap();
    check_stats(&store, 0, 0, 0, 0, 0);
    assert!(
        store.stats().log_bytes > bytes_before,
        "declarations are logged"
    );

    q.publish_batch(&["0", "1", "2", "3"]).unwrap();
    p.publish(b"4").unwrap();
    check_stats(&store, 5, 0, 5, 0, 0);
    let d0 = q.try_receive().unwrap().unwrap();
    let d1 = q.try_receive().unwrap().unwrap();
    check_stats(&store, 3, 2, 5, 0, 0);
    q.ack(d0.id).unwrap();
    check_stats(&store, 3, 1, 5, 1, 0);
    q.nack(d1.id, true).unwrap();
    check_stats(&store, 4, 0, 5, 1, 0);
    let d1 = q.try_receive().unwrap().unwrap();
    check_stats(&store, 3, 1, 5, 1, 0);
    q.nack(d1.id, false).unwrap();
    check_stats(&store, 3, 0, 5, 1, 1);
    let d4 = p.try_receive().unwrap().unwrap();
    store.ack(d4.id).unwrap();
    check_stats(&store, 2, 0, 5, 2, 1);
    let qs = q.stats();
    assert_eq!(
        (qs.ready, qs.unacked, qs.published, qs.acked, qs.rejected),
        (2, 0, 4, 1, 1)
    );
    let ps = p.stats();
    assert_eq!(
        (ps.ready, ps.unacked, ps.published, ps.acked, ps.rejected),
        (0, 0, 1, 1, 0)
    );
    store.sync().unwrap();
    check_stats(&store, 2, 0, 5, 2, 1);
    let before_close = store.stats();
    store.close().unwrap();
    let after_close = store.stats();
    assert_eq!(
        (
            after_close.ready,
            after_close.unacked,
            after_close.next_message_id
        ),
        (
            before_close.ready,
            before_close.unacked,
            before_close.next_message_id
        )
    );
}

/// Asserts that `result` is `Err(Error::Closed)`.
#[track_caller]
fn assert_closed<T: std::fmt::Debug>(what: &str, result: walq::Result<T>) {
    match result {
        Err(Error::Closed) => {}
        other => panic!("{what} after close: expected Err(Closed), got {other:?}"),
    }
}

fn close_makes_later_calls_fail_with_closed(b: &Backend) {
    let store = b.open();
    let q = store.declare_queue("q").unwrap();
    let out = q.publish(b"out").unwrap();
    q.publish(b"waiting").unwrap();
    assert_eq!(q.try_receive().unwrap().unwrap().id, out);
    let next_id = store.stats().next_message_id;
    store.close().unwrap();

    let clone = store.clone();
    assert_closed("publish", q.publish(b"late"));
    assert_closed("publish_batch", q.publish_batch(&["a", "b"]));
    assert_closed("try_receive", q.try_receive());
    assert_closed("receive", q.receive());
    assert_closed(
        "receive_timeout",
        q.receive_timeout(Duration::from_millis(10)),
    );
    assert_closed("Queue::ack", q.ack(out));
    assert_closed("Queue::nack", q.nack(out, true));
    assert_closed("Store::ack", clone.ack(out));
    assert_closed("Store::nack", clone.nack(out, false));
    assert_closed("declare_queue of a new queue", store.declare_queue("new"));
    assert_eq!(
        store.stats().next_message_id,
        next_id,
        "nothing was published"
    );
    assert_eq!(store.queue_names().len(), 1, "nothing was declared");
}

fn close_wakes_a_receiver_blocked_in_another_thread(b: &Backend) {
    let store = b.open();
    let q = store.declare_queue("sleepy").unwrap();
    let blocked = {
        let q = q.clone();
        thread::spawn(move || q.receive())
    };
    let blocked_timeout = {
        let q = q.clone();
        thread::spawn(move || q.receive_timeout(Duration::from_secs(60)))
    };
    assert_still_blocked(&blocked, "receive()");
    assert!(!blocked_timeout.is_finished());
    let start = Instant::now();
    store.close().unwrap();
    let result = blocked.join().unwrap();
    assert!(
        matches!(result, Err(Error::Closed)),
        "a blocked receive() must wake with Closed, got {result:?}"
    );
    let result = blocked_timeout.join().unwrap();
    assert!(
        matches!(result, Err(Error::Closed)),
        "a blocked receive_timeout() must wake with Closed, got {result:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(30));
}

fn delivery_carries_queue_name_and_publish_time(b: &Backend) {
    let store = b.open();
    let q = store.declare_queue("timed").unwrap();
    let before = SystemTime::now();
    let id = q.publish(b"tick").unwrap();
    let after = SystemTime::now();
    thread::sleep(Duration::from_millis(30));
    let got = q.try_receive().unwrap().unwrap();
    assert_eq!(got.id, id);
    assert_eq!(&*got.queue, "timed");
    // Millisecond precision: the stored time may be up to 1 ms before `before`.
    assert!(
        got.published_at + Duration::from_millis(1) >= before,
        "published_at {:?} is before the publish started ({before:?})",
        got.published_at
    );
    assert!(
        got.published_at <= after,
        "published_at {:?} is after the publish returned ({after:?})",
        got.published_at
    );
    // A redelivery keeps the original publish time.
    q.nack(id, true).unwrap();
    let again = q.try_receive().unwrap().unwrap();
    assert_eq!(again.published_at, got.published_at);
    assert_eq!(&*again.queue, "timed");
}

// ---------------------------------------------------------------------------------------
// `sync`: observed through a file system that counts `fdatasync` calls.

#[derive(Debug)]
struct CountingVfs {
    inner: MemVfs,
    syncs: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct CountingFile {
    inner: Arc<dyn VfsFile>,
    syncs: Arc<AtomicUsize>,
}

impl CountingVfs {
    fn wrap(&self, file: Arc<dyn VfsFile>) -> Arc<dyn VfsFile> {
        Arc::new(CountingFile {
            inner: file,
            syncs: Arc::clone(&self.syncs),
        })
    }
}

impl Vfs for CountingVfs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        Ok(self.wrap(self.inner.create(path)?))
    }
    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn VfsFile>> {
        Ok(self.wrap(self.inner.open(path, writable)?))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        self.inner.try_lock(path)
    }
}

impl VfsFile for CountingFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn preallocate(&self, len: u64) -> io::Result<()> {
        self.inner.preallocate(len)
    }
    fn view(&self, len: u64) -> io::Result<FileView> {
        self.inner.view(len)
    }
}

#[test]
fn sync_fdatasyncs_what_the_never_policy_left_unsynced() {
    let syncs = Arc::new(AtomicUsize::new(0));
    let vfs = Arc::new(CountingVfs {
        inner: MemVfs::new(),
        syncs: Arc::clone(&syncs),
    });
    let opts = options().fsync(FsyncPolicy::Never);
    let store = Store::open_with_vfs(vfs, Path::new("/stores/sync"), opts).unwrap();
    let q = store.declare_queue("lazy").unwrap();
    let opened = syncs.load(Ordering::SeqCst);
    q.publish(b"one").unwrap();
    q.publish_batch(&["two", "three"]).unwrap();
    let d = q.try_receive().unwrap().unwrap();
    q.ack(d.id).unwrap();
    assert_eq!(
        syncs.load(Ordering::SeqCst),
        opened,
        "FsyncPolicy::Never must not fdatasync on publish or ack"
    );
    store.sync().unwrap();
    assert!(
        syncs.load(Ordering::SeqCst) > opened,
        "Store::sync must fdatasync the written records"
    );
}

#[test]
fn publish_under_the_always_policy_fdatasyncs_before_returning() {
    let syncs = Arc::new(AtomicUsize::new(0));
    let vfs = Arc::new(CountingVfs {
        inner: MemVfs::new(),
        syncs: Arc::clone(&syncs),
    });
    let opts = options().fsync(FsyncPolicy::Always);
    let store = Store::open_with_vfs(vfs, Path::new("/stores/always"), opts).unwrap();
    let q = store.declare_queue("eager").unwrap();
    let mut last = syncs.load(Ordering::SeqCst);
    q.publish(b"one").unwrap();
    let now = syncs.load(Ordering::SeqCst);
    assert!(
        now > last,
        "publish must fdatasync under FsyncPolicy::Always"
    );
    last = now;
    let d = q.try_receive().unwrap().unwrap();
    q.ack(d.id).unwrap();
    assert!(
        syncs.load(Ordering::SeqCst) > last,
        "ack must fdatasync too"
    );
    store.sync().unwrap();
}

// `Store::close` documents that *every* later call on any handle fails with `Error::Closed`
// (and `Error::Closed` itself says "the store is closed"). These two calls are fallible too.

#[test]
fn sync_after_close_fails_with_closed() {
    let store = Backend::mem().open();
    let q = store.declare_queue("q").unwrap();
    q.publish(b"x").unwrap();
    store.close().unwrap();
    assert_closed("sync", store.sync());
}

#[test]
fn declare_queue_of_an_existing_queue_after_close_fails_with_closed() {
    let store = Backend::mem().open();
    store.declare_queue("q").unwrap();
    store.close().unwrap();
    assert_closed(
        "declare_queue of an existing queue",
        store.declare_queue("q"),
    );
}
