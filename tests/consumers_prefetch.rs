//! Proves that consumers keep their own deliveries: the prefetch limit stops delivery (and a
//! blocked receive resumes when the consumer acks), `ack_multiple` / `nack_multiple` settle
//! exactly this consumer's deliveries, nobody else may settle them, closing or dropping a
//! consumer returns its deliveries, blocked consumers are served in arrival order, and a
//! crash brings a consumer's deliveries back as redelivered.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use walq::io::{CrashMode, SimVfs};
use walq::{ConsumerOptions, DeadLetterReason, Error, ManualClock, MessageId, QueueOptions};

mod common;

use common::semantics::{open, store_at, T0};

fn publish_n(queue: &walq::Queue, n: usize) -> Vec<MessageId> {
    (0..n)
        .map(|i| queue.publish(format!("m{i}").as_bytes()).unwrap())
        .collect()
}

#[test]
fn try_receive_returns_none_at_the_prefetch_limit_until_the_consumer_settles() {
    let (store, _clock) = store_at(T0);
    let q = store.declare_queue("jobs").unwrap();
    let ids = publish_n(&q, 5);
    let c = q.consumer(ConsumerOptions::new().prefetch(2)).unwrap();

    let first = c.try_receive().unwrap().unwrap();
    let second = c.try_receive().unwrap().unwrap();
    assert_eq!((first.id, second.id), (ids[0], ids[1]));
    assert!(c.try_receive().unwrap().is_none(), "prefetch limit of 2");
    assert!(c.try_receive().unwrap().is_none(), "still at the limit");
    assert_eq!(c.unacked(), 2);
    let stats = q.stats();
    assert_eq!((stats.ready, stats.unacked), (3, 2));

    // The limit is this consumer's: the queue itself and other consumers go on.
    let other = q.consumer(ConsumerOptions::new().prefetch(1)).unwrap();
    assert_eq!(other.try_receive().unwrap().unwrap().id, ids[2]);

    // Settling one delivery frees exactly one place.
    c.ack(first.id).unwrap();
    assert_eq!(c.try_receive().unwrap().unwrap().id, ids[3]);
    assert!(c.try_receive().unwrap().is_none());
    c.nack(second.id, true).unwrap();
    let back = c.try_receive().unwrap().unwrap();
    assert_eq!(back.id, ids[1], "the requeued delivery comes first");
    assert!(back.redelivered);
    assert_eq!(back.delivery_count, 2);
    assert!(c.try_receive().unwrap().is_none());
    assert_eq!(c.unacked(), 2);
}

#[test]
fn a_blocked_receive_at_the_prefetch_limit_wakes_when_the_consumer_acks_from_another_thread() {
    let (store, _clock) = store_at(T0);
    let q = store.declare_queue("jobs").unwrap();
    let ids = publish_n(&q, 2);
    let c = q.consumer(ConsumerOptions::new().prefetch(1)).unwrap();
    let held = c.try_receive().unwrap().unwrap();
    assert_eq!(held.id, ids[0]);

    let (tx, rx) = mpsc::channel();
    thread::scope(|s| {
        let c = &c;
        s.spawn(move || {
            let start = Instant::now();
            let got = c.receive_timeout(Duration::from_secs(20)).unwrap();
            tx.send((got, start.elapsed())).unwrap();
        });
        // The receiver is at its limit: it must still be waiting, although a message is ready.
        assert!(
            rx.recv_timeout(Duration::from_millis(400)).is_err(),
            "a consumer at its prefetch limit received"
        );
        c.ack(held.id).unwrap();
        let (got, waited) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the blocked receive did not wake after the ack");
        let got = got.expect("woke with a message, not a timeout");
        assert_eq!(got.id, ids[1]);
        assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    });
    assert_eq!(c.unacked(), 1);
}

