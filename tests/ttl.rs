//! Proves that time to live works on a hand-driven clock: an expired message is never
//! delivered wherever it sits in its queue; it is dead-lettered with reason `Expired` (or
//! dropped and counted without a dead-letter queue); the earlier of the message's and the
//! queue's TTL wins; a message out with a consumer does not expire until it comes back;
//! expiry is counted without any receive; and TTLs survive reopening and crashes.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use walq::io::{CrashMode, MemVfs, SimVfs};
use walq::{
    ConsumerOptions, DeadLetterReason, Error, ManualClock, MessageId, PublishOptions, QueueOptions,
    Store,
};

mod common;

use common::semantics::{dir, drain, mem_store, open, options, secs, T0};

fn ttl(d: Duration) -> PublishOptions {
    PublishOptions::new().ttl(d)
}

/// The dead-letter queue's messages: (id, reason, original queue), acked as they come.
fn dead_letters(queue: &walq::Queue) -> Vec<(MessageId, DeadLetterReason, String)> {
    let mut out = Vec::new();
    while let Some(d) = queue.try_receive().unwrap() {
        let dl = d.dead_letter.expect("dead-letter information");
        out.push((d.id, dl.reason, dl.original_queue.to_string()));
        queue.ack(d.id).unwrap();
    }
    out
}

#[test]
fn expired_messages_are_never_delivered_wherever_they_sit_in_the_queue() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store
        .declare_queue_with("jobs", QueueOptions::new().dead_letter_queue("dead"))
        .unwrap();
    let short = ttl(secs(1));
    let head = q.publish_with(b"head", &short).unwrap();
    let a = q.publish(b"a").unwrap();
    let middle = q.publish_with(b"middle", &short).unwrap();
    let b = q.publish_with(b"b", &ttl(secs(3600))).unwrap();
    let middle2 = q.publish_with(b"middle2", &short).unwrap();
    let c = q.publish(b"c").unwrap();
    let tail = q.publish_with(b"tail", &short).unwrap();

    clock.advance(Duration::from_millis(999));
    assert_eq!(q.stats().ready, 7, "nothing has expired yet");
    clock.advance(Duration::from_millis(2));
    assert_eq!(drain(&q), [a, b, c]);

    let stats = q.stats();
    assert_eq!(
        (stats.expired, stats.dead_lettered, stats.dropped),
        (4, 4, 0)
    );
    let dead = dead_letters(&store.queue("dead").unwrap());
    let expected: Vec<_> = [head, middle, middle2, tail]
        .into_iter()
        .map(|id| (id, DeadLetterReason::Expired, "jobs".to_owned()))
        .collect();
    assert_eq!(dead, expected);
}

#[test]
fn requeued_messages_that_expire_are_not_redelivered_either() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store.declare_queue("jobs").unwrap();
    let keep = q.publish(b"keep").unwrap();
    let doomed = q.publish_with(b"doomed", &ttl(secs(5))).unwrap();
    let later = q.publish(b"later").unwrap();
    // Both delivered and requeued: they wait among the previously-delivered messages.
    for _ in 0..2 {
        let d = q.try_receive().unwrap().unwrap();
        q.nack(d.id, true).unwrap();
    }
    clock.advance(secs(6));
    assert_eq!(drain(&q), [keep, later]);
    assert_eq!(q.stats().expired, 1);
    assert_eq!(q.stats().dropped, 1);
    assert!(
        matches!(q.ack(doomed), Err(Error::AlreadySettled { .. })),
        "the expired message was dropped for good"
    );
}

#[test]
fn expired_messages_are_dropped_and_counted_without_a_dead_letter_queue() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store
        .declare_queue_with("jobs", QueueOptions::new().message_ttl(secs(5)))
        .unwrap();
    for i in 0..3u8 {
        q.publish(&[i]).unwrap();
    }
    clock.advance(secs(5));
    let stats = q.stats();
    assert_eq!((stats.ready, stats.bytes), (0, 0));
    assert_eq!(
        (stats.expired, stats.dropped, stats.dead_lettered),
        (3, 3, 0)
    );
    assert!(q.try_receive().unwrap().is_none());
    assert_eq!(store.queue_names().len(), 1, "no queue appeared");
    assert_eq!(
        store.stats().tracked_messages,
        0,
        "dropped messages are forgotten"
    );
}

