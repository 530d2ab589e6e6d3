//! walq as the persistence layer of a small in-process job scheduler that survives restarts.
//!
//! Jobs are messages of one `jobs` queue. A job that must run later is published with a
//! delay (`PublishOptions::delay`): the store keeps it out of reach until its run-at time,
//! and the time is in the log, so it holds across restarts. A pool of worker threads, each a
//! `Consumer` with a prefetch limit, runs the jobs and acks each one when it is done; a job
//! that fails is retried with exponential backoff through `requeue_after`.
//!
//! Halfway through, the scheduler restarts: the workers stop (deliveries they had prefetched
//! but not started go back to the queue), the store is closed, nothing runs for a moment,
//! and the store is reopened. The jobs that were waiting, scheduled or backing off resume;
//! the ones that completed before the restart do not run again. The program checks that
//! every job completed exactly once and never before its run-at time, and exits with an
//! error otherwise.
//!
//! ```text
//! cargo run --release --example job_scheduler [STORE_DIR]
//! ```
//! Without `STORE_DIR` the store lives in a temporary directory removed at exit; a given
//! directory must not hold a store yet. It takes about two seconds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use walq::{ConsumerOptions, Delivery, PublishOptions, Queue, Store, StoreOptions};

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Worker threads in the pool.
const WORKERS: usize = 3;
/// Deliveries each worker may hold unacked (fetched ahead of the one it runs).
const PREFETCH: u32 = 2;
/// How long one job "runs".
const WORK: Duration = Duration::from_millis(40);
/// The first retry waits this long; every further failure doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The scheduler restarts this long after its workers started (and once some job has
/// completed).
const RESTART_AFTER: Duration = Duration::from_millis(450);
/// How long the scheduler stays down during the restart.
const DOWNTIME: Duration = Duration::from_millis(200);
/// The whole run gives up after this long.
const TIME_LIMIT: Duration = Duration::from_secs(20);

/// A job: what it does, when it may run, and how often it fails before it succeeds.
struct Job {
    name: &'static str,
    /// Run-at time, as a delay from scheduling.
    delay_ms: u64,
    /// The first this many attempts fail (a flaky downstream service).
    failures: u32,
}

const fn job(name: &'static str, delay_ms: u64, failures: u32) -> Job {
    Job {
        name,
        delay_ms,
        failures,
    }
}

/// The jobs scheduled at start.
const JOBS: [Job; 16] = [
    job("email welcome to ann", 0, 0),
    job("email welcome to bob", 0, 0),
    job("resize avatar of ann", 0, 0),
    job("resize avatar of bob", 0, 0),
    job("rebuild search index", 0, 0),
    job("charge invoice 17", 0, 2),
    job("sync inventory feed", 0, 1),
    job("nightly report", 300, 0),
    job("thumbnail batch 1", 420, 0),
    job("thumbnail batch 2", 420, 0),
    job("thumbnail batch 3", 420, 0),
    job("thumbnail batch 4", 420, 0),
    job("thumbnail batch 5", 420, 0),
    job("reminder to carol", 600, 0),
    job("expire trial of dan", 1000, 1),
    job("weekly digest", 1300, 0),
];

/// What happened to every job: the scheduler's side effects, kept outside the store (think
/// of the emails sent and the cards charged). It lives across the restart.
#[derive(Default)]
struct Ledger {
    jobs: BTreeMap<String, JobRecord>,
    /// Problems seen by the workers; any makes the run fail.
    problems: Vec<String>,
}

#[derive(Default)]
struct JobRecord {
    /// Attempts that ran, failed ones included.
    attempts: u32,
    /// When each successful run finished, and in which life of the scheduler (0 or 1).
    completions: Vec<(Duration, u32)>,
    /// When a failed attempt may be retried, at the earliest.
    retry_not_before: Option<Instant>,
}