#[test]
fn ack_multiple_settles_exactly_this_consumers_deliveries_up_to_the_id() {
    let (store, _clock) = store_at(T0);
    let q = store.declare_queue("jobs").unwrap();
    let ids = publish_n(&q, 7);
    let a = q.consumer(ConsumerOptions::new()).unwrap();
    let b = q.consumer(ConsumerOptions::new()).unwrap();
    // a: 0, 1, 3, 4; b: 2; the Queue handle: 5.
    let a0 = a.try_receive().unwrap().unwrap();
    let a1 = a.try_receive().unwrap().unwrap();
    let b2 = b.try_receive().unwrap().unwrap();
    let a3 = a.try_receive().unwrap().unwrap();
    let a4 = a.try_receive().unwrap().unwrap();
    let q5 = q.try_receive().unwrap().unwrap();
    assert_eq!(
        [a0.id, a1.id, b2.id, a3.id, a4.id, q5.id],
        [ids[0], ids[1], ids[2], ids[3], ids[4], ids[5]]
    );

    assert_eq!(a.ack_multiple(a3.id).unwrap(), 3, "0, 1 and 3");
    assert_eq!(a.unacked(), 1, "4 is after the id");
    assert_eq!(b.unacked(), 1, "b's delivery 2 is not a's to ack");
    let stats = q.stats();
    assert_eq!((stats.acked, stats.unacked, stats.ready), (3, 3, 1));
    for id in [a0.id, a1.id, a3.id] {
        assert!(matches!(a.ack(id), Err(Error::AlreadySettled { .. })));
    }
    // What was not covered is still held by its owner and settles normally.
    b.ack(b2.id).unwrap();
    q.ack(q5.id).unwrap();

    // An id past everything covers all that is left; then nothing is left.
    assert_eq!(a.ack_multiple(MessageId(1_000)).unwrap(), 1);
    assert_eq!(a.ack_multiple(MessageId(1_000)).unwrap(), 0);
    assert_eq!(a.unacked(), 0);
    let stats = q.stats();
    assert_eq!((stats.acked, stats.unacked, stats.ready), (6, 0, 1));
    assert_eq!(q.try_receive().unwrap().unwrap().id, ids[6]);
}

#[test]
fn nack_multiple_with_requeue_returns_exactly_those_deliveries_redelivered() {
    let (store, _clock) = store_at(T0);
    let q = store.declare_queue("jobs").unwrap();
    let ids = publish_n(&q, 5);
    let a = q.consumer(ConsumerOptions::new()).unwrap();
    let b = q.consumer(ConsumerOptions::new()).unwrap();
    let got: Vec<MessageId> = (0..3)
        .map(|_| a.try_receive().unwrap().unwrap().id)
        .collect();
    assert_eq!(got, ids[..3]);
    assert_eq!(b.try_receive().unwrap().unwrap().id, ids[3]);

    assert_eq!(a.nack_multiple(ids[1], true).unwrap(), 2);
    assert_eq!(a.unacked(), 1);
    assert_eq!(b.unacked(), 1);
    let stats = q.stats();
    assert_eq!((stats.ready, stats.unacked, stats.rejected), (3, 2, 0));

    for (id, count) in [(ids[0], 2), (ids[1], 2), (ids[4], 1)] {
        let d = q.try_receive().unwrap().unwrap();
        assert_eq!(d.id, id);
        assert_eq!(d.delivery_count, count);
        assert_eq!(d.redelivered, count > 1);
    }
    assert!(q.try_receive().unwrap().is_none());
    // a still holds 2, b still holds 3.
    a.ack(ids[2]).unwrap();
    b.ack(ids[3]).unwrap();
}

#[test]
fn nack_multiple_without_requeue_rejects_exactly_those_deliveries() {
    let (store, _clock) = store_at(T0);
    let q = store
        .declare_queue_with("jobs", QueueOptions::new().dead_letter_queue("jobs.dead"))
        .unwrap();
    let dlq = store.queue("jobs.dead").unwrap();
    let ids = publish_n(&q, 4);
    let a = q.consumer(ConsumerOptions::new()).unwrap();
    let b = q.consumer(ConsumerOptions::new()).unwrap();
    for _ in 0..2 {
        a.try_receive().unwrap().unwrap();
    }
    let b2 = b.try_receive().unwrap().unwrap();
    let a3 = a.try_receive().unwrap().unwrap();
    assert_eq!((b2.id, a3.id), (ids[2], ids[3]));

    assert_eq!(a.nack_multiple(ids[3], false).unwrap(), 3);
    assert_eq!(a.unacked(), 0);
    assert_eq!(b.unacked(), 1, "b's delivery was not a's to reject");
    let stats = q.stats();
    assert_eq!(
        (stats.rejected, stats.dead_lettered, stats.unacked),
        (3, 3, 1)
    );
    for id in [ids[0], ids[1], ids[3]] {
        let d = dlq.try_receive().unwrap().unwrap();
        assert_eq!(d.id, id);
        let dl = d.dead_letter.expect("dead-letter information");
        assert_eq!(dl.reason, DeadLetterReason::Rejected);
        assert_eq!(&*dl.original_queue, "jobs");
    }
    assert!(dlq.try_receive().unwrap().is_none());
    b.ack(b2.id).unwrap();
}