#[test]
fn the_earlier_of_message_ttl_and_queue_ttl_wins() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new()
                .message_ttl(secs(10))
                .dead_letter_queue("dead"),
        )
        .unwrap();
    let shorter = q.publish_with(b"5s", &ttl(secs(5))).unwrap();
    let longer = q.publish_with(b"60s", &ttl(secs(60))).unwrap();
    let at = q
        .publish_with(
            b"at 3s",
            &PublishOptions::new().expires_at(UNIX_EPOCH + Duration::from_millis(T0 + 3_000)),
        )
        .unwrap();
    let both = q
        .publish_with(
            b"8s and at 20s",
            &ttl(secs(8)).expires_at(UNIX_EPOCH + Duration::from_millis(T0 + 20_000)),
        )
        .unwrap();
    let plain = q.publish(b"queue ttl").unwrap();

    clock.advance(secs(6)); // past 3 s and 5 s
    let stats = q.stats();
    assert_eq!((stats.ready, stats.expired), (3, 2));
    // The deliveries report their expiry: the earliest applicable one.
    let mut expiries = Vec::new();
    let c = q.consumer(ConsumerOptions::new()).unwrap();
    while let Some(d) = c.try_receive().unwrap() {
        expiries.push((d.id, d.expires_at));
    }
    let ms = |m: u64| Some(UNIX_EPOCH + Duration::from_millis(m));
    assert_eq!(
        expiries,
        [
            (longer, ms(T0 + 10_000)),
            (both, ms(T0 + 8_000)),
            (plain, ms(T0 + 10_000)),
        ]
    );
    drop(c); // back to the queue, redelivered

    clock.advance(secs(2)); // T0 + 8 s
    assert_eq!(q.stats().expired, 3, "'both' went at 8 s");
    clock.advance(secs(2)); // T0 + 10 s: the queue TTL beats the 60 s message TTL
    let stats = q.stats();
    assert_eq!((stats.ready, stats.expired, stats.dead_lettered), (0, 5, 5));
    let mut dead: Vec<MessageId> = dead_letters(&store.queue("dead").unwrap())
        .into_iter()
        .map(|(id, reason, _)| {
            assert_eq!(reason, DeadLetterReason::Expired);
            id
        })
        .collect();
    dead.sort();
    assert_eq!(dead, [shorter, longer, at, both, plain]);
}

#[test]
fn a_message_out_with_a_consumer_does_not_expire_until_it_comes_back() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new()
                .message_ttl(secs(5))
                .dead_letter_queue("dead"),
        )
        .unwrap();
    let acked = q.publish(b"acked late").unwrap();
    let nacked = q.publish(b"nacked late").unwrap();
    let returned = q.publish(b"consumer dropped late").unwrap();
    let d1 = q.try_receive().unwrap().unwrap();
    let d2 = q.try_receive().unwrap().unwrap();
    let c = q.consumer(ConsumerOptions::new()).unwrap();
    let d3 = c.try_receive().unwrap().unwrap();
    assert_eq!((d1.id, d2.id, d3.id), (acked, nacked, returned));

    clock.advance(secs(60));
    let stats = q.stats();
    assert_eq!((stats.unacked, stats.expired), (3, 0), "out: not expired");
    // Acked after its expiry: acked, never expired.
    q.ack(acked).unwrap();
    // Coming back after its expiry: expired, not redelivered.
    q.nack(nacked, true).unwrap();
    drop(c);
    assert!(q.try_receive().unwrap().is_none());
    let stats = q.stats();
    assert_eq!(
        (stats.acked, stats.expired, stats.dead_lettered, stats.ready),
        (1, 2, 2, 0)
    );
    let dead = dead_letters(&store.queue("dead").unwrap());
    assert_eq!(
        dead,
        [
            (nacked, DeadLetterReason::Expired, "jobs".to_owned()),
            (returned, DeadLetterReason::Expired, "jobs".to_owned()),
        ]
    );
}

#[test]
fn a_message_whose_lease_runs_out_after_its_expiry_is_expired_not_redelivered() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new()
                .message_ttl(secs(5))
                .ack_timeout(secs(10))
                .dead_letter_queue("dead"),
        )
        .unwrap();
    let id = q.publish(b"x").unwrap();
    q.try_receive().unwrap().unwrap();
    clock.advance(secs(11)); // the expiry (5 s) and then the lease (10 s) are both past
    let again = q.try_receive().unwrap();
    assert!(
        again.is_none(),
        "an expired message was delivered: {:?}",
        again.map(|d| (d.id, d.expires_at))
    );
    let dead = dead_letters(&store.queue("dead").unwrap());
    assert_eq!(dead, [(id, DeadLetterReason::Expired, "jobs".to_owned())]);
}

#[test]
fn stats_reflect_expiry_without_any_receive() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new()
                .message_ttl(secs(5))
                .dead_letter_queue("dead"),
        )
        .unwrap();
    let other = store
        .declare_queue_with("other", QueueOptions::new().message_ttl(secs(5)))
        .unwrap();
    for i in 0..3u8 {
        q.publish(&[i; 10]).unwrap();
        other.publish(&[i]).unwrap();
    }
    let stats = q.stats();
    assert_eq!((stats.ready, stats.bytes, stats.expired), (3, 30, 0));

    clock.advance(secs(5));
    let stats = q.stats();
    assert_eq!((stats.ready, stats.bytes), (0, 0));
    assert_eq!(
        (stats.expired, stats.dead_lettered, stats.dropped),
        (3, 3, 0)
    );
    let dead = store.queue("dead").unwrap().stats();
    assert_eq!((dead.ready, dead.bytes), (3, 30));

    // Store::stats fires the timers of every queue.
    let all = store.stats();
    let other_stats = all.queues.iter().find(|s| &*s.name == "other").unwrap();
    assert_eq!(
        (other_stats.ready, other_stats.expired, other_stats.dropped),
        (0, 3, 3)
    );
    assert_eq!(all.ready, 3, "only the dead-letter queue holds messages");
}

