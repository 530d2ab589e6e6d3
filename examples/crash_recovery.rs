//! Crash recovery after a real SIGKILL: what `FsyncPolicy::Always` confirms is what comes
//! back.
//!
//! The program starts itself again as a child process. The child opens a store under
//! `FsyncPolicy::Always` and works on an `orders` queue without pause: it publishes orders,
//! receives and acks some of them, and receives others that it holds without acking. It
//! prints one line for each publish and each ack *after* the call returned (so each line is
//! a promise the store made), and flushes it at once.
//!
//! The parent reads those lines and kills the child with SIGKILL in the middle of its work
//! (after `--kill-after-lines` lines or `--kill-after-ms` milliseconds, whichever comes
//! first, plus up to a millisecond that varies from run to run): no destructor runs, the
//! store is never closed. It then reopens the store and shows
//! what recovery did (the `RecoveryReport`: records replayed, any torn tail cut off), and
//! checks the promises:
//!
//! * every confirmed publish that was not acked is back in the queue, with its payload;
//! * no message whose ack was confirmed comes back;
//! * the messages the child held unacked come back flagged `redelivered`;
//! * the only other message that may appear is the publish in flight at the kill.
//!
//! It prints a verdict and exits with status 1 if any of these is broken.
//!
//! ```text
//! cargo run --release --example crash_recovery -- [--kill-after-lines N] [--kill-after-ms MS]
//!                                                 [--dir STORE_DIR]
//! ```
//! Defaults: 600 lines, 3000 ms. Without `--dir` the store lives in a temporary directory
//! removed at exit; a given directory must not hold a store yet.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use walq::{FsyncPolicy, MessageId, Store, StoreOptions};

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The argument that makes the program the child.
const CHILD_FLAG: &str = "--child";
/// The queue the child works on.
const QUEUE: &str = "orders";
/// Small segments, so that a run rolls over to new segment files.
const SEGMENT_SIZE: u64 = 64 << 10;
/// A child whose parent died gives up after this long.
const CHILD_MAX_RUN_TIME: Duration = Duration::from_secs(120);

