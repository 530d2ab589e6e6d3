//! Proves that `Store` and `Queue` are safe to share between threads: concurrent producers and
//! consumers under `FsyncPolicy::Always` get every message delivered to one consumer at a
//! time and acknowledged exactly once, and nothing comes back after a reopen.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use walq::io::MemVfs;
use walq::{Delivery, FsyncPolicy, MessageId, Queue, Store, StoreOptions};

fn assert_shareable<T: Send + Sync + Clone + 'static>() {}

// Compile-time: the handles can be cloned into and shared between threads.
const _: fn() = || {
    assert_shareable::<Store>();
    assert_shareable::<Queue>();
    assert_shareable::<Delivery>();
};

const PRODUCERS: usize = 4;
const CONSUMERS: usize = 4;
const PER_PRODUCER: usize = 500;
const TOTAL: usize = PRODUCERS * PER_PRODUCER;

fn options() -> StoreOptions {
    StoreOptions::new()
        .segment_size(1 << 20)
        .fsync(FsyncPolicy::Always)
}

/// What the consumers observed.
#[derive(Default)]
struct Observed {
    /// Messages currently held by some consumer (received, not yet settled).
    in_flight: Mutex<HashSet<MessageId>>,
    /// Acknowledged messages and the payload each was delivered with.
    acked: Mutex<HashMap<MessageId, Vec<u8>>>,
    /// Messages that were nacked with requeue at least once.
    requeued: Mutex<HashSet<MessageId>>,
    acked_count: AtomicUsize,
    deliveries: AtomicUsize,
}

fn consume(q: &Queue, seen: &Observed, deadline: Instant) {
    while seen.acked_count.load(Ordering::SeqCst) < TOTAL && Instant::now() < deadline {
        let Some(d) = q.receive_timeout(Duration::from_millis(20)).unwrap() else {
            continue;
        };
        seen.deliveries.fetch_add(1, Ordering::SeqCst);
        assert!(
            seen.in_flight.lock().unwrap().insert(d.id),
            "message {} delivered to two consumers at the same time",
            d.id
        );
        assert_eq!(&*d.queue, "work");
        assert_eq!(d.redelivered, d.delivery_count > 1, "{d:?}");
        let was_requeued = seen.requeued.lock().unwrap().contains(&d.id);
        assert_eq!(
            d.delivery_count,
            if was_requeued { 2 } else { 1 },
            "delivery count of message {}",
            d.id
        );
        if d.id.get() % 7 == 3 && d.delivery_count == 1 {
            // Give it back once; it must come to some consumer again.
            seen.requeued.lock().unwrap().insert(d.id);
            seen.in_flight.lock().unwrap().remove(&d.id);
            q.nack(d.id, true).unwrap();
        } else {
            q.ack(d.id).unwrap();
            seen.in_flight.lock().unwrap().remove(&d.id);
            let previous = seen.acked.lock().unwrap().insert(d.id, d.payload);
            assert!(previous.is_none(), "message {} acked twice", d.id);
            seen.acked_count.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn payload(producer: usize, seq: usize) -> Vec<u8> {
    format!("producer {producer} message {seq}").into_bytes()
}

#[test]
fn producers_and_consumers_settle_every_message_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let store = Store::open(&dir, options()).unwrap();
    let q = store.declare_queue("work").unwrap();
    let seen = Arc::new(Observed::default());
    let start = Arc::new(Barrier::new(PRODUCERS + CONSUMERS));
    let deadline = Instant::now() + Duration::from_secs(120);

    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (q, seen, start) = (q.clone(), Arc::clone(&seen), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                consume(&q, &seen, deadline);
            })
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            // Producers publish through the store handle, consumers through queue handles.
            let (store, start) = (store.clone(), Arc::clone(&start));
            thread::spawn(move || {
                let q = store.declare_queue("work").unwrap();
                start.wait();
                let mut sent: Vec<(MessageId, Vec<u8>)> = Vec::with_capacity(PER_PRODUCER);
                let mut seq = 0;
                while seq < PER_PRODUCER {
                    if seq % 50 == 10 {
                        let batch: Vec<Vec<u8>> = (seq..seq + 10).map(|s| payload(p, s)).collect();
                        let ids = q.publish_batch(&batch).unwrap();
                        for pair in ids.windows(2) {
                            assert_eq!(pair[1].get(), pair[0].get() + 1, "batch ids");
                        }
                        sent.extend(ids.into_iter().zip(batch));
                        seq += 10;
                    } else {
                        let body = payload(p, seq);
                        sent.push((q.publish(&body).unwrap(), body));
                        seq += 1;
                    }
                }
                sent
            })
        })
        .collect();

    let mut published: HashMap<MessageId, Vec<u8>> = HashMap::new();
    for handle in producers {
        let sent = handle.join().unwrap();
        assert_eq!(sent.len(), PER_PRODUCER);
        for pair in sent.windows(2) {
            assert!(pair[0].0 < pair[1].0, "one producer's ids increase");
        }
        for (id, body) in sent {
            assert!(
                published.insert(id, body).is_none(),
                "id {id} assigned twice"
            );
        }
    }
    for handle in consumers {
        handle.join().unwrap();
    }

    // Ids are dense across all producers.
    let mut ids: Vec<u64> = published.keys().map(|id| id.get()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..TOTAL as u64).collect::<Vec<_>>());

    let acked = std::mem::take(&mut *seen.acked.lock().unwrap());
    assert_eq!(
        acked.len(),
        TOTAL,
        "every message acked (before the deadline)"
    );
    assert_eq!(
        acked, published,
        "every message acked once, with its own payload"
    );
    assert!(seen.in_flight.lock().unwrap().is_empty());
    let requeued = seen.requeued.lock().unwrap().len();
    assert!(requeued > 0, "the scenario exercises nack-requeue");
    assert_eq!(seen.deliveries.load(Ordering::SeqCst), TOTAL + requeued);

    let stats = store.stats();
    assert_eq!(
        (stats.ready, stats.unacked, stats.acked, stats.rejected),
        (0, 0, TOTAL as u64, 0)
    );
    assert_eq!(stats.next_message_id, TOTAL as u64);
    assert!(q.try_receive().unwrap().is_none());
    drop(q);
    drop(store);

    // Everything was acked durably: nothing comes back.
    let store = Store::open(&dir, options()).unwrap();
    let stats = store.stats();
    assert_eq!(
        (
            stats.ready,
            stats.unacked,
            stats.acked,
            stats.next_message_id
        ),
        (0, 0, TOTAL as u64, TOTAL as u64)
    );
    let q = store.queue("work").unwrap();
    assert!(q.try_receive().unwrap().is_none());
    assert_eq!(q.publish(b"next").unwrap(), MessageId(TOTAL as u64));
}

