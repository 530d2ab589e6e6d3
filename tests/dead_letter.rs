//! Proves dead-lettering end to end: a poison message that is nacked every time, or that
//! crashes its worker every time, ends in the dead-letter queue after `max_deliveries`
//! deliveries (same id and payload, reason `DeliveryLimit`, original queue named); a rejected
//! message is dead-lettered with reason `Rejected`, or dropped and counted without a
//! dead-letter queue; `redrive` sends dead letters back to their queue with a fresh count and
//! leaves the rest; and all of it survives process crashes and power losses.

use walq::io::{CrashMode, SimVfs};
use walq::{
    ConsumerOptions, DeadLetterReason, Delivery, Error, ManualClock, MessageId, Queue,
    QueueOptions, Store,
};

mod common;

use common::semantics::{mem_store, open, T0};

fn jobs_with_limit(store: &Store, limit: u32) -> Queue {
    store
        .declare_queue_with(
            "jobs",
            QueueOptions::new()
                .max_deliveries(limit)
                .dead_letter_queue("jobs.dead"),
        )
        .unwrap()
}

/// Why and from where a delivery was dead-lettered, if it was.
type Origin = Option<(DeadLetterReason, String)>;

fn reason_of(d: &Delivery) -> Origin {
    d.dead_letter
        .as_ref()
        .map(|dl| (dl.reason, dl.original_queue.to_string()))
}

#[test]
fn a_poison_message_nacked_every_time_is_dead_lettered_after_max_deliveries() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = jobs_with_limit(&store, 3);
    let poison = q.publish(b"poison").unwrap();
    let good = q.publish(b"good").unwrap();

    let mut poison_counts = Vec::new();
    let mut published_at = None;
    while let Some(d) = q.try_receive().unwrap() {
        if d.id == poison {
            poison_counts.push(d.delivery_count);
            published_at = Some(d.published_at);
            q.nack(d.id, true).unwrap();
        } else {
            assert_eq!(d.id, good);
            q.ack(d.id).unwrap();
        }
    }
    assert_eq!(
        poison_counts,
        [1, 2, 3],
        "delivered exactly max_deliveries times"
    );
    let stats = q.stats();
    assert_eq!((stats.ready, stats.unacked, stats.acked), (0, 0, 1));
    assert_eq!(
        (stats.dead_lettered, stats.rejected, stats.dropped),
        (1, 0, 0)
    );
    assert!(matches!(q.ack(poison), Err(Error::NotDelivered { .. })));

    let dlq = store.queue("jobs.dead").unwrap();
    let d = dlq.try_receive().unwrap().unwrap();
    assert_eq!(d.id, poison, "same MessageId");
    assert_eq!(d.payload, b"poison");
    assert_eq!(&*d.queue, "jobs.dead");
    assert_eq!(Some(d.published_at), published_at);
    assert_eq!(
        d.delivery_count, 1,
        "a fresh count in the dead-letter queue"
    );
    assert!(!d.redelivered);
    assert_eq!(
        reason_of(&d),
        Some((DeadLetterReason::DeliveryLimit, "jobs".to_owned()))
    );
    assert!(dlq.try_receive().unwrap().is_none());
}

/// Receives the poison message and crashes the worker (`mode`), three times; `max_deliveries`
/// is 3. Deliver records are persisted (the default); under power loss the receive is synced
/// first, as the guarantee only covers synced Deliver records then.
///
/// `StoreOptions::persist_deliveries` documents that "a poison message that kills its
/// worker every time still reaches `max_deliveries` and is dead-lettered", and
/// `QueueOptions::max_deliveries` that a message that comes back after that many deliveries
/// is dead-lettered instead. A delivery out at a crash comes back at the next open, so that
/// open must dead-letter it: it is never delivered from `jobs` a fourth time.
fn crash_looping_poison(mode: CrashMode, seed: u64) {
    let clock = ManualClock::new(T0);
    let mut disk = SimVfs::new(seed);
    let poison = {
        let store = open(&disk, &clock);
        let q = jobs_with_limit(&store, 3);
        q.publish(b"poison").unwrap()
    };
    let label = format!("{mode:?} seed {seed}");
    for attempt in 1..=3u32 {
        let store = open(&disk, &clock);
        let q = store.queue("jobs").unwrap();
        let d = q.try_receive().unwrap().expect("the poison message");
        assert_eq!(d.id, poison, "{label}");
        assert_eq!(
            d.delivery_count, attempt,
            "{label}: count after the crashes"
        );
        assert_eq!(d.redelivered, attempt > 1, "{label}");
        if mode == CrashMode::PowerLoss {
            store.sync().unwrap();
        }
        disk = disk.crash(mode, seed + u64::from(attempt));
    }
    let store = open(&disk, &clock);
    let q = store.queue("jobs").unwrap();
    let fourth = q.try_receive().unwrap();
    assert!(
        fourth.is_none(),
        "{label}: delivered a fourth time with max_deliveries(3): count {:?}",
        fourth.map(|d| d.delivery_count)
    );
    assert_eq!(q.stats().dead_lettered, 1, "{label}");
    let d = store
        .queue("jobs.dead")
        .unwrap()
        .try_receive()
        .unwrap()
        .expect("the poison message is in the dead-letter queue");
    assert_eq!(
        (d.id, d.payload.as_slice()),
        (poison, &b"poison"[..]),
        "{label}"
    );
    assert_eq!(
        reason_of(&d),
        Some((DeadLetterReason::DeliveryLimit, "jobs".to_owned())),
        "{label}"
    );
}