#[test]
fn settling_another_consumers_delivery_is_wrong_consumer_and_changes_nothing() {
    let (store, _clock) = store_at(T0);
    let q = store.declare_queue("jobs").unwrap();
    publish_n(&q, 3);
    let a = q.consumer(ConsumerOptions::new()).unwrap();
    let b = q.consumer(ConsumerOptions::new()).unwrap();
    let da = a.try_receive().unwrap().unwrap();
    let dq = q.try_receive().unwrap().unwrap();

    let wrong = |r: walq::Result<()>| matches!(r, Err(Error::WrongConsumer { .. }));
    assert!(wrong(b.ack(da.id)));
    assert!(wrong(b.nack(da.id, true)));
    assert!(wrong(b.nack(da.id, false)));
    assert!(wrong(b.requeue_after(da.id, Duration::from_secs(1))));
    assert!(wrong(b.extend(da.id, Duration::from_secs(1))));
    // Through a Queue handle (the queue's own deliveries only).
    assert!(wrong(q.ack(da.id)));
    assert!(wrong(q.nack(da.id, true)));
    assert!(wrong(q.nack(da.id, false)));
    assert!(wrong(q.requeue_after(da.id, Duration::from_secs(1))));
    assert!(wrong(q.extend(da.id, Duration::from_secs(1))));
    // And a consumer may not settle what a Queue handle received.
    assert!(wrong(a.ack(dq.id)));
    assert!(wrong(b.nack(dq.id, false)));
    // ack_multiple of another's id covers only the caller's own deliveries: none.
    assert_eq!(b.ack_multiple(da.id).unwrap(), 0);
    assert_eq!(b.nack_multiple(dq.id, false).unwrap(), 0);

    let err = b.ack(da.id).unwrap_err();
    assert!(err.to_string().contains(&da.id.to_string()), "{err}");
    let stats = q.stats();
    assert_eq!(
        (stats.unacked, stats.acked, stats.rejected, stats.ready),
        (2, 0, 0, 1)
    );
    assert_eq!(a.unacked(), 1);
    // The owners still settle them.
    a.ack(da.id).unwrap();
    q.ack(dq.id).unwrap();
    // The store's own ack settles anyone's delivery.
    let db = b.try_receive().unwrap().unwrap();
    store.ack(db.id).unwrap();
    assert_eq!(b.unacked(), 0);
    assert_eq!(q.stats().acked, 3);
}

#[test]
fn closing_or_dropping_a_consumer_returns_its_unacked_deliveries_redelivered() {
    let (store, _clock) = store_at(T0);
    let q = store.declare_queue("jobs").unwrap();
    let ids = publish_n(&q, 4);

    let a = q.consumer(ConsumerOptions::new().prefetch(3)).unwrap();
    let a0 = a.try_receive().unwrap().unwrap();
    let a1 = a.try_receive().unwrap().unwrap();
    a.ack(a0.id).unwrap();
    a.close().unwrap();
    let stats = q.stats();
    assert_eq!((stats.unacked, stats.ready, stats.acked), (0, 3, 1));
    let back = q.try_receive().unwrap().unwrap();
    assert_eq!(back.id, a1.id, "the returned delivery is served first");
    assert!(back.redelivered);
    assert_eq!(back.delivery_count, 2);
    q.ack(back.id).unwrap();

    let b = q.consumer(ConsumerOptions::new()).unwrap();
    let b2 = b.try_receive().unwrap().unwrap();
    let b3 = b.try_receive().unwrap().unwrap();
    assert_eq!((b2.id, b3.id), (ids[2], ids[3]));
    b.nack(b3.id, true).unwrap(); // count 1 kept: its next delivery is the second
    let b3 = b.try_receive().unwrap().unwrap();
    assert_eq!(b3.delivery_count, 2);
    drop(b);
    assert_eq!(q.stats().unacked, 0);
    let c = q.consumer(ConsumerOptions::new()).unwrap();
    for (id, count) in [(ids[2], 2), (ids[3], 3)] {
        let d = c.try_receive().unwrap().unwrap();
        assert_eq!(d.id, id);
        assert!(d.redelivered);
        assert_eq!(d.delivery_count, count);
    }
    assert!(c.try_receive().unwrap().is_none());
}

#[test]
fn blocked_consumers_are_served_in_the_order_they_started_waiting() {
    let (store, _clock) = store_at(T0);
    let q = store.declare_queue("jobs").unwrap();
    let consumers: Vec<_> = (0..3)
        .map(|_| q.consumer(ConsumerOptions::new()).unwrap())
        .collect();
    let (tx, rx) = mpsc::channel();
    thread::scope(|s| {
        for (i, c) in consumers.iter().enumerate() {
            let tx = tx.clone();
            s.spawn(move || {
                let d = c.receive().unwrap();
                tx.send((i, d.id)).unwrap();
            });
            // Let this consumer block (and take its place in line) before the next starts.
            thread::sleep(Duration::from_millis(150));
        }
        // Nobody has anything yet, and try_receive does not jump the line.
        assert!(rx.try_recv().is_err());
        for k in 0..3 {
            let id = q.publish(format!("m{k}").as_bytes()).unwrap();
            let (who, got) = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a blocked consumer received the message");
            assert_eq!(got, id);
            assert_eq!(who, k, "message {k} went to consumer {who}");
        }
    });
    for c in &consumers {
        assert_eq!(c.unacked(), 1, "each consumer got exactly one message");
    }
    assert_eq!(q.stats().ready, 0);
}

