//! The child process of the SIGKILL crash test (`tests/sigkill_crash.rs`).
//!
//! It opens the store in `STORE_DIR` with `FsyncPolicy::Always` and runs a seeded random mix
//! of publishes, batch publishes, receives with ack, receives with nack (requeue) and held
//! deliveries settled later, forever, on top of whatever the store already holds. The parent
//! kills it with SIGKILL at a random moment and checks the reopened store against what this
//! process reported.
//!
//! ```text
//! cargo run --example crash_child -- STORE_DIR SEED
//! ```
//!
//! Each line on stdout is written with one `write` call and flushed at once:
//!
//! | Line | Meaning |
//! |------|---------|
//! | `O` | the store is open |
//! | `p FIRST N QUEUE` | about to publish N messages (ids FIRST.., one atomic batch if N > 1) |
//! | `P ID` | a single publish returned Ok |
//! | `B ID ID ...` | a batch publish returned Ok |
//! | `r QUEUE` | about to receive from QUEUE |
//! | `D ID COUNT` | received message ID with that delivery count |
//! | `Z` | the receive found the queue empty |
//! | `S ID` | about to ack ID |
//! | `A ID` | the ack returned Ok |
//! | `Q ID` | about to nack ID with requeue |
//! | `R ID` | the nack returned Ok |
//! | `E ...` | an operation failed or returned something wrong; the process exits with 3 |
//!
//! The payload of message `id` is a pure function of `id` ([`payload`]), so the parent can
//! recompute it, and so can a message published again under an id whose first publish was
//! lost in a crash.

#[path = "../tests/common/seeded.rs"]
mod seeded;

use seeded::{child_payload as payload, Rng};

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use walq::{FsyncPolicy, MessageId, Queue, Store, StoreOptions};

/// The queues the child uses.
const QUEUES: [&str; 2] = ["alpha", "beta"];
/// Small segments, so that roll-overs happen while the child is killed.
const SEGMENT_SIZE: u64 = 256 << 10;
/// Most deliveries held unsettled at once.
const MAX_HELD: usize = 6;
/// Above this many live messages the mix leans towards acks.
const HIGH_WATER: u64 = 100;
/// A child left running by a crashed parent gives up after this long.
const MAX_RUN_TIME: Duration = Duration::from_secs(300);

/// Writes protocol lines to stdout, one `write` call per line.
struct Out(std::io::StdoutLock<'static>);

impl Out {
    /// Writes and flushes one line; a closed stdout (the parent is gone) ends the process.
    fn line(&mut self, text: std::fmt::Arguments<'_>) -> Result<(), String> {
        let line = format!("{text}\n");
        self.0
            .write_all(line.as_bytes())
            .and_then(|()| self.0.flush())
            .map_err(|e| format!("stdout: {e}"))
    }
}

macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        $out.line(format_args!($($arg)*))?
    };
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(seed)) = (args.get(1), args.get(2).and_then(|s| s.parse().ok())) else {
        eprintln!("usage: crash_child STORE_DIR SEED");
        return ExitCode::from(2);
    };
    let mut out = Out(std::io::stdout().lock());
    match run(dir, seed, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            // Best effort: the parent reads this line as a failure of the child.
            let _ = out.line(format_args!("E {why}"));
            eprintln!("crash_child: {why}");
            ExitCode::from(3)
        }
    }
}

fn run(dir: &str, seed: u64, out: &mut Out) -> Result<(), String> {
    let options = StoreOptions::new()
        .fsync(FsyncPolicy::Always)
        .segment_size(SEGMENT_SIZE);
    let store = Store::open(dir, options).map_err(|e| format!("open: {e}"))?;
    let queues: Vec<Queue> = QUEUES
        .iter()
        .map(|name| store.declare_queue(name))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("declare: {e}"))?;
    say!(out, "O");
    let mut rng = Rng(seed);
    let mut held: Vec<(usize, MessageId)> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < MAX_RUN_TIME {
        let qi = rng.below(QUEUES.len() as u64) as usize;
        let stats = store.stats();
        let crowded = stats.ready + stats.unacked > HIGH_WATER;
        let roll = if crowded {
            40 + rng.below(60)
        } else {
            rng.below(100)
        };
        match roll {
            0..=29 => publish(&store, &queues[qi], qi, 1, out)?,
            30..=39 => {
                let n = 2 + rng.below(5) as usize;
                publish(&store, &queues[qi], qi, n, out)?;
            }
            40..=64 => {
                if let Some(id) = receive(&queues[qi], qi, out)? {
                    ack(&queues[qi], id, out)?;
                }
            }
            65..=79 => {
                if let Some(id) = receive(&queues[qi], qi, out)? {
                    requeue(&queues[qi], id, out)?;
                }
            }
            80..=89 if held.len() < MAX_HELD => {
                if let Some(id) = receive(&queues[qi], qi, out)? {
                    held.push((qi, id));
                }
            }
            _ if !held.is_empty() => {
                let (qi, id) = held.swap_remove(rng.below(held.len() as u64) as usize);
                if rng.below(5) < 3 {
                    ack(&queues[qi], id, out)?;
                } else {
                    requeue(&queues[qi], id, out)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn publish(store: &Store, queue: &Queue, qi: usize, n: usize, out: &mut Out) -> Result<(), String> {
    // Single-threaded, so the next id is the one this publish gets.
    let first = store.stats().next_message_id;
    let payloads: Vec<Vec<u8>> = (first..first + n as u64).map(payload).collect();
    say!(out, "p {first} {n} {}", QUEUES[qi]);
    let ids: Vec<u64> = if n == 1 {
        vec![
            queue
                .publish(&payloads[0])
                .map_err(|e| format!("publish: {e}"))?
                .0,
        ]
    } else {
        queue
            .publish_batch(&payloads)
            .map_err(|e| format!("publish_batch: {e}"))?
            .iter()
            .map(|id| id.0)
            .collect()
    };
    if ids != (first..first + n as u64).collect::<Vec<_>>() {
        return Err(format!("publish of {n} from {first} returned ids {ids:?}"));
    }
    if n == 1 {
        say!(out, "P {first}");
    } else {
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        say!(out, "B {}", list.join(" "));
    }
    Ok(())
}

fn receive(queue: &Queue, qi: usize, out: &mut Out) -> Result<Option<MessageId>, String> {
    say!(out, "r {}", QUEUES[qi]);
    let Some(d) = queue.try_receive().map_err(|e| format!("receive: {e}"))? else {
        say!(out, "Z");
        return Ok(None);
    };
    if d.payload != payload(d.id.0) {
        return Err(format!("message {} has a wrong payload", d.id.0));
    }
    if &*d.queue != QUEUES[qi] || d.redelivered != (d.delivery_count > 1) {
        return Err(format!("delivery {d:?} is inconsistent"));
    }
    say!(out, "D {} {}", d.id.0, d.delivery_count);
    Ok(Some(d.id))
}

fn ack(queue: &Queue, id: MessageId, out: &mut Out) -> Result<(), String> {
    say!(out, "S {}", id.0);
    queue.ack(id).map_err(|e| format!("ack {}: {e}", id.0))?;
    say!(out, "A {}", id.0);
    Ok(())
}

fn requeue(queue: &Queue, id: MessageId, out: &mut Out) -> Result<(), String> {
    say!(out, "Q {}", id.0);
    queue
        .nack(id, true)
        .map_err(|e| format!("nack {}: {e}", id.0))?;
    say!(out, "R {}", id.0);
    Ok(())
}
