//! Proves that delays hold messages back exactly until their time: a delayed publish and a
//! `requeue_after` are not delivered a millisecond early and are delivered once due (with the
//! right delivery count), both survive a process crash and a power loss, and a blocked
//! receive wakes by itself when a delayed message becomes due.

use std::sync::Arc;
use std::time::{Duration, Instant};

use walq::io::{CrashMode, MemVfs, SimVfs};
use walq::{ConsumerOptions, ManualClock, MessageId, PublishOptions, Queue, Store, StoreOptions};

mod common;

use common::semantics::{dir, mem_store, ms, open, T0};

fn delay(d: Duration) -> PublishOptions {
    PublishOptions::new().delay(d)
}

#[test]
fn a_delayed_publish_is_not_delivered_before_its_delay() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store.declare_queue("jobs").unwrap();
    let delayed = q.publish_with(b"later", &delay(ms(10_000))).unwrap();
    let now = q.publish(b"now").unwrap();

    let stats = q.stats();
    assert_eq!((stats.ready, stats.delayed, stats.bytes), (1, 1, 8));
    // The delayed message does not hold back the ones behind it.
    let d = q.try_receive().unwrap().unwrap();
    assert_eq!(d.id, now);
    q.ack(d.id).unwrap();
    assert!(q.try_receive().unwrap().is_none());

    clock.advance(ms(9_999));
    assert!(q.try_receive().unwrap().is_none(), "1 ms early");
    assert_eq!(q.stats().delayed, 1);
    clock.advance(ms(1));
    let stats = q.stats();
    assert_eq!((stats.ready, stats.delayed), (1, 0));
    let d = q.try_receive().unwrap().unwrap();
    assert_eq!(d.id, delayed);
    assert_eq!(d.payload, b"later");
    assert!(!d.redelivered);
    assert_eq!(d.delivery_count, 1);
    assert_eq!(
        d.published_at,
        std::time::UNIX_EPOCH + Duration::from_millis(T0),
        "published_at is the publish time, not the due time"
    );
}

#[test]
fn delayed_batch_messages_become_ready_together_in_order() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store.declare_queue("jobs").unwrap();
    let ids = q
        .publish_batch_with(&[b"a", b"b", b"c"], &delay(ms(500)))
        .unwrap();
    assert_eq!(q.stats().delayed, 3);
    assert!(q.try_receive().unwrap().is_none());
    clock.advance(ms(500));
    let got: Vec<MessageId> = (0..3)
        .map(|_| q.try_receive().unwrap().unwrap().id)
        .collect();
    assert_eq!(got, ids);
}

#[test]
fn requeue_after_holds_the_message_back_then_redelivers_it() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store.declare_queue("jobs").unwrap();
    let id = q.publish(b"retry me").unwrap();
    let other = q.publish(b"other").unwrap();

    let d = q.try_receive().unwrap().unwrap();
    q.requeue_after(d.id, ms(5_000)).unwrap();
    let stats = q.stats();
    assert_eq!((stats.ready, stats.delayed, stats.unacked), (1, 1, 0));
    assert_eq!(q.try_receive().unwrap().unwrap().id, other);
    assert!(q.try_receive().unwrap().is_none());
    clock.advance(ms(4_999));
    assert!(q.try_receive().unwrap().is_none(), "1 ms early");
    clock.advance(ms(1));
    let d = q.try_receive().unwrap().unwrap();
    assert_eq!(d.id, id);
    assert!(d.redelivered);
    assert_eq!(d.delivery_count, 2);

    // The same through a consumer, twice: each requeue counts.
    let c = q.consumer(ConsumerOptions::new().prefetch(1)).unwrap();
    q.nack(d.id, true).unwrap();
    let d = c.try_receive().unwrap().unwrap();
    assert_eq!(d.delivery_count, 3);
    c.requeue_after(d.id, ms(1_000)).unwrap();
    assert_eq!(c.unacked(), 0, "requeue_after settles the delivery");
    assert!(c.try_receive().unwrap().is_none());
    clock.advance(ms(1_000));
    let d = c.try_receive().unwrap().unwrap();
    assert_eq!((d.id, d.delivery_count), (id, 4));
}