fn mem_store(dir: &str) -> (MemVfs, Store) {
    let vfs = MemVfs::new();
    let store = Store::open_with_vfs(Arc::new(vfs.clone()), Path::new(dir), options()).unwrap();
    (vfs, store)
}

/// Spawns `n` threads blocked in `receive()` on `q` and waits until they are blocked.
fn blocked_receivers(q: &Queue, n: usize) -> Vec<thread::JoinHandle<walq::Result<Delivery>>> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let q = q.clone();
            thread::spawn(move || q.receive())
        })
        .collect();
    thread::sleep(Duration::from_millis(150));
    for h in &handles {
        assert!(!h.is_finished(), "receive() returned on an empty queue");
    }
    handles
}

#[test]
fn a_batch_publish_wakes_every_blocked_receiver_with_a_distinct_message() {
    let (_vfs, store) = mem_store("/stores/wake-batch");
    let q = store.declare_queue("q").unwrap();
    let receivers = blocked_receivers(&q, 4);
    let ids = q.publish_batch(&["1", "2", "3", "4"]).unwrap();
    let mut got: Vec<MessageId> = receivers
        .into_iter()
        .map(|h| h.join().unwrap().unwrap().id)
        .collect();
    got.sort_unstable();
    assert_eq!(got, ids, "each receiver got one message, none twice");
    assert_eq!(q.stats().unacked, 4);
}

#[test]
fn single_publishes_and_requeues_wake_blocked_receivers() {
    let (_vfs, store) = mem_store("/stores/wake-single");
    let q = store.declare_queue("q").unwrap();
    let receivers = blocked_receivers(&q, 3);
    let mut ids: Vec<MessageId> = (0..3).map(|i| q.publish(&[i]).unwrap()).collect();
    let mut got: Vec<MessageId> = receivers
        .into_iter()
        .map(|h| h.join().unwrap().unwrap().id)
        .collect();
    got.sort_unstable();
    ids.sort_unstable();
    assert_eq!(got, ids);

    // A requeue wakes a receiver blocked on the now empty queue.
    let receivers = blocked_receivers(&q, 1);
    q.nack(ids[1], true).unwrap();
    let d = receivers
        .into_iter()
        .next()
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(d.id, ids[1]);
    assert!(d.redelivered);
    assert_eq!(d.delivery_count, 2);
}

#[test]
fn concurrent_declarations_of_one_queue_yield_one_queue() {
    let (vfs, store) = mem_store("/stores/declare");
    let start = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (store, start) = (store.clone(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                let name = if i % 2 == 0 { "even" } else { "shared" };
                let q = store.declare_queue(name).unwrap();
                let shared = store.declare_queue("shared").unwrap();
                shared.publish(&[i as u8]).unwrap();
                q.name().to_owned()
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut names: Vec<String> = store.queue_names().iter().map(|n| n.to_string()).collect();
    names.sort();
    assert_eq!(names, ["even", "shared"]);
    assert_eq!(store.queue("shared").unwrap().stats().ready, 8);
    drop(store);

    // A duplicate declaration in the log would make this reopen fail.
    let store = Store::open_with_vfs(Arc::new(vfs), Path::new("/stores/declare"), options())
        .expect("reopen after concurrent declarations");
    assert_eq!(store.queue_names().len(), 2);
    assert_eq!(store.queue("shared").unwrap().stats().ready, 8);
}

#[test]
fn store_and_queue_handles_move_between_threads() {
    let (_vfs, store) = mem_store("/stores/move");
    let q = store.declare_queue("q").unwrap();
    let id = thread::spawn({
        let q = q.clone();
        move || q.publish(b"from a thread").unwrap()
    })
    .join()
    .unwrap();
    let d = thread::spawn({
        let store = store.clone();
        move || store.queue("q").unwrap().try_receive().unwrap().unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(d.id, id);
    thread::spawn(move || store.ack(d.id).unwrap())
        .join()
        .unwrap();
    assert_eq!(q.stats().acked, 1);
}
