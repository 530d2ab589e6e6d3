//! A poison message reaches the dead-letter queue, and is sent back once the bug is fixed.
//!
//! The `jobs` queue allows 3 deliveries per message and names `jobs.dead` as its dead-letter
//! queue. A worker acks the good jobs; one job always makes it fail, and each time the worker
//! requeues it with a growing backoff (`requeue_after`). When it comes back after its third
//! delivery, the store moves it to `jobs.dead` instead of requeuing it: same message id, the
//! payload is not copied, the reason (`DeliveryLimit`) and the original queue travel with it,
//! and its delivery count starts again.
//!
//! The store is then closed and reopened (the move is in the log), the dead letter is
//! inspected, and `Store::redrive` sends it back to `jobs`, where a fixed worker acks it.
//! The program checks every step and exits with an error if anything is not as expected.
//!
//! ```text
//! cargo run --release --example dead_letter [STORE_DIR]
//! ```
//! Without `STORE_DIR` the store lives in a temporary directory removed at exit; a given
//! directory must not hold a store yet.

use std::fmt::Display;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use walq::{
    ConsumerOptions, DeadLetter, DeadLetterReason, Delivery, MessageId, QueueOptions, Store,
    StoreOptions,
};

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Deliveries a job gets before it is dead-lettered.
const MAX_DELIVERIES: u32 = 3;
/// The backoff before the first retry; it doubles with every failed delivery.
const FIRST_BACKOFF: Duration = Duration::from_millis(25);
const JOBS: [&str; 5] = [
    "resize cat.png",
    "resize dog.png",
    "resize corrupt.png",
    "resize owl.png",
    "resize fox.png",
];
/// The job that makes the worker fail, until the fix is deployed.
const POISON: &str = "resize corrupt.png";

fn expect(ok: bool, what: impl Display) -> AnyResult<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected: {what}").into())
    }
}

fn text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.payload).into_owned()
}

/// The worker before the fix: fails on the poison job, succeeds on everything else.
fn process(delivery: &Delivery) -> Result<(), String> {
    if delivery.payload == POISON.as_bytes() {
        Err("the image decoder panicked".into())
    } else {
        Ok(())
    }
}