fn lock(ledger: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The payload of a job: `delay_ms|failures|name`.
fn encode(job: &Job) -> String {
    format!("{}|{}|{}", job.delay_ms, job.failures, job.name)
}

/// Parses a payload read back from the store.
fn decode(delivery: &Delivery) -> AnyResult<(u64, u32, String)> {
    let text = std::str::from_utf8(&delivery.payload)
        .map_err(|e| format!("{}: payload is not UTF-8: {e}", delivery.id))?;
    let mut parts = text.splitn(3, '|');
    let (Some(delay), Some(failures), Some(name)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("{}: malformed job payload {text:?}", delivery.id).into());
    };
    Ok((delay.parse()?, failures.parse()?, name.to_owned()))
}

fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Everything a worker thread needs.
struct Pool {
    queue: Queue,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    started: Instant,
    life: u32,
}

/// Runs one worker until `stop` is set; returns how many prefetched deliveries it handed
/// back unstarted.
fn worker(name: String, pool: &Pool) -> AnyResult<usize> {
    let consumer = pool
        .queue
        .consumer(ConsumerOptions::new().prefetch(PREFETCH))?;
    let mut fetched: Vec<Delivery> = Vec::new();
    while !pool.stop.load(Ordering::Acquire) {
        // Top up to the prefetch limit: wait briefly for one, then take what is ready.
        if fetched.is_empty() {
            if let Some(d) = consumer.receive_timeout(Duration::from_millis(20))? {
                fetched.push(d);
            }
        }
        while let Some(d) = consumer.try_receive()? {
            fetched.push(d);
        }
        if fetched.is_empty() {
            continue;
        }
        let delivery = fetched.remove(0);
        run_job(&name, pool, &consumer, &delivery)?;
    }
    let unstarted = fetched.len();
    if unstarted > 0 {
        let ids: Vec<String> = fetched.iter().map(|d| d.id.to_string()).collect();
        say(
            pool,
            &format!(
                "[{name}] stops; hands back {unstarted} prefetched job(s) it never started: {}",
                ids.join(" ")
            ),
        );
    }
    // Returns the unstarted deliveries to the queue (redelivered after the restart).
    consumer.close()?;
    Ok(unstarted)
}

fn say(pool: &Pool, line: &str) {
    println!("+{:>5} ms  {line}", pool.started.elapsed().as_millis());
}

fn run_job(
    name: &str,
    pool: &Pool,
    consumer: &walq::Consumer,
    delivery: &Delivery,
) -> AnyResult<()> {
    let (delay_ms, failures, job) = decode(delivery)?;
    // The store must not hand out a job before its run-at time, nor a retry before its
    // backoff has passed.
    let now_ms = ms_since_epoch(SystemTime::now());
    let run_at = ms_since_epoch(delivery.published_at) + delay_ms;
    let attempt = {
        let mut ledger = lock(&pool.ledger);
        let record = ledger.jobs.entry(job.clone()).or_default();
        let early_retry = record
            .retry_not_before
            .is_some_and(|t| Instant::now() + Duration::from_millis(1) < t);
        record.attempts += 1;
        let attempt = record.attempts;
        if now_ms < run_at {
            ledger
                .problems
                .push(format!("{job:?} ran {} ms early", run_at - now_ms));
        }
        if early_retry {
            ledger
                .problems
                .push(format!("{job:?} was retried before its backoff ran out"));
        }
        attempt
    };
    thread::sleep(WORK);
    let redelivered = if delivery.redelivered {
        format!(", redelivered, delivery {}", delivery.delivery_count)
    } else {
        String::new()
    };
    if attempt <= failures {
        let backoff = FIRST_BACKOFF * 2u32.pow(attempt - 1);
        lock(&pool.ledger)
            .jobs
            .entry(job.clone())
            .or_default()
            .retry_not_before = Some(Instant::now() + backoff);
        consumer.requeue_after(delivery.id, backoff)?;
        say(
            pool,
            &format!(
                "[{name}] {} {job:?} attempt {attempt} failed (downstream timeout){redelivered}; \
                 retry in {} ms",
                delivery.id,
                backoff.as_millis()
            ),
        );
    } else {
        // The side effect happens, then the ack: a crash between the two would run the job
        // again (at least once); a clean stop never does.
        lock(&pool.ledger)
            .jobs
            .entry(job.clone())
            .or_default()
            .completions
            .push((pool.started.elapsed(), pool.life));
        consumer.ack(delivery.id)?;
        say(
            pool,
            &format!(
                "[{name}] {} {job:?} done, attempt {attempt}{redelivered}",
                delivery.id
            ),
        );
    }
    Ok(())
}

