//! Proves that delivery leases (the queue's ack timeout) work on a hand-driven clock: an
//! unsettled delivery goes back to the queue when its own lease runs out and no sooner, with
//! its delivery count kept; `extend` renews a lease; settling a delivery whose lease ran out
//! is a typed error that loses nothing; a lease that runs out at `max_deliveries`
//! dead-letters the message; and the counts of lease expiries survive crashes.

use std::time::Duration;

use walq::io::{CrashMode, SimVfs};
use walq::{ConsumerOptions, DeadLetterReason, Error, ManualClock, Queue, QueueOptions, Store};

mod common;

use common::semantics::{mem_store, open, secs, T0};

fn leased(store: &Store, timeout: Duration) -> Queue {
    store
        .declare_queue_with("jobs", QueueOptions::new().ack_timeout(timeout))
        .unwrap()
}

#[test]
fn an_expired_lease_returns_only_that_delivery_with_its_count_kept() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = leased(&store, secs(10));
    let ids: Vec<_> = (0..3u8).map(|i| q.publish(&[i]).unwrap()).collect();
    let c = q.consumer(ConsumerOptions::new()).unwrap();

    let first = c.try_receive().unwrap().unwrap(); // lease until T0 + 10 s
    clock.advance(secs(5));
    let second = c.try_receive().unwrap().unwrap(); // lease until T0 + 15 s
    assert_eq!((first.id, second.id), (ids[0], ids[1]));

    clock.advance(Duration::from_millis(4_999)); // T0 + 9.999 s: nothing is due
    let stats = q.stats();
    assert_eq!((stats.unacked, stats.ready), (2, 1));

    clock.advance(Duration::from_millis(2)); // T0 + 10.001 s: only the first lease is over
    let stats = q.stats();
    assert_eq!((stats.unacked, stats.ready), (1, 2));
    assert_eq!(c.unacked(), 1, "the expired delivery left the consumer");

    let again = q.try_receive().unwrap().unwrap();
    assert_eq!(again.id, ids[0], "the returned delivery is served first");
    assert!(again.redelivered);
    assert_eq!(again.delivery_count, 2);
    assert_eq!(again.payload, [0]);
    let next = q.try_receive().unwrap().unwrap();
    assert_eq!(
        next.id, ids[2],
        "the second delivery, still leased, stays out"
    );
    assert!(q.try_receive().unwrap().is_none());

    clock.advance(secs(5)); // T0 + 15.001 s: the second lease is over too
    let back = q.try_receive().unwrap().unwrap();
    assert_eq!(back.id, ids[1]);
    assert_eq!(back.delivery_count, 2);
    assert_eq!(c.unacked(), 0);
}

#[test]
fn extend_keeps_the_lease_past_its_original_deadline() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = leased(&store, secs(10));
    let id = q.publish(b"long job").unwrap();
    let c = q.consumer(ConsumerOptions::new()).unwrap();
    let d = c.try_receive().unwrap().unwrap();

    clock.advance(secs(8));
    c.extend(d.id, secs(10)).unwrap(); // now until T0 + 18 s
    clock.advance(secs(4)); // T0 + 12 s: past the original deadline
    assert!(q.try_receive().unwrap().is_none(), "no redelivery");
    let stats = q.stats();
    assert_eq!((stats.unacked, stats.ready), (1, 0));
    assert_eq!(c.unacked(), 1);

    clock.advance(Duration::from_millis(5_999)); // T0 + 17.999 s
    assert!(q.try_receive().unwrap().is_none());
    clock.advance(Duration::from_millis(2)); // past the extended deadline
    let back = q.try_receive().unwrap().unwrap();
    assert_eq!(back.id, id);
    assert!(back.redelivered);
    assert_eq!(back.delivery_count, 2);
    assert_eq!(c.unacked(), 0);
}

#[test]
fn extend_gives_a_lease_to_a_queue_without_an_ack_timeout() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store.declare_queue("plain").unwrap();
    let id = q.publish(b"x").unwrap();
    let d = q.try_receive().unwrap().unwrap();
    clock.advance(secs(3600));
    assert_eq!(q.stats().unacked, 1, "no ack timeout: stays out");
    q.extend(d.id, secs(5)).unwrap();
    clock.advance(secs(4));
    assert_eq!(q.stats().unacked, 1);
    clock.advance(secs(2));
    let back = q.try_receive().unwrap().unwrap();
    assert_eq!((back.id, back.delivery_count), (id, 2));
}

