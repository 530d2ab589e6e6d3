//! What each fsync policy costs, and what it buys: publish throughput under
//! `FsyncPolicy::Always`, `Batch`, `Interval` and `Never`, from one producer thread and from
//! several, on the real disk.
//!
//! ```text
//! cargo run --release --example fsync_policies -- [--messages N] [--producers P]
//!                                                 [--max-seconds S] [--dir DIR]
//! ```
//!
//! For every policy it opens a fresh store in a temporary directory under `DIR` (default: the
//! system's temporary directory, removed at exit), publishes `N` messages of 256 bytes
//! (default 3000) from 1 thread and then from `P` threads (default 4), and prints a table:
//! the policy, the producer threads, the publishes per second, how long `Store::close` (the
//! final sync) took, and what is durable when `publish` returns (from `docs/guarantees.md`).
//! A run stops early after `S` seconds (default 2) and reports what it published by then, so
//! a slow disk under `Always` does not make the whole comparison slow. Every store is then
//! reopened to check that all its confirmed messages are there.
//!
//! Under every policy a returned publish has been handed to the operating system, so it
//! survives a crash of the process; the policies differ in what survives a power loss.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use walq::{FsyncPolicy, Store, StoreOptions};

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Payload size of every message.
const PAYLOAD: usize = 256;

/// The command line.
struct Args {
    messages: u64,
    producers: usize,
    max_time: Duration,
    dir: Option<PathBuf>,
}

const USAGE: &str = "usage: fsync_policies [--messages N] [--producers P] [--max-seconds S] \
                     [--dir DIR]";

fn parse_args() -> AnyResult<Args> {
    let mut args = Args {
        messages: 3000,
        producers: 4,
        max_time: Duration::from_secs(2),
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))
        };
        match flag.as_str() {
            "--messages" => {
                args.messages = value()?
                    .parse()
                    .map_err(|e| format!("--messages: {e}; give a positive number"))?;
            }
            "--producers" => {
                args.producers = value()?
                    .parse()
                    .map_err(|e| format!("--producers: {e}; give a number from 2 up"))?;
            }
            "--max-seconds" => {
                let secs: f64 = value()?
                    .parse()
                    .map_err(|e| format!("--max-seconds: {e}; give a number of seconds"))?;
                args.max_time = Duration::try_from_secs_f64(secs)
                    .map_err(|e| format!("--max-seconds: {e}; give a positive number"))?;
            }
            "--dir" => args.dir = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; {USAGE}").into()),
        }
    }
    if args.messages == 0 {
        return Err("--messages must be at least 1".into());
    }
    if args.producers < 2 {
        return Err("--producers must be at least 2 (1 producer is always measured)".into());
    }
    if args.max_time.is_zero() {
        return Err("--max-seconds must be more than 0".into());
    }
    Ok(args)
}

/// A policy, how the table names it, and what a returned publish guarantees under it.
struct Policy {
    policy: FsyncPolicy,
    name: &'static str,
    durable: &'static str,
}

fn policies() -> [Policy; 4] {
    [
        Policy {
            policy: FsyncPolicy::Always,
            name: "Always",
            durable: "durable: fdatasync'd before it returns (shared by concurrent callers)",
        },
        Policy {
            policy: FsyncPolicy::Batch {
                max_messages: 256,
                max_delay: Duration::from_millis(5),
            },
            name: "Batch { 256, 5 ms }",
            durable: "written to the OS; durable after the next background sync (256 records \
                      or 5 ms)",
        },
        Policy {
            policy: FsyncPolicy::Interval(Duration::from_millis(10)),
            name: "Interval(10 ms)",
            durable: "written to the OS; durable after the next background sync (every 10 ms)",
        },
        Policy {
            policy: FsyncPolicy::Never,
            name: "Never",
            durable: "written to the OS; durable only at Store::sync, a segment roll-over or \
                      close",
        },
    ]
}

/// One measured run.
struct Row {
    published: u64,
    elapsed: Duration,
    close: Duration,
}

