//! Proves that bad input to the delivery-semantics API fails with the documented typed error,
//! without panicking, overflowing or changing anything: out-of-range durations and times,
//! zero limits, unknown queues, dead-letter cycles, conflicting redeclarations and settling
//! another consumer's delivery. Each error's message names what was wrong.

use std::time::{Duration, UNIX_EPOCH};

use walq::io::MemVfs;
use walq::{ConsumerOptions, Error, ManualClock, Overflow, PublishOptions, QueueOptions, Store};

mod common;

use common::semantics::{open, store_at, T0};

/// Asserts `err` is `InvalidDuration` and its message names `what`.
#[track_caller]
fn invalid_duration(err: Error, what: &str) {
    let text = err.to_string();
    assert!(matches!(err, Error::InvalidDuration { .. }), "{err:?}");
    assert!(text.contains(what), "{text:?} does not name {what:?}");
}

/// Asserts `err` is `InvalidOptions` and its message names `what`.
#[track_caller]
fn invalid_options(err: Error, what: &str) {
    let text = err.to_string();
    assert!(matches!(err, Error::InvalidOptions(_)), "{err:?}");
    assert!(text.contains(what), "{text:?} does not name {what:?}");
}

/// (next message id, log bytes): both unchanged when nothing was written.
fn written(store: &Store) -> (u64, u64) {
    let stats = store.stats();
    (stats.next_message_id, stats.log_bytes)
}

#[test]
fn duration_max_is_invalid_duration_in_every_option() {
    let (store, clock) = store_at(T0);
    let before = (written(&store), store.queue_names());
    let err = store
        .declare_queue_with("a", QueueOptions::new().ack_timeout(Duration::MAX))
        .unwrap_err();
    invalid_duration(err, "ack timeout");
    let err = store
        .declare_queue_with("b", QueueOptions::new().message_ttl(Duration::MAX))
        .unwrap_err();
    invalid_duration(err, "TTL");
    assert_eq!(
        (written(&store), store.queue_names()),
        before,
        "nothing declared"
    );

    let q = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new().ack_timeout(Duration::from_secs(10)),
        )
        .unwrap();
    let before = written(&store);
    let max = Duration::MAX;
    invalid_duration(
        q.publish_with(b"x", &PublishOptions::new().ttl(max))
            .unwrap_err(),
        "TTL",
    );
    invalid_duration(
        q.publish_with(b"x", &PublishOptions::new().delay(max))
            .unwrap_err(),
        "delay",
    );
    invalid_duration(
        q.publish_batch_with(&[b"x", b"y"], &PublishOptions::new().ttl(max))
            .unwrap_err(),
        "TTL",
    );
    assert_eq!(written(&store), before, "nothing published");

    let id = q.publish(b"work").unwrap();
    let d = q.try_receive().unwrap().unwrap();
    invalid_duration(q.requeue_after(d.id, max).unwrap_err(), "requeue delay");
    invalid_duration(q.extend(d.id, max).unwrap_err(), "lease");
    assert_eq!(q.stats().unacked, 1, "still delivered");
    // The lease was not changed by the failed extend: it runs out after 10 s.
    clock.advance(Duration::from_secs(11));
    let again = q.try_receive().unwrap().unwrap();
    assert_eq!((again.id, again.delivery_count), (id, 2));

    let c = q.consumer(ConsumerOptions::new()).unwrap();
    q.nack(again.id, true).unwrap();
    let d = c.try_receive().unwrap().unwrap();
    invalid_duration(c.requeue_after(d.id, max).unwrap_err(), "requeue delay");
    invalid_duration(c.extend(d.id, max).unwrap_err(), "lease");
    c.ack(d.id).unwrap();
    // A receive timeout of Duration::MAX just means "wait as long as it takes".
    q.publish(b"ready").unwrap();
    assert!(q.receive_timeout(Duration::MAX).unwrap().is_some());
}