/// Starts the worker pool; the handles return how many deliveries each handed back.
fn start_pool(pool: &Arc<Pool>) -> Vec<thread::JoinHandle<AnyResult<usize>>> {
    (1..=WORKERS)
        .map(|n| {
            let pool = Arc::clone(pool);
            let name = format!("worker-{}{n}", if pool.life == 0 { "a" } else { "b" });
            thread::spawn(move || worker(name, &pool))
        })
        .collect()
}

fn stop_pool(pool: &Pool, handles: Vec<thread::JoinHandle<AnyResult<usize>>>) -> AnyResult<()> {
    pool.stop.store(true, Ordering::Release);
    for handle in handles {
        handle.join().map_err(|_| "a worker panicked")??;
    }
    Ok(())
}

fn completed(ledger: &Mutex<Ledger>) -> usize {
    lock(ledger)
        .jobs
        .values()
        .filter(|r| !r.completions.is_empty())
        .count()
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
    println!("== walq: a job scheduler that survives restarts ==");
    println!("store directory: {}", dir.display());
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    // ---- first life ----
    let store = Store::open(&dir, StoreOptions::new())?;
    if store.stats().next_message_id != 0 {
        return Err("the store directory already holds messages; give an empty directory".into());
    }
    let queue = store.declare_queue("jobs")?;
    println!();
    println!("-- scheduling {} jobs --", JOBS.len());
    // The jobs that share a run-at time are scheduled together, in one atomic batch.
    let mut rest: &[Job] = &JOBS;
    while let Some(first) = rest.first() {
        let same = rest
            .iter()
            .take_while(|j| j.delay_ms == first.delay_ms)
            .count();
        let (batch, tail) = rest.split_at(same);
        rest = tail;
        let options = PublishOptions::new().delay(Duration::from_millis(first.delay_ms));
        let payloads: Vec<String> = batch.iter().map(encode).collect();
        let ids = queue.publish_batch_with(&payloads, &options)?;
        for (id, job) in ids.iter().zip(batch) {
            let when = if job.delay_ms == 0 {
                "now".to_owned()
            } else {
                format!("at +{} ms", job.delay_ms)
            };
            let flaky = match job.failures {
                0 => String::new(),
                n => format!(" (its first {n} attempt(s) will fail)"),
            };
            println!("scheduled {id} {:?} to run {when}{flaky}", job.name);
        }
    }
    let stats = queue.stats();
    println!(
        "jobs queue: {} ready, {} delayed (not before their run-at time)",
        stats.ready, stats.delayed
    );

    println!();
    println!("-- {WORKERS} workers, prefetch {PREFETCH} each --");
    let pool = Arc::new(Pool {
        queue: queue.clone(),
        ledger: Arc::clone(&ledger),
        stop: Arc::new(AtomicBool::new(false)),
        started,
        life: 0,
    });
    let handles = start_pool(&pool);
    let restart_at = Instant::now() + RESTART_AFTER;
    while Instant::now() < restart_at || completed(&ledger) == 0 {
        if started.elapsed() > TIME_LIMIT {
            return Err("no job completed in time".into());
        }
        thread::sleep(Duration::from_millis(5));
    }

    // ---- the restart ----
    println!();
    println!("-- restart: stop the workers, close the store --");
    stop_pool(&pool, handles)?;
    drop(pool);
    let before: Vec<String> = lock(&ledger)
        .jobs
        .iter()
        .filter(|(_, r)| !r.completions.is_empty())
        .map(|(name, _)| name.clone())
        .collect();
    let stats = queue.stats();
    println!(
        "before the restart: {} of {} jobs completed; in the store: {} ready, {} delayed \
         (scheduled or backing off), {} unacked",
        before.len(),
        JOBS.len(),
        stats.ready,
        stats.delayed,
        stats.unacked
    );
    store.close()?;
    drop((queue, store));
    println!(
        "store closed; the scheduler is down for {} ms (jobs falling due meanwhile wait)",
        DOWNTIME.as_millis()
    );
    thread::sleep(DOWNTIME);

    // ---- second life ----
    let store = Store::open(&dir, StoreOptions::new())?;
    let report = store.recovery_report();
    println!(
        "reopened: {} records replayed from {} segment(s); {}",
        report.records,
        report.segments,
        match &report.truncated {
            None => "the log ended cleanly".to_owned(),
            Some(t) => format!("torn tail cut at segment {} offset {}", t.segment, t.offset),
        }
    );
    let queue = store.queue("jobs")?;
    let stats = queue.stats();
    let pending = JOBS.len() - before.len();
    println!(
        "resumed: {} ready, {} delayed, {} unacked: the {pending} jobs not completed yet",
        stats.ready, stats.delayed, stats.unacked
    );
    if (stats.ready + stats.delayed) as usize != pending || stats.unacked != 0 {
        return Err(format!(
            "after the reopen {} jobs wait, expected {pending}",
            stats.ready + stats.delayed
        )
        .into());
    }
    println!();
    println!("-- {WORKERS} new workers --");
    let pool = Arc::new(Pool {
        queue: queue.clone(),
        ledger: Arc::clone(&ledger),
        stop: Arc::new(AtomicBool::new(false)),
        started,
        life: 1,
    });
    let handles = start_pool(&pool);
    loop {
        let stats = queue.stats();
        if stats.ready + stats.delayed + stats.unacked == 0 {
            break;
        }
        if started.elapsed() > TIME_LIMIT {
            return Err(format!("jobs still pending after {TIME_LIMIT:?}: {stats:?}").into());
        }
        thread::sleep(Duration::from_millis(5));
    }
    stop_pool(&pool, handles)?;
    drop(pool);
    let final_stats = queue.stats();
    store.close()?;

    // ---- the verdict ----
    println!();
    println!("-- summary --");
    println!(
        "{:<22} {:>7} {:>8} {:>5}  completed",
        "job", "run at", "attempts", "runs"
    );
    let ledger = lock(&ledger);
    let mut problems = ledger.problems.clone();
    let (mut first, mut second) = (0, 0);
    for job in &JOBS {
        let Some(record) = ledger.jobs.get(job.name) else {
            problems.push(format!("{:?} never ran", job.name));
            continue;
        };
        let runs = record.completions.len();
        let when: Vec<String> = record
            .completions
            .iter()
            .map(|(at, life)| {
                let phase = if *life == 0 { "before" } else { "after" };
                format!("+{} ms, {phase} the restart", at.as_millis())
            })
            .collect();
        println!(
            "{:<22} {:>7} {:>8} {:>5}  {}",
            job.name,
            format!("+{}", job.delay_ms),
            record.attempts,
            runs,
            when.join("; ")
        );
        if runs != 1 {
            problems.push(format!("{:?} completed {runs} times", job.name));
        }
        if record.attempts != job.failures + 1 {
            problems.push(format!(
                "{:?} ran {} attempts, expected {}",
                job.name,
                record.attempts,
                job.failures + 1
            ));
        }
        match record.completions.first() {
            Some((_, 0)) => first += 1,
            Some(_) => second += 1,
            None => {}
        }
    }
    if final_stats.acked != JOBS.len() as u64 {
        problems.push(format!(
            "the store counts {} acks for {} jobs",
            final_stats.acked,
            JOBS.len()
        ));
    }
    let ran_again = JOBS
        .iter()
        .filter_map(|job| ledger.jobs.get(job.name))
        .filter(|r| r.completions.first().is_some_and(|c| c.1 == 0) && r.completions.len() > 1)
        .count();
    println!();
    println!(
        "completed before the restart: {first}; after the restart: {second}; of the {first} \
         completed before, {ran_again} ran again"
    );
    if !problems.is_empty() {
        for problem in &problems {
            println!("PROBLEM: {problem}");
        }
        return Err(format!("{} problem(s) found", problems.len()).into());
    }
    println!(
        "all {} jobs completed exactly once, none before its run-at time, in {:.1} s",
        JOBS.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