#[test]
fn a_poison_message_that_crashes_its_worker_is_dead_lettered_after_max_deliveries() {
    crash_looping_poison(CrashMode::ProcessCrash, 21);
}

#[test]
fn a_poison_message_that_cuts_the_power_is_dead_lettered_after_max_deliveries() {
    crash_looping_poison(CrashMode::PowerLoss, 22);
}

#[test]
fn a_crash_looping_poison_message_reaches_the_dead_letter_queue_at_all() {
    // The weakest form of the guarantee: however the limit is enforced, ten crash cycles
    // with max_deliveries(3) must not keep the message cycling forever.
    let clock = ManualClock::new(T0);
    let mut disk = SimVfs::new(24);
    let poison = {
        let store = open(&disk, &clock);
        jobs_with_limit(&store, 3).publish(b"poison").unwrap()
    };
    let mut counts = Vec::new();
    for cycle in 0..10 {
        let store = open(&disk, &clock);
        match store.queue("jobs").unwrap().try_receive().unwrap() {
            Some(d) => counts.push(d.delivery_count),
            None => break,
        }
        disk = disk.crash(CrashMode::ProcessCrash, cycle);
    }
    let store = open(&disk, &clock);
    let dead = store.queue("jobs.dead").unwrap().try_receive().unwrap();
    assert_eq!(
        dead.map(|d| d.id),
        Some(poison),
        "never dead-lettered; delivery counts seen: {counts:?}"
    );
}

#[test]
fn deliveries_before_crashes_count_toward_max_deliveries_when_the_worker_then_nacks() {
    let clock = ManualClock::new(T0);
    let mut disk = SimVfs::new(23);
    let poison = {
        let store = open(&disk, &clock);
        jobs_with_limit(&store, 3).publish(b"poison").unwrap()
    };
    for attempt in 1..=2u32 {
        let store = open(&disk, &clock);
        let d = store.queue("jobs").unwrap().try_receive().unwrap().unwrap();
        assert_eq!((d.id, d.delivery_count), (poison, attempt));
        disk = disk.crash(CrashMode::ProcessCrash, u64::from(attempt));
    }
    let store = open(&disk, &clock);
    let q = store.queue("jobs").unwrap();
    let d = q.try_receive().unwrap().unwrap();
    assert_eq!(d.delivery_count, 3);
    q.nack(d.id, true).unwrap();
    assert!(
        q.try_receive().unwrap().is_none(),
        "the third failure dead-letters it"
    );
    let d = store
        .queue("jobs.dead")
        .unwrap()
        .try_receive()
        .unwrap()
        .unwrap();
    assert_eq!(d.id, poison);
    assert_eq!(
        reason_of(&d),
        Some((DeadLetterReason::DeliveryLimit, "jobs".to_owned()))
    );
}

#[test]
fn a_rejected_message_is_dead_lettered_with_reason_rejected() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = jobs_with_limit(&store, 5);
    let id = q.publish(b"bad input").unwrap();
    let c = q.consumer(ConsumerOptions::new()).unwrap();
    let d = c.try_receive().unwrap().unwrap();
    c.nack(d.id, false).unwrap();

    let stats = q.stats();
    assert_eq!(
        (stats.rejected, stats.dead_lettered, stats.dropped),
        (1, 1, 0)
    );
    assert_eq!((stats.ready, stats.unacked), (0, 0));
    assert_eq!(store.stats().rejected, 1);
    let dlq = store.queue("jobs.dead").unwrap();
    assert_eq!(dlq.stats().ready, 1);
    let d = dlq.try_receive().unwrap().unwrap();
    assert_eq!((d.id, d.payload.as_slice()), (id, &b"bad input"[..]));
    assert_eq!(
        reason_of(&d),
        Some((DeadLetterReason::Rejected, "jobs".to_owned()))
    );
    // Settled in the dead-letter queue like any message.
    dlq.ack(d.id).unwrap();
    assert!(matches!(dlq.ack(d.id), Err(Error::AlreadySettled { .. })));
}