#[test]
fn durations_that_end_past_the_end_of_time_are_invalid_not_overflows() {
    // A clock a second before u64::MAX milliseconds.
    let (store, _clock) = store_at(u64::MAX - 1_000);
    let q = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new()
                .ack_timeout(Duration::from_secs(3600))
                .message_ttl(Duration::from_secs(3600)),
        )
        .unwrap();
    let hour = Duration::from_secs(3600);
    let before = written(&store);
    invalid_duration(
        q.publish_with(b"x", &PublishOptions::new().ttl(hour))
            .unwrap_err(),
        "TTL",
    );
    invalid_duration(
        q.publish_with(b"x", &PublishOptions::new().delay(hour))
            .unwrap_err(),
        "delay",
    );
    assert_eq!(written(&store), before);
    // The queue's own TTL and lease saturate instead of failing the publish or receive.
    let id = q.publish(b"x").unwrap();
    let d = q.try_receive().unwrap().unwrap();
    assert_eq!(d.id, id);
    invalid_duration(q.requeue_after(d.id, hour).unwrap_err(), "requeue delay");
    invalid_duration(q.extend(d.id, hour).unwrap_err(), "lease");
    q.ack(d.id).unwrap();
}

#[test]
fn zero_ack_timeout_and_zero_ttl_are_invalid_durations() {
    let (store, _clock) = store_at(T0);
    let err = store
        .declare_queue_with("a", QueueOptions::new().ack_timeout(Duration::ZERO))
        .unwrap_err();
    assert!(err.to_string().contains("zero"), "{err}");
    invalid_duration(err, "ack timeout");
    let err = store
        .declare_queue_with("b", QueueOptions::new().message_ttl(Duration::ZERO))
        .unwrap_err();
    assert!(err.to_string().contains("zero"), "{err}");
    invalid_duration(err, "TTL");
    assert!(store.queue_names().is_empty());
}

#[test]
fn zero_limits_are_invalid_options() {
    let (store, _clock) = store_at(T0);
    for (options, what) in [
        (QueueOptions::new().max_deliveries(0), "max_deliveries"),
        (QueueOptions::new().max_length(0), "max_length"),
        (QueueOptions::new().max_bytes(0), "max_bytes"),
        (
            QueueOptions::new()
                .max_length(0)
                .overflow(Overflow::RejectPublish),
            "max_length",
        ),
    ] {
        let err = store.declare_queue_with("jobs", options).unwrap_err();
        invalid_options(err, what);
    }
    // An invalid option with a new dead-letter queue declares neither.
    let err = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new().max_length(0).dead_letter_queue("dlq"),
        )
        .unwrap_err();
    invalid_options(err, "max_length");
    assert!(store.queue_names().is_empty());

    let q = store.declare_queue("jobs").unwrap();
    let err = q.consumer(ConsumerOptions::new().prefetch(0)).unwrap_err();
    invalid_options(err, "prefetch");
}

#[test]
fn unknown_queues_are_queue_not_found() {
    let (store, _clock) = store_at(T0);
    for err in [
        store.queue("nope").unwrap_err(),
        store.redrive("nope").unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(
            matches!(err, Error::QueueNotFound { ref name } if name == "nope"),
            "{err:?}"
        );
        assert!(text.contains("\"nope\""), "{text}");
    }
    assert!(
        store.queue_names().is_empty(),
        "looking a queue up does not declare it"
    );
}

#[test]
fn a_queue_naming_itself_as_dead_letter_queue_is_a_cycle() {
    let (store, _clock) = store_at(T0);
    let err = store
        .declare_queue_with("loop", QueueOptions::new().dead_letter_queue("loop"))
        .unwrap_err();
    assert!(err.to_string().contains("\"loop\""), "{err}");
    assert!(matches!(err, Error::DeadLetterCycle { ref queue } if queue == "loop"));
    assert!(store.queue_names().is_empty());

    // Also for an existing queue.
    store.declare_queue("loop").unwrap();
    let err = store
        .declare_queue_with("loop", QueueOptions::new().dead_letter_queue("loop"))
        .unwrap_err();
    assert!(matches!(err, Error::DeadLetterCycle { .. }), "{err:?}");

    // Through another queue: `b` already exists (declared as a's dead-letter queue), so
    // giving it `a` as its own dead-letter queue is refused one way or the other.
    store
        .declare_queue_with("a", QueueOptions::new().dead_letter_queue("b"))
        .unwrap();
    let err = store
        .declare_queue_with("b", QueueOptions::new().dead_letter_queue("a"))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::DeadLetterCycle { .. } | Error::QueueConfigMismatch { .. }
        ),
        "{err:?}"
    );
    let b = store.queue("b").unwrap();
    b.publish(b"x").unwrap();
    let d = b.try_receive().unwrap().unwrap();
    b.nack(d.id, false).unwrap();
    assert_eq!(b.stats().dropped, 1, "b still has no dead-letter queue");
}