fn main() -> AnyResult<()> {
    let started = Instant::now();
    let (dir, _temp) = match std::env::args_os().nth(1) {
        Some(dir) => (PathBuf::from(dir), None),
        None => {
            let temp = tempfile::tempdir()?;
            (temp.path().join("store"), Some(temp))
        }
    };
    println!("== walq: a poison message and its dead-letter queue ==");
    println!("store directory: {}", dir.display());

    let store = Store::open(&dir, StoreOptions::new())?;
    expect(
        store.stats().next_message_id == 0,
        "the store directory already holds messages; give an empty directory",
    )?;
    let jobs = store.declare_queue_with(
        "jobs",
        QueueOptions::new()
            .max_deliveries(MAX_DELIVERIES)
            .dead_letter_queue("jobs.dead"),
    )?;
    println!(
        "queue \"jobs\": max_deliveries {MAX_DELIVERIES}, dead-letter queue \"jobs.dead\" \
         (declared with it)"
    );

    println!();
    println!("-- publishing --");
    let ids = jobs.publish_batch(&JOBS)?;
    let mut poison_id = None;
    for (id, job) in ids.iter().zip(JOBS) {
        println!("published {id} {job:?}");
        if job == POISON {
            poison_id = Some(*id);
        }
    }
    let poison_id: MessageId = poison_id.ok_or("the poison job was not published")?;

    println!();
    println!("-- the worker --");
    let worker = jobs.consumer(ConsumerOptions::new().prefetch(1))?;
    let mut acked = 0;
    let mut poison_deliveries = 0;
    loop {
        let stats = jobs.stats();
        if stats.ready + stats.delayed + stats.unacked == 0 {
            break;
        }
        // Blocks while the poison job waits out its backoff.
        let Some(delivery) = worker.receive_timeout(Duration::from_secs(1))? else {
            return Err("the worker waited a second and got nothing".into());
        };
        let at = started.elapsed().as_millis();
        match process(&delivery) {
            Ok(()) => {
                worker.ack(delivery.id)?;
                acked += 1;
                println!(
                    "+{at:>4} ms  {} {:?} (delivery {}): done, ack",
                    delivery.id,
                    text(&delivery),
                    delivery.delivery_count
                );
            }
            Err(why) => {
                poison_deliveries += 1;
                let backoff = FIRST_BACKOFF * 2u32.pow(delivery.delivery_count - 1);
                println!(
                    "+{at:>4} ms  {} {:?} (delivery {}): failed ({why}), requeue_after {} ms",
                    delivery.id,
                    text(&delivery),
                    delivery.delivery_count,
                    backoff.as_millis()
                );
                if delivery.delivery_count >= MAX_DELIVERIES {
                    println!(
                        "           that was delivery {MAX_DELIVERIES} of {MAX_DELIVERIES}: \
                         the store dead-letters it instead of requeuing it"
                    );
                }
                worker.requeue_after(delivery.id, backoff)?;
            }
        }
    }
    worker.close()?;
    let stats = jobs.stats();
    println!(
        "jobs: acked {}, dead_lettered {}, ready {}, delayed {}, unacked {}",
        stats.acked, stats.dead_lettered, stats.ready, stats.delayed, stats.unacked
    );
    expect(acked == JOBS.len() - 1, format!("{acked} good jobs acked"))?;
    expect(
        poison_deliveries == MAX_DELIVERIES,
        format!("the poison job was delivered {poison_deliveries} times"),
    )?;
    expect(
        stats.dead_lettered == 1,
        format!("{} jobs dead-lettered", stats.dead_lettered),
    )?;

    println!();
    println!("-- close and reopen: the move is in the log --");
    store.close()?;
    drop((jobs, store));
    let store = Store::open(&dir, StoreOptions::new())?;
    let jobs = store.queue("jobs")?;
    let dead = store.queue("jobs.dead")?;
    println!(
        "jobs.dead: ready {} (jobs: ready {})",
        dead.stats().ready,
        jobs.stats().ready
    );

    println!();
    println!("-- the dead-letter queue --");
    let letter = dead
        .try_receive()?
        .ok_or("jobs.dead is empty after the reopen")?;
    let origin = letter.dead_letter.clone();
    println!(
        "{} {:?}: delivery_count {}, {:?}",
        letter.id,
        text(&letter),
        letter.delivery_count,
        origin
    );
    expect(
        letter.id == poison_id,
        format!("{} is not the poison job {poison_id}", letter.id),
    )?;
    expect(letter.payload == POISON.as_bytes(), "the payload changed")?;
    expect(
        origin
            == Some(DeadLetter {
                reason: DeadLetterReason::DeliveryLimit,
                original_queue: "jobs".into(),
            }),
        format!("dead_letter is {origin:?}"),
    )?;
    expect(
        letter.delivery_count == 1,
        "the delivery count did not start again",
    )?;
    println!(
        "dead-lettered: {} reason DeliveryLimit from \"jobs\" (same id, same payload, \
         delivery count reset)",
        letter.id
    );
    // Inspected; put it back where it was until the fix is out.
    dead.nack(letter.id, true)?;

    println!();
    println!("-- the fix is deployed: redrive --");
    let moved = store.redrive("jobs.dead")?;
    println!(
        "redrive moved {moved} message{}",
        if moved == 1 { "" } else { "s" }
    );
    expect(moved == 1, format!("redrive moved {moved} messages"))?;
    expect(dead.stats().ready == 0, "jobs.dead is not empty")?;
    let again = jobs
        .try_receive()?
        .ok_or("the redriven job is not in jobs")?;
    expect(again.id == poison_id, format!("{} came back", again.id))?;
    expect(
        again.delivery_count == 1 && again.dead_letter.is_none(),
        format!(
            "the redriven job has delivery_count {} and dead_letter {:?}",
            again.delivery_count, again.dead_letter
        ),
    )?;
    println!(
        "back in jobs: {} delivery_count {} {:?}: the fixed worker processes it, ack",
        again.id,
        again.delivery_count,
        text(&again)
    );
    jobs.ack(again.id)?;

    let (jobs_stats, dead_stats) = (jobs.stats(), dead.stats());
    store.close()?;
    println!();
    println!("-- summary --");
    println!(
        "jobs: published {}, acked {}, dead_lettered {}, ready {}",
        jobs_stats.published, jobs_stats.acked, jobs_stats.dead_lettered, jobs_stats.ready
    );
    println!(
        "jobs.dead: ready {}, unacked {}",
        dead_stats.ready, dead_stats.unacked
    );
    expect(
        jobs_stats.acked == JOBS.len() as u64 && jobs_stats.ready == 0 && dead_stats.ready == 0,
        "jobs left over",
    )?;
    println!(
        "all expected outcomes observed, in {:.0?}",
        started.elapsed()
    );
    Ok(())
}
