//! Proves that a state change producing more records than one segment holds (a mass expiry
//! firing at open) is written in several groups instead of failing and blocking every later
//! open, and that a blocked receiver does not spin on an expired message out with a consumer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use walq::{ManualClock, QueueOptions, Store, StoreOptions};

#[test]
fn mass_expiry_larger_than_a_segment_does_not_block_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let options = || {
        StoreOptions::new()
            .segment_size(64 << 10)
            .clock(Arc::new(clock.clone()))
    };
    {
        let store = Store::open(dir.path(), options()).unwrap();
        let q = store
            .declare_queue_with("q", QueueOptions::new().message_ttl(Duration::from_secs(1)))
            .unwrap();
        for _ in 0..30 {
            q.publish_batch(&[b"x"; 100]).unwrap();
        }
        store.close().unwrap();
    }
    clock.advance(Duration::from_secs(2));
    let store = Store::open(dir.path(), options()).expect("open after 3000 expiries");
    let stats = store.queue("q").unwrap().stats();
    assert_eq!((stats.expired, stats.dropped, stats.ready), (3000, 3000, 0));
    drop(store);
    // The expiries were recorded: the next open finds nothing left to expire.
    let store = Store::open(dir.path(), options()).expect("reopen");
    assert_eq!(store.queue("q").unwrap().stats().expired, 3000);
    assert_eq!(store.stats().ready, 0);
}

#[test]
fn an_expired_message_out_with_a_consumer_does_not_make_receivers_spin() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let store = Store::open(
        dir.path(),
        StoreOptions::new().clock(Arc::new(clock.clone())),
    )
    .unwrap();
    let q = store
        .declare_queue_with("q", QueueOptions::new().message_ttl(Duration::from_secs(1)))
        .unwrap();
    q.publish(b"held").unwrap();
    let held = q.try_receive().unwrap().expect("ready");
    clock.advance(Duration::from_secs(5));
    // Nothing is ready; the held message's expiry is due. A receiver waiting 300 ms must
    // sleep, not wake every millisecond: count this thread's voluntary context switches
    // (one per sleep) around the wait.
    let before = voluntary_switches();
    let start = Instant::now();
    let got = q.receive_timeout(Duration::from_millis(300)).unwrap();
    assert!(got.is_none());
    assert!(start.elapsed() >= Duration::from_millis(290));
    let switches = voluntary_switches() - before;
    assert!(
        switches < 30,
        "the receiver woke {switches} times in 300 ms"
    );
    // Once it comes back it expires instead of being delivered.
    q.nack(held.id, true).unwrap();
    assert!(q.try_receive().unwrap().is_none());
    assert_eq!(q.stats().expired, 1);
}

/// This thread's voluntary context switches, from `/proc/thread-self/status` (Linux).
fn voluntary_switches() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}