#[test]
fn redeclaring_with_other_options_is_a_mismatch_and_with_the_same_options_is_ok() {
    let vfs = MemVfs::new();
    let clock = ManualClock::new(T0);
    let full = QueueOptions::new()
        .ack_timeout(Duration::from_secs(30))
        .message_ttl(Duration::from_secs(600))
        .max_deliveries(5)
        .dead_letter_queue("jobs.dead")
        .max_length(100)
        .max_bytes(1 << 20)
        .overflow(Overflow::RejectPublish);
    {
        let store = open(&vfs, &clock);
        let q = store.declare_queue_with("jobs", full.clone()).unwrap();
        let again = store.declare_queue_with("jobs", full.clone()).unwrap();
        assert_eq!(again.name(), q.name());
        // declare_queue opens an existing queue whatever its options.
        store.declare_queue("jobs").unwrap();
        store.declare_queue("other").unwrap();
        store.close().unwrap();
    }
    // The options are stored with the declaration: the same check after reopening.
    let store = open(&vfs, &clock);
    store.declare_queue_with("jobs", full.clone()).unwrap();
    let log = written(&store);
    for other in [
        QueueOptions::new(),
        full.clone().ack_timeout(Duration::from_secs(31)),
        full.clone().message_ttl(Duration::from_secs(601)),
        full.clone().max_deliveries(6),
        full.clone().dead_letter_queue("other"),
        full.clone().max_length(101),
        full.clone().max_bytes(1 << 21),
        full.clone().overflow(Overflow::DropHead),
    ] {
        let err = store.declare_queue_with("jobs", other.clone()).unwrap_err();
        assert!(err.to_string().contains("\"jobs\""), "{err}");
        assert!(
            matches!(err, Error::QueueConfigMismatch { ref queue } if queue == "jobs"),
            "{other:?}: {err:?}"
        );
    }
    assert_eq!(
        written(&store),
        log,
        "a refused declaration wrote to the log"
    );
}

#[test]
fn a_refused_redeclaration_does_not_declare_the_dead_letter_queue_it_names() {
    let (store, _clock) = store_at(T0);
    store.declare_queue("jobs").unwrap();
    let names = store.queue_names();
    let log = written(&store);
    let err = store
        .declare_queue_with("jobs", QueueOptions::new().dead_letter_queue("elsewhere"))
        .unwrap_err();
    assert!(matches!(err, Error::QueueConfigMismatch { .. }), "{err:?}");
    assert_eq!(
        store.queue_names(),
        names,
        "the refused declaration declared its dead-letter queue"
    );
    assert!(matches!(
        store.queue("elsewhere"),
        Err(Error::QueueNotFound { .. })
    ));
    assert_eq!(
        written(&store),
        log,
        "the refused declaration wrote to the log"
    );
}

#[test]
fn settling_another_consumers_delivery_is_wrong_consumer() {
    let (store, _clock) = store_at(T0);
    let q = store.declare_queue("jobs").unwrap();
    q.publish(b"x").unwrap();
    let a = q.consumer(ConsumerOptions::new()).unwrap();
    let b = q.consumer(ConsumerOptions::new()).unwrap();
    let d = a.try_receive().unwrap().unwrap();
    let err = b.ack(d.id).unwrap_err();
    assert!(
        matches!(err, Error::WrongConsumer { id } if id == d.id),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&d.id.to_string()) && text.contains("consumer"),
        "{text}"
    );
    assert!(matches!(q.ack(d.id), Err(Error::WrongConsumer { .. })));
    a.ack(d.id).unwrap();
}

#[test]
fn an_expiry_time_before_1970_is_an_invalid_duration() {
    let (store, _clock) = store_at(T0);
    let q = store.declare_queue("jobs").unwrap();
    let before = written(&store);
    let at = UNIX_EPOCH - Duration::from_secs(1);
    let err = q
        .publish_with(b"x", &PublishOptions::new().expires_at(at))
        .unwrap_err();
    assert!(err.to_string().contains("1970"), "{err}");
    invalid_duration(err, "expiry time");
    assert_eq!(written(&store), before, "nothing published");
    // The epoch itself is a valid (long past) expiry: published, and expired at once.
    q.publish_with(b"x", &PublishOptions::new().expires_at(UNIX_EPOCH))
        .unwrap();
    assert!(q.try_receive().unwrap().is_none());
    assert_eq!(q.stats().expired, 1);
}
