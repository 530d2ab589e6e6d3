//! Proves the queue length limits: under drop-head a publish to a full queue succeeds and
//! pushes out the oldest waiting messages (dead-lettered with reason `Overflow`, or dropped
//! and counted), keeping the order of the rest; under reject-publish it fails with
//! `QueueFull` and writes nothing; delayed messages count, messages out with consumers do
//! not; a batch larger than the limit is refused whole; and concurrent publishers never take
//! a queue over its limit.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use walq::io::MemVfs;
use walq::{
    DeadLetterReason, Error, ManualClock, MessageId, Overflow, PublishOptions, Queue, QueueOptions,
    Store,
};

mod common;

use common::semantics::{dir, drain, options, T0};

/// A new store in memory on `clock`, with 1 MiB segments.
fn mem_store(clock: &ManualClock) -> Store {
    Store::open_with_vfs(
        Arc::new(MemVfs::new()),
        dir(),
        options(clock).segment_size(1 << 20),
    )
    .unwrap()
}

fn is_full(r: &walq::Result<impl std::fmt::Debug>, which: &str) -> bool {
    matches!(r, Err(Error::QueueFull { limit, .. }) if *limit == which)
}

#[test]
fn drop_head_dead_letters_the_oldest_waiting_messages_and_keeps_the_order() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new()
                .max_length(3)
                .dead_letter_queue("overflow"),
        )
        .unwrap();
    let ids: Vec<MessageId> = (0..5u8).map(|i| q.publish(&[i]).unwrap()).collect();
    let stats = q.stats();
    assert_eq!((stats.ready, stats.published), (3, 5));
    assert_eq!((stats.dead_lettered, stats.dropped), (2, 0));
    assert_eq!(drain(&q), ids[2..]);

    let dlq = store.queue("overflow").unwrap();
    for &id in &ids[..2] {
        let d = dlq.try_receive().unwrap().unwrap();
        assert_eq!(d.id, id);
        assert_eq!(d.payload, [id.0 as u8]);
        let dl = d.dead_letter.expect("dead-letter information");
        assert_eq!(dl.reason, DeadLetterReason::Overflow);
        assert_eq!(&*dl.original_queue, "jobs");
    }
    assert!(dlq.try_receive().unwrap().is_none());
}

#[test]
fn drop_head_without_a_dead_letter_queue_drops_and_counts() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store
        .declare_queue_with("jobs", QueueOptions::new().max_length(2))
        .unwrap();
    let ids: Vec<MessageId> = (0..5u8).map(|i| q.publish(&[i]).unwrap()).collect();
    let stats = q.stats();
    assert_eq!((stats.ready, stats.dropped, stats.dead_lettered), (2, 3, 0));
    assert_eq!(store.queue_names().len(), 1);
    assert_eq!(drain(&q), ids[3..]);
    assert!(matches!(q.ack(ids[0]), Err(Error::AlreadySettled { .. })));
}

#[test]
fn drop_head_takes_previously_delivered_messages_first_and_spares_those_out() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store
        .declare_queue_with("jobs", QueueOptions::new().max_length(2))
        .unwrap();
    let a = q.publish(b"a").unwrap();
    let b = q.publish(b"b").unwrap();
    // `a` is out: it does not count, so `c` fits.
    let out = q.try_receive().unwrap().unwrap();
    assert_eq!(out.id, a);
    let c = q.publish(b"c").unwrap();
    assert_eq!(q.stats().dropped, 0);
    // `a` comes back (a requeue is not a publish: three wait now). The next publish makes
    // room by pushing out the first ones in delivery order: the requeued `a`, then `b`.
    q.nack(a, true).unwrap();
    let d = q.publish(b"d").unwrap();
    let stats = q.stats();
    assert_eq!((stats.ready, stats.dropped), (2, 2));
    assert_eq!(drain(&q), [c, d]);
    for id in [a, b] {
        assert!(matches!(q.ack(id), Err(Error::AlreadySettled { .. })));
    }
}

#[test]
fn max_bytes_drop_head_keeps_the_waiting_bytes_under_the_limit() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new()
                .max_bytes(10)
                .dead_letter_queue("overflow"),
        )
        .unwrap();
    let ids: Vec<MessageId> = (0..4u8).map(|i| q.publish(&[i; 4]).unwrap()).collect();
    let stats = q.stats();
    assert_eq!((stats.ready, stats.bytes, stats.dead_lettered), (2, 8, 2));
    // A bigger message pushes out as many as needed.
    let big = q.publish(&[9; 9]).unwrap();
    let stats = q.stats();
    assert_eq!((stats.ready, stats.bytes, stats.dead_lettered), (1, 9, 4));
    assert_eq!(drain(&q), [big]);
    let dlq = store.queue("overflow").unwrap();
    assert_eq!(drain(&dlq), ids);
    // A message larger than max_bytes on its own cannot fit at all.
    let r = q.publish(&[0; 11]);
    assert!(is_full(&r, "max_bytes"), "{r:?}");
}