#[test]
fn settling_after_the_lease_expired_is_a_typed_error_and_the_message_is_not_lost() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = leased(&store, secs(1));
    let id = q.publish(b"slow").unwrap();
    let a = q.consumer(ConsumerOptions::new()).unwrap();
    let b = q.consumer(ConsumerOptions::new()).unwrap();

    let d = a.try_receive().unwrap().unwrap();
    clock.advance(secs(2));
    assert_eq!(q.stats().ready, 1, "the lease ran out");
    // Waiting in its queue again.
    assert!(matches!(a.ack(d.id), Err(Error::NotDelivered { .. })));
    assert!(matches!(
        a.nack(d.id, false),
        Err(Error::NotDelivered { .. })
    ));
    assert!(matches!(
        a.extend(d.id, secs(5)),
        Err(Error::NotDelivered { .. })
    ));
    assert_eq!(q.stats().ready, 1, "the failed ack did not take it");
    assert_eq!(q.stats().acked, 0);

    // Redelivered to another consumer: the old holder may not settle it.
    let d2 = b.try_receive().unwrap().unwrap();
    assert_eq!((d2.id, d2.delivery_count), (id, 2));
    assert!(matches!(a.ack(d.id), Err(Error::WrongConsumer { .. })));
    assert!(matches!(q.ack(d.id), Err(Error::WrongConsumer { .. })));
    assert_eq!(b.unacked(), 1);
    b.ack(d2.id).unwrap();
    assert_eq!(q.stats().acked, 1);

    // Through a Queue handle as well.
    let id = q.publish(b"queue handle").unwrap();
    let d = q.try_receive().unwrap().unwrap();
    clock.advance(secs(2));
    assert_eq!(q.stats().ready, 1, "the lease ran out");
    assert!(matches!(q.ack(d.id), Err(Error::NotDelivered { .. })));
    let d = q.try_receive().unwrap().unwrap();
    assert_eq!((d.id, d.delivery_count), (id, 2));
    q.ack(d.id).unwrap();
}

#[test]
fn acking_after_the_lease_ran_out_fails_even_when_nothing_else_touched_the_queue() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = leased(&store, secs(1));
    let id = q.publish(b"late").unwrap();
    let c = q.consumer(ConsumerOptions::new()).unwrap();
    let d = c.try_receive().unwrap().unwrap();
    clock.advance(secs(2));
    // The lease is over: the delivery is no longer this consumer's to ack, whether or not
    // some other operation happened to fire the queue's timers first.
    let result = c.ack(d.id);
    assert!(
        matches!(result, Err(Error::NotDelivered { .. })),
        "ack 1 s after the lease ran out: {result:?}"
    );
    let again = q.try_receive().unwrap().expect("the message is not lost");
    assert_eq!((again.id, again.delivery_count), (id, 2));
}

#[test]
fn extending_after_the_lease_ran_out_fails_even_when_nothing_else_touched_the_queue() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = leased(&store, secs(1));
    let id = q.publish(b"late").unwrap();
    let c = q.consumer(ConsumerOptions::new()).unwrap();
    let d = c.try_receive().unwrap().unwrap();
    clock.advance(secs(2));
    let result = c.extend(d.id, secs(60));
    assert!(
        matches!(result, Err(Error::NotDelivered { .. })),
        "extend 1 s after the lease ran out: {result:?}"
    );
    let again = q.try_receive().unwrap().expect("the lease is not revived");
    assert_eq!((again.id, again.delivery_count), (id, 2));
}

#[test]
fn settling_after_the_lease_dead_lettered_or_dropped_the_message_is_a_typed_error() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let to_dlq = store
        .declare_queue_with(
            "to-dlq",
            QueueOptions::new()
                .ack_timeout(secs(1))
                .max_deliveries(1)
                .dead_letter_queue("dead"),
        )
        .unwrap();
    let dropping = store
        .declare_queue_with(
            "dropping",
            QueueOptions::new().ack_timeout(secs(1)).max_deliveries(1),
        )
        .unwrap();
    let kept = to_dlq.publish(b"kept").unwrap();
    let lost = dropping.publish(b"dropped").unwrap();
    let c1 = to_dlq.consumer(ConsumerOptions::new()).unwrap();
    let c2 = dropping.consumer(ConsumerOptions::new()).unwrap();
    c1.try_receive().unwrap().unwrap();
    c2.try_receive().unwrap().unwrap();
    clock.advance(secs(2));
    assert_eq!(store.stats().unacked, 0, "every lease ran out");

    // Dead-lettered: it now waits in the dead-letter queue.
    let err = c1.ack(kept).unwrap_err();
    assert!(
        matches!(err, Error::NotDelivered { .. } | Error::WrongQueue { .. }),
        "{err:?}"
    );
    let dead = store.queue("dead").unwrap().try_receive().unwrap().unwrap();
    assert_eq!(dead.id, kept);
    assert_eq!(dead.payload, b"kept");
    // Dropped: it is gone for good, and says so.
    assert!(matches!(c2.ack(lost), Err(Error::AlreadySettled { .. })));
    assert_eq!(dropping.stats().dropped, 1);
}