#[test]
fn a_consumer_waiting_at_its_prefetch_limit_does_not_hold_up_others() {
    let (store, _clock) = store_at(T0);
    let q = store.declare_queue("jobs").unwrap();
    let first = q.publish(b"first").unwrap();
    let full = q.consumer(ConsumerOptions::new().prefetch(1)).unwrap();
    let held = full.try_receive().unwrap().unwrap();
    assert_eq!(held.id, first);
    let free = q.consumer(ConsumerOptions::new()).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::scope(|s| {
        let tx2 = tx.clone();
        let full = &full;
        s.spawn(move || {
            let got = full.receive_timeout(Duration::from_secs(20)).unwrap();
            tx2.send(("full", got.map(|d| d.id))).unwrap();
        });
        thread::sleep(Duration::from_millis(150));
        let free = &free;
        s.spawn(move || {
            let got = free.receive_timeout(Duration::from_secs(20)).unwrap();
            tx.send(("free", got.map(|d| d.id))).unwrap();
        });
        thread::sleep(Duration::from_millis(150));
        // The consumer at its limit waited first, but cannot take a message: the next one
        // in line gets it.
        let second = q.publish(b"second").unwrap();
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got, ("free", Some(second)));
        // With nobody else in line, a non-blocking receive is not held up either.
        let third = q.publish(b"third").unwrap();
        assert_eq!(q.try_receive().unwrap().map(|d| d.id), Some(third));
        // Once the full consumer acks, it takes the next message.
        full.ack(held.id).unwrap();
        let fourth = q.publish(b"fourth").unwrap();
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got, ("full", Some(fourth)));
    });
}

#[test]
fn a_consumers_deliveries_come_back_redelivered_after_a_process_crash() {
    let clock = ManualClock::new(T0);
    let vfs = SimVfs::new(1);
    let store = open(&vfs, &clock);
    let q = store.declare_queue("jobs").unwrap();
    let ids = publish_n(&q, 4);
    let c = q.consumer(ConsumerOptions::new().prefetch(3)).unwrap();
    let held: Vec<_> = (0..3).map(|_| c.try_receive().unwrap().unwrap()).collect();
    c.ack(held[1].id).unwrap();

    let crashed = vfs.crash(CrashMode::ProcessCrash, 1);
    drop(c);
    drop(q);
    drop(store);

    let store = open(&crashed, &clock);
    let q = store.queue("jobs").unwrap();
    assert_eq!(q.stats().unacked, 0, "nothing is in flight after an open");
    let c = q.consumer(ConsumerOptions::new()).unwrap();
    for (id, count) in [(ids[0], 2), (ids[2], 2), (ids[3], 1)] {
        let d = c.try_receive().unwrap().unwrap();
        assert_eq!(d.id, id);
        assert_eq!(d.delivery_count, count);
        assert_eq!(d.redelivered, count > 1);
        assert_eq!(d.payload, format!("m{}", id.0).as_bytes());
    }
    assert!(
        c.try_receive().unwrap().is_none(),
        "the acked message is gone"
    );
}

#[test]
fn a_consumers_deliveries_come_back_redelivered_after_a_power_loss_once_synced() {
    for seed in 0..8 {
        let clock = ManualClock::new(T0);
        let vfs = SimVfs::new(seed);
        let store = open(&vfs, &clock);
        let q = store.declare_queue("jobs").unwrap();
        let ids = publish_n(&q, 3);
        let c = q.consumer(ConsumerOptions::new()).unwrap();
        let d0 = c.try_receive().unwrap().unwrap();
        let d1 = c.try_receive().unwrap().unwrap();
        // The ack is durable under Always and its sync covers the Deliver records before it.
        c.ack(d1.id).unwrap();

        let crashed = vfs.crash(CrashMode::PowerLoss, seed);
        drop(c);
        drop(store);

        let store = open(&crashed, &clock);
        let q = store.queue("jobs").unwrap();
        let d = q.try_receive().unwrap().unwrap();
        assert_eq!(d.id, d0.id, "seed {seed}");
        assert!(d.redelivered, "seed {seed}");
        assert_eq!(d.delivery_count, 2, "seed {seed}");
        assert_eq!(q.try_receive().unwrap().unwrap().id, ids[2], "seed {seed}");
        assert!(q.try_receive().unwrap().is_none(), "seed {seed}");
    }
}