#[test]
fn without_a_dead_letter_queue_refused_messages_are_dropped_and_counted() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let q = store
        .declare_queue_with("jobs", QueueOptions::new().max_deliveries(1))
        .unwrap();
    let rejected = q.publish(b"rejected").unwrap();
    let limited = q.publish(b"limited").unwrap();
    let kept = q.publish(b"kept").unwrap();
    q.try_receive().unwrap().unwrap();
    q.nack(rejected, false).unwrap();
    q.try_receive().unwrap().unwrap();
    q.nack(limited, true).unwrap(); // its one allowed delivery is used up

    let stats = q.stats();
    assert_eq!(
        (stats.rejected, stats.dropped, stats.dead_lettered),
        (1, 2, 0)
    );
    assert_eq!(store.queue_names().len(), 1);
    for id in [rejected, limited] {
        assert!(matches!(q.ack(id), Err(Error::AlreadySettled { .. })));
    }
    let d = q.try_receive().unwrap().unwrap();
    assert_eq!(d.id, kept);
    assert!(q.try_receive().unwrap().is_none());
}

#[test]
fn redrive_moves_dead_letters_back_with_a_fresh_count_and_leaves_the_rest() {
    let clock = ManualClock::new(T0);
    let store = mem_store(&clock);
    let jobs = jobs_with_limit(&store, 2);
    let side = store
        .declare_queue_with("side", QueueOptions::new().dead_letter_queue("jobs.dead"))
        .unwrap();
    let dlq = store.queue("jobs.dead").unwrap();

    let limited = jobs.publish(b"limited").unwrap();
    let rejected = jobs.publish(b"rejected").unwrap();
    let direct = dlq.publish(b"published to the dlq").unwrap();
    let side_msg = side.publish(b"side").unwrap();
    let out = jobs.publish(b"out with a consumer").unwrap();
    for _ in 0..2 {
        let d = jobs.try_receive().unwrap().unwrap();
        assert_eq!(d.id, limited);
        jobs.nack(d.id, true).unwrap();
    }
    jobs.try_receive().unwrap().unwrap();
    jobs.nack(rejected, false).unwrap();
    side.try_receive().unwrap().unwrap();
    side.nack(side_msg, false).unwrap();
    jobs.try_receive().unwrap().unwrap();
    jobs.nack(out, false).unwrap();
    assert_eq!(dlq.stats().ready, 5);

    // One dead letter is out with a consumer of the dlq: it stays.
    let holder = dlq.consumer(ConsumerOptions::new()).unwrap();
    let first = holder.try_receive().unwrap().unwrap();
    assert_eq!(first.id, limited);
    assert_eq!(
        store.redrive("jobs.dead").unwrap(),
        3,
        "rejected, side, out"
    );
    let stats = dlq.stats();
    assert_eq!((stats.ready, stats.unacked), (1, 1));
    assert_eq!(
        dlq.try_receive().unwrap().unwrap().id,
        direct,
        "direct messages stay"
    );
    dlq.nack(direct, true).unwrap();

    // Back in their queues: fresh, same id, payload intact, no dead-letter information.
    for (q, id, payload) in [
        (&jobs, rejected, &b"rejected"[..]),
        (&jobs, out, b"out with a consumer"),
        (&side, side_msg, b"side"),
    ] {
        let d = q.try_receive().unwrap().unwrap();
        assert_eq!(d.id, id);
        assert_eq!(d.payload, payload);
        assert_eq!(d.delivery_count, 1);
        assert!(!d.redelivered);
        assert_eq!(d.dead_letter, None);
        q.ack(d.id).unwrap();
    }

    // The held one comes back to the dlq and a second redrive moves it; its count is fresh
    // again, so it gets its full max_deliveries again.
    holder.nack(first.id, true).unwrap();
    assert_eq!(store.redrive("jobs.dead").unwrap(), 1);
    assert_eq!(store.redrive("jobs.dead").unwrap(), 0);
    for count in 1..=2 {
        let d = jobs.try_receive().unwrap().unwrap();
        assert_eq!((d.id, d.delivery_count), (limited, count));
        jobs.nack(d.id, true).unwrap();
    }
    let again = dlq.try_receive().unwrap().unwrap();
    assert_eq!(again.id, direct);
    let d = dlq.try_receive().unwrap().unwrap();
    assert_eq!(d.id, limited);
    assert_eq!(
        reason_of(&d),
        Some((DeadLetterReason::DeliveryLimit, "jobs".to_owned()))
    );
}