/// Publishes with TTLs, crashes with `mode` (nothing expired yet), lets the clock pass the
/// expiry while the store is down, and reopens: the expired message is dead-lettered at open.
fn ttl_survives(mode: CrashMode, seed: u64) {
    let clock = ManualClock::new(T0);
    let vfs = SimVfs::new(seed);
    let store = open(&vfs, &clock);
    let q = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new()
                .message_ttl(secs(60))
                .dead_letter_queue("dead"),
        )
        .unwrap();
    let short = q.publish_with(b"short", &ttl(secs(5))).unwrap();
    let queue_ttl = q.publish(b"queue ttl").unwrap();
    let out = q.publish_with(b"out at crash", &ttl(secs(5))).unwrap();
    assert_eq!(q.try_receive().unwrap().unwrap().id, short);
    q.nack(short, true).unwrap();
    q.try_receive().unwrap().unwrap(); // `short` again
    let d = q.try_receive().unwrap().unwrap();
    assert_eq!(d.id, queue_ttl);
    q.nack(queue_ttl, true).unwrap();
    // `out` is delivered and in flight at the crash.
    let d = q.try_receive().unwrap().unwrap();
    assert_eq!(d.id, queue_ttl);
    let d = q.try_receive().unwrap().unwrap();
    assert_eq!(d.id, out);
    store.sync().unwrap();
    let crashed = vfs.crash(mode, seed);
    drop(q);
    drop(store);

    // 10 s later: the 5 s TTLs are over, the queue's 60 s TTL is not.
    clock.advance(secs(10));
    let store = open(&crashed, &clock);
    let q = store.queue("jobs").unwrap();
    let stats = q.stats();
    assert_eq!(
        (stats.ready, stats.expired, stats.dead_lettered),
        (1, 2, 2),
        "{mode:?} seed {seed}"
    );
    let d = q.try_receive().unwrap().unwrap();
    assert_eq!(d.id, queue_ttl, "{mode:?} seed {seed}");
    q.nack(d.id, true).unwrap();
    let mut dead = dead_letters(&store.queue("dead").unwrap());
    dead.sort_by_key(|(id, _, _)| *id);
    assert_eq!(
        dead,
        [
            (short, DeadLetterReason::Expired, "jobs".to_owned()),
            (out, DeadLetterReason::Expired, "jobs".to_owned()),
        ],
        "{mode:?} seed {seed}"
    );

    // Past the queue TTL while closed again (cleanly this time).
    store.close().unwrap();
    drop(q);
    drop(store);
    clock.advance(secs(60));
    let reopened = crashed.crash(CrashMode::PowerLoss, seed ^ 0x55);
    let store = open(&reopened, &clock);
    let q = store.queue("jobs").unwrap();
    assert!(q.try_receive().unwrap().is_none(), "{mode:?} seed {seed}");
    assert_eq!(q.stats().expired, 3, "{mode:?} seed {seed}");
    let dlq = store.queue("dead").unwrap();
    let d = dlq.try_receive().unwrap().unwrap();
    assert_eq!(d.id, queue_ttl, "{mode:?} seed {seed}");
    assert_eq!(
        d.dead_letter.map(|dl| dl.reason),
        Some(DeadLetterReason::Expired)
    );
    assert!(
        dlq.try_receive().unwrap().is_none(),
        "acked dead letters stay acked"
    );
}

#[test]
fn ttl_survives_a_process_crash_and_fires_at_open() {
    ttl_survives(CrashMode::ProcessCrash, 5);
}

#[test]
fn ttl_survives_a_power_loss_and_fires_at_open() {
    for seed in 0..6 {
        ttl_survives(CrashMode::PowerLoss, seed);
    }
}

#[test]
fn ttl_survives_a_clean_reopen_and_fires_at_open() {
    let clock = ManualClock::new(T0);
    let vfs = MemVfs::new();
    let store = Store::open_with_vfs(Arc::new(vfs.clone()), dir(), options(&clock)).unwrap();
    let q = store
        .declare_queue_with("jobs", QueueOptions::new().dead_letter_queue("dead"))
        .unwrap();
    let id = q.publish_with(b"short", &ttl(secs(5))).unwrap();
    let keep = q.publish(b"keep").unwrap();
    store.close().unwrap();
    drop(q);
    drop(store);

    clock.advance(secs(5));
    let store = Store::open_with_vfs(Arc::new(vfs), dir(), options(&clock)).unwrap();
    // Counted at open, before any operation.
    let all = store.stats();
    let jobs = all.queues.iter().find(|s| &*s.name == "jobs").unwrap();
    assert_eq!((jobs.ready, jobs.expired, jobs.dead_lettered), (1, 1, 1));
    assert_eq!(drain(&store.queue("jobs").unwrap()), [keep]);
    assert_eq!(
        dead_letters(&store.queue("dead").unwrap()),
        [(id, DeadLetterReason::Expired, "jobs".to_owned())]
    );
}