/// The payload of order `id`: the parent recomputes it to check what comes back.
fn payload(id: u64) -> Vec<u8> {
    let mut text = format!("order {id}: ");
    // Some bulk, varying with the id, so that records have different lengths.
    text.extend(std::iter::repeat_n('x', (id % 97) as usize * 3));
    text.into_bytes()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some(CHILD_FLAG) {
        match args.get(1) {
            Some(dir) => child(Path::new(dir)),
            None => Err(format!("usage: crash_recovery {CHILD_FLAG} STORE_DIR").into()),
        }
    } else {
        parent(&args)
    };
    match result {
        Ok(code) => code,
        Err(why) => {
            eprintln!("crash_recovery: {why}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------
// The child

/// Protocol lines the child prints, each after the call it reports returned `Ok`:
///
/// | Line | Meaning |
/// |------|---------|
/// | `O` | the store is open |
/// | `P ID` | the publish of ID returned: it is durable |
/// | `H ID` | ID was received and is held, never to be acked |
/// | `S ID` | ID was received; the child is about to ack it |
/// | `A ID` | the ack of ID returned: it is durable |
fn child(dir: &Path) -> AnyResult<ExitCode> {
    let store = Store::open(
        dir,
        StoreOptions::new()
            .fsync(FsyncPolicy::Always)
            .segment_size(SEGMENT_SIZE),
    )?;
    let orders = store.declare_queue(QUEUE)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // One `write` per line, flushed at once, so the parent sees every line written before
    // the kill. A closed stdout (the parent is gone) ends the child.
    let mut say = |line: String| -> AnyResult<()> {
        out.write_all(format!("{line}\n").as_bytes())?;
        out.flush()?;
        Ok(())
    };
    say("O".into())?;
    let started = Instant::now();
    let mut step: u64 = 0;
    while started.elapsed() < CHILD_MAX_RUN_TIME {
        step += 1;
        // Single-threaded: the next id is the one this publish gets.
        let id = store.stats().next_message_id;
        let got = orders.publish(&payload(id))?;
        if got != MessageId(id) {
            return Err(format!("publish returned {got}, expected #{id}").into());
        }
        say(format!("P {id}"))?;
        // Two of every three publishes are followed by a receive; most are acked, every
        // fifth received message is held.
        if step % 3 != 0 {
            if let Some(delivery) = orders.try_receive()? {
                let id = delivery.id.get();
                if delivery.payload != payload(id) {
                    return Err(format!("{} came back with a wrong payload", delivery.id).into());
                }
                if step % 5 == 0 {
                    say(format!("H {id}"))?;
                } else {
                    say(format!("S {id}"))?;
                    orders.ack(delivery.id)?;
                    say(format!("A {id}"))?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------
// The parent

struct Args {
    kill_after_lines: usize,
    kill_after: Duration,
    dir: Option<PathBuf>,
}

const USAGE: &str =
    "usage: crash_recovery [--kill-after-lines N] [--kill-after-ms MS] [--dir STORE_DIR]";

fn parse_args(args: &[String]) -> AnyResult<Args> {
    let mut parsed = Args {
        kill_after_lines: 600,
        kill_after: Duration::from_millis(3000),
        dir: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {USAGE}"));
        match flag.as_str() {
            "--kill-after-lines" => {
                parsed.kill_after_lines = value?
                    .parse()
                    .map_err(|e| format!("--kill-after-lines: {e}; give a number of lines"))?;
            }
            "--kill-after-ms" => {
                let ms: u64 = value?
                    .parse()
                    .map_err(|e| format!("--kill-after-ms: {e}; give milliseconds"))?;
                parsed.kill_after = Duration::from_millis(ms);
            }
            "--dir" => parsed.dir = Some(PathBuf::from(value?)),
            _ => return Err(format!("unknown argument {flag:?}; {USAGE}").into()),
        }
    }
    Ok(parsed)
}

/// What the child confirmed before it died.
#[derive(Default)]
struct Confirmed {
    lines: usize,
    opened: bool,
    published: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    held: BTreeSet<u64>,
    /// An ack announced (`S`) whose confirmation (`A`) never came.
    ack_in_flight: Option<u64>,
}

impl Confirmed {
    fn apply(&mut self, line: &str) -> AnyResult<()> {
        self.lines += 1;
        let mut parts = line.split_whitespace();
        let tag = parts.next().unwrap_or_default();
        let id: Option<u64> = parts.next().and_then(|s| s.parse().ok());
        match (tag, id) {
            ("O", None) => self.opened = true,
            ("P", Some(id)) => {
                self.published.insert(id);
            }
            ("H", Some(id)) => {
                self.held.insert(id);
            }
            ("S", Some(id)) => self.ack_in_flight = Some(id),
            ("A", Some(id)) => {
                self.acked.insert(id);
                self.ack_in_flight = None;
            }
            _ => return Err(format!("the child printed an unexpected line {line:?}").into()),
        }
        Ok(())
    }
}

fn parent(args: &[String]) -> AnyResult<ExitCode> {
    let args = parse_args(args)?;
    let (dir, _temp) = match &args.dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::tempdir()?;
            (temp.path().join("store"), Some(temp))
        }
    };
    println!("== walq: crash recovery after SIGKILL ==");
    println!("store directory: {}", dir.display());

    // ---- run the child and kill it ----
    let exe = std::env::current_exe()?;
    let mut child = Command::new(&exe)
        .arg(CHILD_FLAG)
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let stdout = child.stdout.take().ok_or("the child has no stdout")?;
    println!(
        "child process {} started: publishes, acks and holds orders under FsyncPolicy::Always,",
        child.id()
    );
    println!("printing each publish and ack once the call has returned");
    let (lines_tx, lines) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        // Only complete lines count: a line cut by the kill is not a confirmation.
        let mut reader = BufReader::new(stdout);
        let mut buf = String::new();
        while matches!(reader.read_line(&mut buf), Ok(n) if n > 0) {
            if let Some(line) = buf.strip_suffix('\n') {
                if lines_tx.send(line.to_owned()).is_err() {
                    break;
                }
            }
            buf.clear();
        }
    });
    let mut confirmed = Confirmed::default();
    let started = Instant::now();
    let deadline = started + args.kill_after;
    let mut exited_early = None;
    while confirmed.lines < args.kill_after_lines {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match lines.recv_timeout(deadline - now) {
            Ok(line) => confirmed.apply(&line)?,
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                exited_early = Some(child.wait()?);
                break;
            }
        }
    }
    if let Some(status) = exited_early {
        return Err(format!("the child ended by itself before the kill ({status})").into());
    }
    let read_before_kill = confirmed.lines;
    // Up to a millisecond more, different each run, so that the kill lands at a different
    // point of the child's work: in a write, an fdatasync, between two calls.
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 1000);
    thread::sleep(Duration::from_micros(u64::from(jitter)));
    // `Child::kill` sends SIGKILL on Unix.
    child.kill()?;
    let status = child.wait()?;
    let killed_after = started.elapsed();
    // Lines the child wrote before it died are still in the pipe: read them all.
    reader.join().map_err(|_| "the reader thread panicked")?;
    for line in lines.try_iter() {
        confirmed.apply(&line)?;
    }
    println!(
        "killed the child with SIGKILL after {:.2} s ({status}), having read \
         {read_before_kill} of its lines; {} lines in all",
        killed_after.as_secs_f64(),
        confirmed.lines
    );
    if !confirmed.opened {
        return Err(
            "the child was killed before it opened the store; give it more time \
                    (--kill-after-ms)"
                .into(),
        );
    }
    let next_id = confirmed.published.last().map_or(0, |id| id + 1);
    // Confirmed, not acked, and not being acked at the kill (that ack may have landed).
    let expected: BTreeSet<u64> = confirmed
        .published
        .difference(&confirmed.acked)
        .filter(|id| Some(**id) != confirmed.ack_in_flight)
        .copied()
        .collect();
    println!(
        "confirmed by the child: {} publishes, {} acks, {} held unacked; possibly in flight \
         at the kill: publish #{next_id}{}",
        confirmed.published.len(),
        confirmed.acked.len(),
        confirmed.held.len(),
        match confirmed.ack_in_flight {
            Some(id) => format!(", ack of #{id}"),
            None => String::new(),
        }
    );

    // ---- reopen ----
    println!();
    println!("-- reopening the store --");
    let store = Store::open(&dir, StoreOptions::new().fsync(FsyncPolicy::Always))?;
    let report = store.recovery_report().clone();
    println!(
        "recovery: {} segment(s) scanned, {} records replayed ({} bytes)",
        report.segments, report.records, report.bytes
    );
    match &report.truncated {
        None => println!("recovery: the log ended cleanly, no torn tail to cut"),
        Some(t) => println!(
            "recovery: torn tail cut at segment {} offset {} ({}; {} frame(s) discarded)",
            t.segment, t.offset, t.reason, t.discarded_frames
        ),
    }
    for path in &report.removed_temp_files {
        println!(
            "recovery: removed the leftover temporary file {}",
            path.display()
        );
    }
    let orders = store.queue(QUEUE)?;
    let stats = orders.stats();
    println!(
        "queue {QUEUE:?}: {} ready, {} unacked, {} acked in the log",
        stats.ready, stats.unacked, stats.acked
    );

    // Receive everything (without acking: the store stays as recovery left it).
    let mut back: BTreeMap<u64, (bool, bool)> = BTreeMap::new();
    while let Some(delivery) = orders.try_receive()? {
        let id = delivery.id.get();
        let intact = delivery.payload == payload(id);
        back.insert(id, (intact, delivery.redelivered));
    }
    drop(orders);
    store.close()?;

    // ---- the checks ----
    println!();
    println!("-- checks --");
    let mut failures = 0;
    let mut check = |ok: bool, line: String| {
        println!("[{}] {line}", if ok { " ok " } else { "FAIL" });
        if !ok {
            failures += 1;
        }
    };
    let missing: Vec<u64> = expected
        .iter()
        .filter(|id| !back.contains_key(id))
        .copied()
        .collect();
    check(
        missing.is_empty(),
        format!(
            "every confirmed, unacked publish is back: {} of {}{}",
            expected.len() - missing.len(),
            expected.len(),
            list(" missing:", &missing)
        ),
    );
    let resurrected: Vec<u64> = confirmed
        .acked
        .iter()
        .filter(|id| back.contains_key(id))
        .copied()
        .collect();
    check(
        resurrected.is_empty(),
        format!(
            "no message with a confirmed ack came back: {} of {}{}",
            resurrected.len(),
            confirmed.acked.len(),
            list(" back:", &resurrected)
        ),
    );
    let damaged: Vec<u64> = back
        .iter()
        .filter(|(_, (intact, _))| !intact)
        .map(|(id, _)| *id)
        .collect();
    check(
        damaged.is_empty(),
        format!(
            "every payload is intact: {} of {}{}",
            back.len() - damaged.len(),
            back.len(),
            list(" damaged:", &damaged)
        ),
    );
    let not_flagged: Vec<u64> = confirmed
        .held
        .iter()
        .filter(|id| back.get(id).is_some_and(|(_, redelivered)| !redelivered))
        .copied()
        .collect();
    check(
        not_flagged.is_empty(),
        format!(
            "the {} held deliveries came back flagged redelivered{}",
            confirmed.held.len(),
            list(" not flagged:", &not_flagged)
        ),
    );
    let unexplained: Vec<u64> = back
        .keys()
        .filter(|id| {
            !expected.contains(id) && **id != next_id && Some(**id) != confirmed.ack_in_flight
        })
        .copied()
        .collect();
    check(
        unexplained.is_empty(),
        format!(
            "nothing else came back but what was in flight{}",
            list(" unexplained:", &unexplained)
        ),
    );
    let in_flight = if back.contains_key(&next_id) {
        "present"
    } else {
        "absent"
    };
    println!(
        "       (the publish of #{next_id} in flight at the kill is {in_flight}: either is \
         allowed, it was never confirmed)"
    );
    if let Some(id) = confirmed.ack_in_flight {
        let state = if back.contains_key(&id) {
            "did not land: the message is back"
        } else {
            "landed: the message is gone"
        };
        println!("       (the ack of #{id} in flight at the kill {state}; either is allowed)");
    }

    println!();
    if failures == 0 {
        println!(
            "verdict: PASS: all {} confirmed messages were recovered and none of the {} acked \
             came back",
            expected.len(),
            confirmed.acked.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("verdict: FAIL: {failures} guarantee(s) violated");
        Ok(ExitCode::from(1))
    }
}

/// ` label 1 2 3` (at most 10 ids), or nothing for an empty list.
fn list(label: &str, ids: &[u64]) -> String {
    if ids.is_empty() {
        return String::new();
    }
    let mut shown: Vec<String> = ids.iter().take(10).map(|id| format!("#{id}")).collect();
    if ids.len() > 10 {
        shown.push(format!("and {} more", ids.len() - 10));
    }
    format!("{label} {}", shown.join(" "))
}
