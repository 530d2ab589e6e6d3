//! A work queue with acknowledgements and rollback, RabbitMQ style.
//!
//! A producer publishes tasks to a durable `tasks` queue. Three workers consume them with a
//! prefetch limit: each holds at most `PREFETCH` unacknowledged deliveries, processes them
//! one by one, acks each on success and, when a task fails, nacks it with requeue so that it
//! is retried (it comes back first, flagged `redelivered`, with its delivery count). Two
//! workers stop early while still holding deliveries they never acknowledged.
//!
//! Then the process "crashes": the store is dropped without `close`. Reopening it recovers
//! the log, and every delivery that was never acknowledged is ready again, flagged as
//! redelivered with its delivery count. A last worker drains them, and the program checks
//! that every task was completed.
//!
//! ```text
//! cargo run --release --example work_queue [STORE_DIR]
//! ```
//! Without `STORE_DIR` the store lives in a temporary directory removed at exit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use walq::{Delivery, FsyncPolicy, Queue, Store, StoreOptions};

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Tasks the producer publishes.
const TASKS: u32 = 50;
/// Unacknowledged deliveries a worker may hold at once.
const PREFETCH: usize = 4;
/// Every task whose number is a multiple of this fails on its first delivery.
const FAIL_EVERY: u32 = 7;

/// How a worker behaves.
#[derive(Clone, Copy)]
struct Plan {
    name: &'static str,
    /// The worker stops (as if it crashed) after completing this many tasks, abandoning the
    /// rest of its prefetched deliveries without acknowledging them.
    stop_after: Option<usize>,
}

/// What happened to every task, shared by the workers.
#[derive(Default)]
struct Ledger {
    /// Task number -> how many times it was completed (acked).
    completed: BTreeMap<u32, u32>,
    /// Tasks that failed once and were requeued.
    retried: Vec<u32>,
}

fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn task_number(delivery: &Delivery) -> AnyResult<u32> {
    let text = std::str::from_utf8(&delivery.payload)?;
    let number = text
        .strip_prefix("task-")
        .and_then(|rest| rest.split(':').next())
        .ok_or("malformed task payload")?;
    Ok(number.parse()?)
}

/// Simulated work: a failure for every `FAIL_EVERY`-th task on its first delivery.
fn process(number: u32, delivery: &Delivery) -> Result<(), String> {
    thread::sleep(Duration::from_millis(u64::from(number % 3) + 1));
    if number % FAIL_EVERY == 0 && delivery.delivery_count == 1 {
        Err("the image service timed out".into())
    } else {
        Ok(())
    }
}

fn worker(
    plan: Plan,
    tasks: Queue,
    producer_done: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) -> AnyResult<usize> {
    let mut done = 0usize;
    loop {
        // Fetch up to PREFETCH deliveries (waiting briefly for the first one).
        let mut batch = Vec::with_capacity(PREFETCH);
        if let Some(first) = tasks.receive_timeout(Duration::from_millis(50))? {
            batch.push(first);
            while batch.len() < PREFETCH {
                match tasks.try_receive()? {
                    Some(delivery) => batch.push(delivery),
                    None => break,
                }
            }
        }
        if batch.is_empty() {
            if producer_done.load(Ordering::Acquire) && tasks.stats().ready == 0 {
                return Ok(done);
            }
            continue;
        }
        let mut batch = batch.into_iter();
        while let Some(delivery) = batch.next() {
            if plan.stop_after.is_some_and(|limit| done >= limit) {
                let abandoned: Vec<String> = std::iter::once(&delivery)
                    .chain(batch.as_slice())
                    .map(|d| d.id.to_string())
                    .collect();
                println!(
                    "[{}] stops early after {done} tasks, leaving {} deliveries unacked: {}",
                    plan.name,
                    abandoned.len(),
                    abandoned.join(" ")
                );
                return Ok(done);
            }
            let number = task_number(&delivery)?;
            if delivery.redelivered {
                println!(
                    "[{}] task-{number:02} ({}) redelivered, delivery_count {}",
                    plan.name, delivery.id, delivery.delivery_count
                );
            }
            match process(number, &delivery) {
                Ok(()) => {
                    tasks.ack(delivery.id)?;
                    *lock(&ledger).completed.entry(number).or_insert(0) += 1;
                    done += 1;
                }
                Err(why) => {
                    println!(
                        "[{}] task-{number:02} ({}) failed: {why}; nack with requeue",
                        plan.name, delivery.id
                    );
                    tasks.nack(delivery.id, true)?;
                    lock(&ledger).retried.push(number);
                }
            }
        }
    }
}