/// A delayed publish (due at +30 s) and a `requeue_after` (due at +20 s), then a crash of
/// `mode`; after reopening both still wait for their time, then come with their counts.
fn delays_survive(mode: CrashMode, seed: u64) {
    let clock = ManualClock::new(T0);
    let vfs = SimVfs::new(seed);
    let store = open(&vfs, &clock);
    let q = store.declare_queue("jobs").unwrap();
    let delayed = q.publish_with(b"delayed", &delay(ms(30_000))).unwrap();
    let retried = q.publish(b"retried").unwrap();
    let d = q.try_receive().unwrap().unwrap();
    assert_eq!(d.id, retried);
    q.requeue_after(d.id, ms(20_000)).unwrap();
    let crashed = vfs.crash(mode, seed);
    drop(q);
    drop(store);

    clock.advance(ms(1_000)); // some time passes while down, not enough
    let store = open(&crashed, &clock);
    let q = store.queue("jobs").unwrap();
    let label = format!("{mode:?} seed {seed}");
    let stats = q.stats();
    assert_eq!((stats.ready, stats.delayed), (0, 2), "{label}");
    assert!(q.try_receive().unwrap().is_none(), "{label}");
    clock.advance(ms(18_999)); // T0 + 19.999 s
    assert!(
        q.try_receive().unwrap().is_none(),
        "{label}: requeue delay cut short"
    );
    clock.advance(ms(1)); // T0 + 20 s
    let d = q
        .try_receive()
        .unwrap()
        .expect("the requeued message is due");
    assert_eq!(d.id, retried, "{label}");
    assert_eq!(d.delivery_count, 2, "{label}");
    assert!(d.redelivered, "{label}");
    q.ack(d.id).unwrap();
    clock.advance(ms(9_999)); // T0 + 29.999 s
    assert!(
        q.try_receive().unwrap().is_none(),
        "{label}: publish delay cut short"
    );
    clock.advance(ms(1));
    let d = q
        .try_receive()
        .unwrap()
        .expect("the delayed message is due");
    assert_eq!((d.id, d.delivery_count), (delayed, 1), "{label}");
    assert_eq!(d.payload, b"delayed", "{label}");
}

#[test]
fn delays_survive_a_process_crash() {
    delays_survive(CrashMode::ProcessCrash, 9);
}

#[test]
fn delays_survive_a_power_loss_under_always() {
    for seed in 0..8 {
        delays_survive(CrashMode::PowerLoss, seed);
    }
}

#[test]
fn delays_that_ran_out_while_the_store_was_down_are_due_at_open() {
    for mode in [CrashMode::ProcessCrash, CrashMode::PowerLoss] {
        let clock = ManualClock::new(T0);
        let vfs = SimVfs::new(4);
        let store = open(&vfs, &clock);
        let q = store.declare_queue("jobs").unwrap();
        let delayed = q.publish_with(b"delayed", &delay(ms(30_000))).unwrap();
        let retried = q.publish(b"retried").unwrap();
        q.try_receive().unwrap().unwrap();
        q.requeue_after(retried, ms(20_000)).unwrap();
        let crashed = vfs.crash(mode, 4);
        drop(q);
        drop(store);

        clock.advance(ms(60_000));
        let store = open(&crashed, &clock);
        let q = store.queue("jobs").unwrap();
        assert_eq!(q.stats().ready, 2, "{mode:?}");
        let first = q.try_receive().unwrap().unwrap();
        assert_eq!((first.id, first.delivery_count), (retried, 2), "{mode:?}");
        let second = q.try_receive().unwrap().unwrap();
        assert_eq!((second.id, second.delivery_count), (delayed, 1), "{mode:?}");
    }
}

fn wait_for_delayed(q: &Queue, delay_ms: u64) {
    let start = Instant::now();
    let id = q.publish_with(b"soon", &delay(ms(delay_ms))).unwrap();
    assert!(q.try_receive().unwrap().is_none(), "not before its delay");
    let d = q
        .receive_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("the blocked receive woke for the delayed message");
    let waited = start.elapsed();
    assert_eq!(d.id, id);
    // Millisecond rounding of the clock allows it to be due up to 1 ms early.
    assert!(waited >= ms(delay_ms - 1), "delivered after {waited:?}");
    assert!(
        waited < Duration::from_secs(2),
        "woke only after {waited:?}"
    );
}

#[test]
fn a_blocked_receive_wakes_for_a_delayed_message_in_real_time() {
    let store = Store::open_with_vfs(
        Arc::new(MemVfs::new()),
        dir(),
        StoreOptions::new().segment_size(64 << 10),
    )
    .unwrap();
    let q = store.declare_queue("jobs").unwrap();
    wait_for_delayed(&q, 50);
    // Also for a consumer, and for a requeue_after.
    let c = q.consumer(ConsumerOptions::new()).unwrap();
    let id = q.publish(b"retry").unwrap();
    let d = c.try_receive().unwrap().unwrap();
    let start = Instant::now();
    c.requeue_after(d.id, ms(50)).unwrap();
    let d = c
        .receive_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("woke for the requeued message");
    assert_eq!((d.id, d.delivery_count), (id, 2));
    let waited = start.elapsed();
    assert!(
        waited >= ms(49) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}