#[test]
fn reject_publish_fails_with_queue_full_and_writes_nothing() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new()
                .max_length(2)
                .overflow(Overflow::RejectPublish),
        )
        .unwrap();
    let first = q.publish(b"1").unwrap();
    q.publish(b"2").unwrap();
    let before = store.stats();
    let r = q.publish(b"3");
    assert!(is_full(&r, "max_length"), "{r:?}");
    let err = r.unwrap_err().to_string();
    assert!(err.contains("jobs") && err.contains("max_length"), "{err}");
    let r = q.publish_batch(&[b"3", b"4"]);
    assert!(is_full(&r, "max_length"), "{r:?}");
    let after = store.stats();
    assert_eq!(after.next_message_id, before.next_message_id, "no id used");
    assert_eq!(after.log_bytes, before.log_bytes, "nothing written");
    let stats = q.stats();
    assert_eq!((stats.ready, stats.published, stats.dropped), (2, 2, 0));

    // Once a consumer takes one, there is room again.
    let d = q.try_receive().unwrap().unwrap();
    assert_eq!(d.id, first);
    q.publish(b"3").unwrap();
    assert!(is_full(&q.publish(b"4"), "max_length"));
}

#[test]
fn reject_publish_on_max_bytes_fails_with_queue_full_and_writes_nothing() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new()
                .max_bytes(10)
                .overflow(Overflow::RejectPublish),
        )
        .unwrap();
    q.publish(&[1; 6]).unwrap();
    let before = store.stats();
    let r = q.publish(&[2; 5]);
    assert!(is_full(&r, "max_bytes"), "{r:?}");
    assert!(r.unwrap_err().to_string().contains("max_bytes"));
    let after = store.stats();
    assert_eq!(
        (after.next_message_id, after.log_bytes),
        (before.next_message_id, before.log_bytes)
    );
    q.publish(&[3; 4]).unwrap();
    assert_eq!(q.stats().bytes, 10);
}

#[test]
fn delayed_messages_count_toward_max_length() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let later = |s| PublishOptions::new().delay(Duration::from_secs(s));

    let strict = store
        .declare_queue_with(
            "strict",
            QueueOptions::new()
                .max_length(2)
                .overflow(Overflow::RejectPublish),
        )
        .unwrap();
    strict.publish_with(b"a", &later(10)).unwrap();
    strict.publish_with(b"b", &later(10)).unwrap();
    assert_eq!(strict.stats().delayed, 2);
    assert!(is_full(&strict.publish(b"c"), "max_length"));
    assert!(is_full(&strict.publish_with(b"c", &later(1)), "max_length"));

    let lossy = store
        .declare_queue_with(
            "lossy",
            QueueOptions::new()
                .max_length(2)
                .dead_letter_queue("overflow"),
        )
        .unwrap();
    let due_late = lossy.publish_with(b"late", &later(20)).unwrap();
    let due_soon = lossy.publish_with(b"soon", &later(10)).unwrap();
    let now = lossy.publish(b"now").unwrap();
    let stats = lossy.stats();
    assert_eq!((stats.ready, stats.delayed, stats.dead_lettered), (1, 1, 1));
    // With no ready message to push out, the delayed one due first went.
    let d = store
        .queue("overflow")
        .unwrap()
        .try_receive()
        .unwrap()
        .unwrap();
    assert_eq!(d.id, due_soon);
    assert_eq!(
        d.dead_letter.map(|dl| dl.reason),
        Some(DeadLetterReason::Overflow)
    );
    // A ready message is pushed out before a delayed one.
    let next = lossy.publish(b"next").unwrap();
    assert_eq!(lossy.stats().dead_lettered, 2);
    assert_eq!(drain(&lossy), [next]);
    clock.advance(Duration::from_secs(20));
    assert_eq!(drain(&lossy), [due_late]);
    // `due_soon` was received from the dead-letter queue above; `now` followed it there.
    assert_eq!(drain(&store.queue("overflow").unwrap()), [now]);
}

#[test]
fn a_batch_larger_than_max_length_is_refused_whole_even_under_drop_head() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new()
                .max_length(3)
                .dead_letter_queue("overflow"),
        )
        .unwrap();
    let kept: Vec<MessageId> = (0..2u8).map(|i| q.publish(&[i]).unwrap()).collect();
    let before = store.stats();
    let r = q.publish_batch(&[b"1", b"2", b"3", b"4"]);
    assert!(is_full(&r, "max_length"), "{r:?}");
    let after = store.stats();
    assert_eq!(
        (after.next_message_id, after.log_bytes),
        (before.next_message_id, before.log_bytes),
        "nothing written"
    );
    assert_eq!(
        q.stats().dead_lettered,
        0,
        "nothing pushed out for a refused batch"
    );
    assert_eq!(q.stats().ready, 2);

    // A batch of exactly max_length fits by pushing out everything else.
    let batch = q.publish_batch(&[b"x", b"y", b"z"]).unwrap();
    assert_eq!(q.stats().dead_lettered, 2);
    assert_eq!(drain(&q), batch);
    assert_eq!(drain(&store.queue("overflow").unwrap()), kept);
}