#[test]
fn a_lease_running_out_at_max_deliveries_dead_letters_with_delivery_limit() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new()
                .ack_timeout(secs(1))
                .max_deliveries(2)
                .dead_letter_queue("jobs.dead"),
        )
        .unwrap();
    let id = q.publish(b"stuck").unwrap();
    let c = q.consumer(ConsumerOptions::new()).unwrap();
    assert_eq!(c.try_receive().unwrap().unwrap().delivery_count, 1);
    clock.advance(secs(2));
    assert_eq!(c.try_receive().unwrap().unwrap().delivery_count, 2);
    clock.advance(secs(2));

    let stats = q.stats();
    assert_eq!((stats.ready, stats.unacked, stats.dead_lettered), (0, 0, 1));
    assert_eq!((stats.rejected, stats.expired, stats.dropped), (0, 0, 0));
    assert_eq!(c.unacked(), 0);
    assert!(c.try_receive().unwrap().is_none());
    let dlq = store.queue("jobs.dead").unwrap();
    let d = dlq.try_receive().unwrap().unwrap();
    assert_eq!(d.id, id);
    assert_eq!(d.payload, b"stuck");
    assert_eq!(
        d.delivery_count, 1,
        "a fresh count in the dead-letter queue"
    );
    assert!(!d.redelivered);
    let dl = d.dead_letter.expect("dead-letter information");
    assert_eq!(dl.reason, DeadLetterReason::DeliveryLimit);
    assert_eq!(&*dl.original_queue, "jobs");
}

/// Two deliveries whose leases run out, then a crash of `mode`; the third delivery after
/// reopening has count 3 and, at `max_deliveries(3)`, its lease running out dead-letters it.
fn lease_counts_survive(mode: CrashMode, sync_first: bool, seed: u64) {
    let clock = ManualClock::new(T0);
    let vfs = SimVfs::new(seed);
    let store = open(&vfs, &clock);
    let q = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new()
                .ack_timeout(secs(1))
                .max_deliveries(3)
                .dead_letter_queue("jobs.dead"),
        )
        .unwrap();
    let id = q.publish(b"leased").unwrap();
    for count in 1..=2 {
        let d = q.try_receive().unwrap().unwrap();
        assert_eq!(d.delivery_count, count);
        clock.advance(secs(2));
        assert_eq!(q.stats().ready, 1, "the lease ran out");
    }
    if sync_first {
        store.sync().unwrap();
    }
    let crashed = vfs.crash(mode, seed);
    drop(q);
    drop(store);

    let store = open(&crashed, &clock);
    let q = store.queue("jobs").unwrap();
    let d = q.try_receive().unwrap().unwrap();
    assert_eq!(d.id, id, "{mode:?} seed {seed}");
    assert!(d.redelivered, "{mode:?} seed {seed}");
    assert_eq!(d.delivery_count, 3, "{mode:?} seed {seed}: count lost");
    clock.advance(secs(2));
    let stats = q.stats();
    assert_eq!(
        (stats.ready, stats.dead_lettered),
        (0, 1),
        "{mode:?} seed {seed}"
    );
    let dead = store
        .queue("jobs.dead")
        .unwrap()
        .try_receive()
        .unwrap()
        .unwrap();
    assert_eq!(dead.id, id);
    assert_eq!(
        dead.dead_letter.map(|dl| dl.reason),
        Some(DeadLetterReason::DeliveryLimit)
    );
}

#[test]
fn lease_expiry_delivery_counts_survive_a_process_crash() {
    lease_counts_survive(CrashMode::ProcessCrash, false, 3);
}

#[test]
fn lease_expiry_delivery_counts_survive_a_power_loss_after_sync() {
    for seed in 0..8 {
        lease_counts_survive(CrashMode::PowerLoss, true, seed);
    }
}