/// Publishes up to `messages` messages from `producers` threads into a fresh store in `dir`,
/// stopping early after `max_time`, then closes the store and checks, after reopening it,
/// that every confirmed message is there.
fn run(
    dir: &Path,
    policy: FsyncPolicy,
    producers: usize,
    messages: u64,
    max_time: Duration,
) -> AnyResult<Row> {
    let store = Store::open(dir, StoreOptions::new().fsync(policy))?;
    let queue = store.declare_queue("bench")?;
    let payload = [0x5a_u8; PAYLOAD];
    let claimed = AtomicU64::new(0);
    let published = AtomicU64::new(0);
    let out_of_time = AtomicBool::new(false);
    let start = Barrier::new(producers + 1);
    let elapsed = thread::scope(|scope| -> AnyResult<Duration> {
        let handles: Vec<_> = (0..producers)
            .map(|_| {
                scope.spawn(|| -> walq::Result<()> {
                    start.wait();
                    // Each producer claims the next message number until all are taken.
                    while !out_of_time.load(Ordering::Relaxed)
                        && claimed.fetch_add(1, Ordering::Relaxed) < messages
                    {
                        queue.publish(&payload)?;
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let deadline = began + max_time;
        while !handles.iter().all(|h| h.is_finished()) {
            if Instant::now() >= deadline {
                out_of_time.store(true, Ordering::Relaxed);
            }
            thread::sleep(Duration::from_millis(1));
        }
        let elapsed = began.elapsed();
        for handle in handles {
            handle.join().map_err(|_| "a producer thread panicked")??;
        }
        Ok(elapsed)
    })?;
    let closing = Instant::now();
    store.close()?;
    let close = closing.elapsed();
    drop((queue, store));

    let published = published.load(Ordering::Relaxed);
    let store = Store::open(dir, StoreOptions::new())?;
    let ready = store.queue("bench")?.stats().ready;
    if ready != published {
        return Err(format!(
            "{} published {published} messages but {ready} are in the reopened store",
            dir.display()
        )
        .into());
    }
    store.close()?;
    Ok(Row {
        published,
        elapsed,
        close,
    })
}

fn main() -> AnyResult<()> {
    let args = parse_args()?;
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).map_err(|e| {
        format!(
            "cannot create {}: {e}; give --dir a writable place",
            base.display()
        )
    })?;
    let temp = tempfile::Builder::new()
        .prefix("walq-fsync-policies-")
        .tempdir_in(&base)
        .map_err(|e| format!("cannot create a directory in {}: {e}", base.display()))?;
    println!("== walq: fsync policies compared ==");
    println!(
        "{} messages of {PAYLOAD} B per run (at most {:.1} s each), stores under {}",
        args.messages,
        args.max_time.as_secs_f64(),
        temp.path().display()
    );
    println!();
    println!(
        "{:<20} {:>9} {:>10} {:>10} {:>9}  durable when publish returns",
        "policy", "producers", "published", "msgs/s", "close ms"
    );
    let mut run_no = 0;
    let mut any_stopped = false;
    for policy in policies() {
        for producers in [1, args.producers] {
            run_no += 1;
            let dir = temp.path().join(format!("run-{run_no}"));
            let row = run(&dir, policy.policy, producers, args.messages, args.max_time)?;
            let rate = row.published as f64 / row.elapsed.as_secs_f64().max(1e-9);
            let stopped = if row.published < args.messages {
                any_stopped = true;
                "*"
            } else {
                ""
            };
            println!(
                "{:<20} {:>9} {:>10} {:>10.0} {:>9.1}  {}",
                policy.name,
                producers,
                format!("{}{stopped}", row.published),
                rate,
                row.close.as_secs_f64() * 1e3,
                policy.durable
            );
            // Free the disk space of the preallocated segment at once.
            std::fs::remove_dir_all(&dir)?;
        }
    }
    println!();
    if any_stopped {
        println!("* stopped by the time limit (--max-seconds) before publishing every message");
    }
    println!(
        "Under every policy a returned publish survives a crash of the process; the policies \
         differ in what survives a power loss (docs/guarantees.md)."
    );
    println!("every run's messages were all present after reopening its store");
    Ok(())
}