#[test]
fn a_dead_letter_queue_keeps_its_own_max_length() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    // The dead-letter queue is declared first, with its own limit (drop-head, no further
    // dead-letter queue: what it pushes out is dropped).
    let dlq = store
        .declare_queue_with("overflow", QueueOptions::new().max_length(2))
        .unwrap();
    let q = store
        .declare_queue_with("jobs", QueueOptions::new().dead_letter_queue("overflow"))
        .unwrap();
    let ids: Vec<MessageId> = (0..4u8).map(|i| q.publish(&[i]).unwrap()).collect();
    for _ in 0..4 {
        let d = q.try_receive().unwrap().unwrap();
        q.nack(d.id, false).unwrap();
    }
    let stats = dlq.stats();
    assert!(
        stats.ready <= 2,
        "the dead-letter queue holds {} waiting messages with max_length 2",
        stats.ready
    );
    assert_eq!(drain(&dlq), ids[2..]);
}

/// Four threads publish 50 messages each to a queue with `max_length(limit)`; a fifth
/// watches the waiting count. Returns (successes, QueueFull failures, max waiting seen).
fn concurrent_publish(q: &Queue, limit: u64) -> (usize, usize, u64) {
    let ok = AtomicUsize::new(0);
    let full = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let mut peak = 0;
    thread::scope(|s| {
        let publishers: Vec<_> = (0..4u8)
            .map(|t| {
                let (ok, full) = (&ok, &full);
                s.spawn(move || {
                    for i in 0..50u8 {
                        match q.publish(&[t, i]) {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(Error::QueueFull { .. }) => full.fetch_add(1, Ordering::Relaxed),
                            Err(e) => panic!("publish failed: {e}"),
                        };
                    }
                })
            })
            .collect();
        let watcher = s.spawn(|| {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                let stats = q.stats();
                peak = peak.max(stats.ready + stats.delayed);
                thread::yield_now();
            }
            peak
        });
        for p in publishers {
            p.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        peak = watcher.join().unwrap();
    });
    let stats = q.stats();
    assert!(
        stats.ready <= limit,
        "{} waiting, limit {limit}",
        stats.ready
    );
    (ok.into_inner(), full.into_inner(), peak.max(stats.ready))
}

#[test]
fn concurrent_publishers_never_take_a_drop_head_queue_over_max_length() {
    // Several rounds on fresh stores, with limits small enough that publishes overlap.
    for (round, limit) in [1u64, 2, 1, 3].repeat(4).into_iter().enumerate() {
        let clock = ManualClock::new(T0);
        let store = mem_store(&clock);
        let q = store
            .declare_queue_with(
                "jobs",
                QueueOptions::new()
                    .max_length(limit)
                    .dead_letter_queue("overflow"),
            )
            .unwrap();
        let (ok, full, peak) = concurrent_publish(&q, limit);
        assert!(
            peak <= limit,
            "round {round}: {peak} waiting, limit {limit}"
        );
        // Drop-head makes room: every publish succeeds (QueueFull is for reject-publish,
        // and for a batch that cannot fit at all).
        assert_eq!(
            (ok, full),
            (200, 0),
            "round {round}: drop-head refused {full} of 200 publishes with max_length {limit}"
        );
        let stats = q.stats();
        assert_eq!(stats.ready, limit, "round {round}");
        assert_eq!(
            stats.ready + stats.dead_lettered,
            200,
            "round {round}: lost"
        );
        assert_eq!(
            store.queue("overflow").unwrap().stats().ready,
            200 - limit,
            "round {round}"
        );
    }
}

#[test]
fn concurrent_publishers_never_take_a_reject_publish_queue_over_max_length() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new()
                .max_length(10)
                .overflow(Overflow::RejectPublish),
        )
        .unwrap();
    let (ok, full, peak) = concurrent_publish(&q, 10);
    assert!(peak <= 10, "the queue held {peak} waiting messages");
    assert!(ok <= 10, "{ok} publishes succeeded past max_length 10");
    // Nothing leaves the queue, so exactly the first ten fit.
    assert_eq!((ok, full), (10, 190));
    assert_eq!(q.stats().ready, 10);
    assert_eq!(
        store.stats().next_message_id,
        10,
        "refused publishes use no ids"
    );
}