fn options() -> StoreOptions {
    // Publishes and acks return once written; a background thread syncs within 2 ms.
    StoreOptions::new().fsync(FsyncPolicy::Batch {
        max_messages: 64,
        max_delay: Duration::from_millis(2),
    })
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
    println!("== walq work queue: acknowledgements and rollback ==");
    println!("store directory: {}", dir.display());

    let store = Store::open(&dir, options())?;
    let tasks = store.declare_queue("tasks")?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let producer_done = Arc::new(AtomicBool::new(false));

    println!();
    println!("-- producer and {} workers (prefetch {PREFETCH}) --", 3);
    let plans = [
        Plan {
            name: "worker-1",
            stop_after: None,
        },
        Plan {
            name: "worker-2",
            stop_after: Some(9),
        },
        Plan {
            name: "worker-3",
            stop_after: Some(5),
        },
    ];
    let workers: Vec<_> = plans
        .iter()
        .map(|&plan| {
            let (tasks, done, ledger) = (
                tasks.clone(),
                Arc::clone(&producer_done),
                Arc::clone(&ledger),
            );
            thread::spawn(move || worker(plan, tasks, done, ledger))
        })
        .collect();

    let producer = {
        let tasks = tasks.clone();
        let done = Arc::clone(&producer_done);
        thread::spawn(move || -> AnyResult<(u64, u64)> {
            let mut ids = Vec::new();
            for n in 1..=TASKS {
                ids.push(tasks.publish(format!("task-{n:02}: resize image {n}").as_bytes())?);
            }
            done.store(true, Ordering::Release);
            let first = ids.first().map_or(0, |id| id.get());
            let last = ids.last().map_or(0, |id| id.get());
            Ok((first, last))
        })
    };
    let (first, last) = producer.join().map_err(|_| "producer panicked")??;
    println!("[producer] published {TASKS} tasks (ids #{first}..=#{last})");
    for (plan, handle) in plans.iter().zip(workers) {
        let done = handle.join().map_err(|_| "worker panicked")??;
        println!("[{}] finished: completed {done} tasks", plan.name);
    }

    let stats = tasks.stats();
    println!();
    println!("-- before the crash --");
    println!(
        "tasks: published {}, acked {}, ready {}, unacked {}",
        stats.published, stats.acked, stats.ready, stats.unacked
    );
    // Deliveries still held by the workers that stopped (and any task one of them had
    // requeued but nobody took again) must all come back.
    let outstanding_before = stats.unacked + stats.ready;

    println!();
    println!("-- the process crashes: the store is dropped without close() --");
    drop(tasks);
    drop(store);

    let store = Store::open(&dir, options())?;
    let report = store.recovery_report();
    println!();
    println!("-- recovery report --");
    println!(
        "scanned {} segment(s), replayed {} records ({} bytes)",
        report.segments, report.records, report.bytes
    );
    match &report.truncated {
        None => println!("the log ended cleanly: nothing truncated"),
        Some(cut) => println!(
            "torn tail cut at segment {} offset {}: {}",
            cut.segment, cut.offset, cut.reason
        ),
    }
    let tasks = store.queue("tasks")?;
    let stats = tasks.stats();
    println!(
        "tasks: ready {}, unacked {} (deliveries that were out with workers are ready again)",
        stats.ready, stats.unacked
    );

    println!();
    println!("-- recovered unacked set --");
    println!(
        "  {:<6} {:<8} {:<12} delivery_count",
        "id", "task", "redelivered"
    );
    let mut recovered = Vec::new();
    while let Some(delivery) = tasks.try_receive()? {
        let number = task_number(&delivery)?;
        println!(
            "  {:<6} task-{number:02}  {:<12} {}",
            delivery.id.to_string(),
            delivery.redelivered,
            delivery.delivery_count
        );
        recovered.push((number, delivery));
    }
    if recovered.len() as u64 != outstanding_before {
        return Err(format!(
            "{} messages were unsettled before the crash but {} came back",
            outstanding_before,
            recovered.len()
        )
        .into());
    }
    if let Some((number, _)) = recovered.iter().find(|(_, d)| !d.redelivered) {
        return Err(format!("task-{number:02} came back without the redelivered flag").into());
    }

    println!();
    println!("-- draining the recovered set --");
    for (number, delivery) in &recovered {
        process(*number, delivery).map_err(|why| format!("task-{number:02}: {why}"))?;
        tasks.ack(delivery.id)?;
        *lock(&ledger).completed.entry(*number).or_insert(0) += 1;
    }
    println!("acked {} recovered deliveries", recovered.len());
    let stats = tasks.stats();
    store.close()?;

    let ledger = lock(&ledger);
    let missing: Vec<u32> = (1..=TASKS)
        .filter(|n| !ledger.completed.contains_key(n))
        .collect();
    let twice: Vec<u32> = ledger
        .completed
        .iter()
        .filter(|(_, &times)| times > 1)
        .map(|(&n, _)| n)
        .collect();
    println!();
    println!("-- summary --");
    println!(
        "tasks: published {}, acked {}, ready {}, unacked {}",
        stats.published, stats.acked, stats.ready, stats.unacked
    );
    println!(
        "{} tasks retried after a failure: {:?}",
        ledger.retried.len(),
        ledger.retried
    );
    println!("{} tasks recovered after the crash", recovered.len());
    if !missing.is_empty() || !twice.is_empty() || stats.ready + stats.unacked != 0 {
        return Err(
            format!("tasks never completed: {missing:?}; completed twice: {twice:?}").into(),
        );
    }
    println!(
        "all {TASKS} tasks completed exactly once, in {:.0?}",
        started.elapsed()
    );
    Ok(())
}