/// Dead-letters by rejection and by delivery limit from two queues, crashes (`mode`), checks
/// the dead letters after reopening, redrives them, crashes again and checks the redrive.
fn dead_letters_survive(mode: CrashMode, seed: u64) {
    let label = format!("{mode:?} seed {seed}");
    let clock = ManualClock::new(T0);
    let disk = SimVfs::new(seed);
    let store = open(&disk, &clock);
    let jobs = jobs_with_limit(&store, 1);
    let side = store
        .declare_queue_with("side", QueueOptions::new().dead_letter_queue("jobs.dead"))
        .unwrap();
    let dlq = store.queue("jobs.dead").unwrap();
    let rejected = jobs.publish(b"rejected").unwrap();
    let limited = jobs.publish(b"limited").unwrap();
    let kept = jobs.publish(b"kept").unwrap();
    let direct = dlq.publish(b"direct").unwrap();
    let side_msg = side.publish(b"side").unwrap();
    jobs.try_receive().unwrap().unwrap();
    jobs.nack(rejected, false).unwrap();
    jobs.try_receive().unwrap().unwrap();
    jobs.nack(limited, true).unwrap();
    side.try_receive().unwrap().unwrap();
    side.nack(side_msg, false).unwrap();
    store.sync().unwrap();
    let disk = disk.crash(mode, seed);
    drop((jobs, side, dlq, store));

    let store = open(&disk, &clock);
    let jobs = store.queue("jobs").unwrap();
    let stats = jobs.stats();
    assert_eq!(
        (stats.ready, stats.rejected, stats.dead_lettered),
        (1, 1, 2),
        "{label}"
    );
    assert_eq!(
        store.queue("side").unwrap().stats().dead_lettered,
        1,
        "{label}"
    );
    let dlq = store.queue("jobs.dead").unwrap();
    let mut seen: Vec<(MessageId, Origin, Vec<u8>)> = Vec::new();
    while let Some(d) = dlq.try_receive().unwrap() {
        seen.push((d.id, reason_of(&d), d.payload));
    }
    let jobs_name = || "jobs".to_owned();
    assert_eq!(
        seen,
        [
            (
                rejected,
                Some((DeadLetterReason::Rejected, jobs_name())),
                b"rejected".to_vec()
            ),
            (
                limited,
                Some((DeadLetterReason::DeliveryLimit, jobs_name())),
                b"limited".to_vec()
            ),
            (direct, None, b"direct".to_vec()),
            (
                side_msg,
                Some((DeadLetterReason::Rejected, "side".to_owned())),
                b"side".to_vec()
            ),
        ],
        "{label}"
    );
    for (id, _, _) in &seen {
        dlq.nack(*id, true).unwrap();
    }
    assert_eq!(store.redrive("jobs.dead").unwrap(), 3, "{label}");
    store.sync().unwrap();
    let disk = disk.crash(mode, seed ^ 0x77);
    drop((jobs, dlq, store));

    let store = open(&disk, &clock);
    let dlq = store.queue("jobs.dead").unwrap();
    let d = dlq.try_receive().unwrap().unwrap();
    assert_eq!((d.id, d.dead_letter.clone()), (direct, None), "{label}");
    assert!(
        dlq.try_receive().unwrap().is_none(),
        "{label}: redrive undone"
    );
    let jobs = store.queue("jobs").unwrap();
    for (id, payload) in [
        (rejected, &b"rejected"[..]),
        (limited, b"limited"),
        (kept, b"kept"),
    ] {
        let d = jobs.try_receive().unwrap().unwrap();
        assert_eq!(d.id, id, "{label}");
        assert_eq!(d.payload, payload, "{label}");
        assert_eq!(
            d.delivery_count, 1,
            "{label}: count not fresh after redrive"
        );
        assert_eq!(d.dead_letter, None, "{label}");
    }
    assert!(jobs.try_receive().unwrap().is_none(), "{label}");
    let side = store.queue("side").unwrap();
    let d = side.try_receive().unwrap().unwrap();
    assert_eq!((d.id, d.delivery_count), (side_msg, 1), "{label}");
}

#[test]
fn dead_lettering_and_redrive_survive_a_process_crash() {
    dead_letters_survive(CrashMode::ProcessCrash, 31);
}

#[test]
fn dead_lettering_and_redrive_survive_a_power_loss_after_sync() {
    for seed in 0..6 {
        dead_letters_survive(CrashMode::PowerLoss, seed);
    }
}
