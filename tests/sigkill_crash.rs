//! Proves the durability contract against real process death: a child process
//! (`examples/crash_child.rs`) runs a random workload with `FsyncPolicy::Always` and is killed
//! with SIGKILL at a random moment, over and over on one store whose state accumulates. After
//! every kill the store reopens and holds every confirmed, unacked message exactly once with
//! its payload; no confirmed ack comes back; nothing that was never published appears; an
//! interrupted batch is all there or all gone; message ids continue densely; and delivery
//! counts continue exactly from the last delivery the child reported.
//!
//! The child reports each operation on stdout before it starts it (`p`, `r`, `S`, `Q`) and
//! after it returned Ok (`P`, `B`, `D`, `A`, `R`), so the parent knows both what was
//! confirmed and which single operation may have been in flight at the kill.
//!
//! One kill in four counts its random delay (5 to 80 ms) from the spawn, so it often lands
//! while the child is still recovering; the others count it from the moment the store is
//! open. After each check the parent requeues every message it drained (only delivery counts
//! change) and leaves the store to the next child; now and then it closes the store cleanly,
//! so Commit markers end up in the middle of the log.
//!
//! Kills default to 200 (`WALQ_KILLS=<n>` for more); the seed of the whole run is
//! `WALQ_SEED` (default fixed). A failure names the seed and the kill number. Unix only
//! (`Child::kill` sends SIGKILL there).
#![cfg(unix)]

mod common;

use common::seeded::{child_payload as payload, Rng};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use walq::{FsyncPolicy, Store, StoreOptions};

const QUEUES: [&str; 2] = ["alpha", "beta"];
const SEGMENT_SIZE: u64 = 256 << 10;

/// `target/<profile>/examples/crash_child`, built up to date.
fn child_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    // .../target/<profile>/deps/sigkill_crash-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps")
        .to_path_buf();
    let mut build = Command::new(env!("CARGO"));
    build.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--quiet",
        "--example",
        "crash_child",
    ]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        build.env("CARGO_TARGET_DIR", target);
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build --example crash_child failed");
    let binary = profile_dir
        .join("examples")
        .join(format!("crash_child{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.is_file(), "{} was not built", binary.display());
    binary
}

/// A running child. Dropping it kills the child, so that a failing test leaves no process
/// behind.
struct Running {
    child: Child,
    /// Complete stdout lines, from a reader thread that ends at EOF.
    lines: Receiver<String>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    got: Vec<String>,
}

impl Running {
    fn spawn(binary: &Path, dir: &Path, seed: u64) -> Running {
        let mut child = Command::new(binary)
            .arg(dir)
            .arg(seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn crash_child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            // Read until EOF: the pipe closes when the killed child is gone.
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if buf.ends_with(b"\n") => {
                        buf.pop();
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                    // A line cut short by the kill: the child had not finished writing it,
                    // so it confirms nothing (and an announcement cut short announced an
                    // operation that had not started).
                    Ok(_) => break,
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stderr.read_to_end(&mut bytes);
            bytes
        });
        Running {
            child,
            lines,
            stderr: Some(stderr),
            got: Vec::new(),
        }
    }

    /// Waits until the child reports its store open (`O`), at most `timeout`.
    fn wait_open(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.got.iter().any(|l| l == "O") {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.got.push(line),
                Err(_) => return false,
            }
        }
        true
    }

    /// SIGKILLs the child and returns whether it was still running, its exit status, its
    /// complete stdout lines and its stderr.
    fn kill(mut self) -> (bool, String, Vec<String>, String) {
        let running = self.child.try_wait().expect("try_wait").is_none();
        // On Unix, `kill` sends SIGKILL.
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait for the child");
        let mut lines = std::mem::take(&mut self.got);
        lines.extend(self.lines.iter());
        let stderr = self.stderr.take().expect("stderr").join().expect("reader");
        (
            running,
            format!("{status}"),
            lines,
            String::from_utf8_lossy(&stderr).into_owned(),
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Waiting in its queue.
    Ready,
    /// Received by the child, not settled.
    Delivered,
    /// The child started to ack it (`S`) and did not report the result.
    Acking,
    /// The child started to requeue it (`Q`) and did not report the result.
    Requeuing,
}

#[derive(Debug, Clone)]
struct Msg {
    queue: String,
    /// The last delivery count known for certain (0: never delivered).
    count: u32,
    st: St,
}

/// What the parent knows about the store.
#[derive(Debug, Default)]
struct Model {
    msgs: BTreeMap<u64, Msg>,
    acked: BTreeSet<u64>,
    /// The id the next publish gets.
    next_id: u64,
    /// A publish announced (`p`) and not confirmed: first id, count, queue.
    publishing: Option<(u64, u64, String)>,
    /// A receive announced (`r`) and not reported.
    receiving: Option<String>,
}

#[derive(Debug, Default)]
struct Summary {
    kills: u64,
    opened: u64,
    lines: u64,
    confirmed: u64,
    verified: u64,
    /// Publishes in flight at a kill whose messages were there after it, or were not.
    kept_in_flight: u64,
    lost_in_flight: u64,
    /// Acks in flight at a kill that had taken effect, or had not.
    acks_applied: u64,
    acks_not_applied: u64,
    /// Receives in flight at a kill whose Deliver record counted.
    receives_counted: u64,
    truncated: u64,
    max_live: usize,
    max_log_bytes: u64,
    /// Kills that waited for the store to open, and the total time that took.
    waited: u32,
    open_time: Duration,
}

fn parse_ids(words: &[&str]) -> Vec<u64> {
    words
        .iter()
        .map(|w| w.parse().expect("numeric id"))
        .collect()
}

impl Model {
    /// Applies the child's report of one run, checking each line against what came before.
    fn apply(&mut self, lines: &[String], sum: &mut Summary) -> Result<(), String> {
        for (n, line) in lines.iter().enumerate() {
            self.apply_line(line, sum)
                .map_err(|e| format!("line {} {line:?}: {e}", n + 1))?;
            sum.lines += 1;
        }
        Ok(())
    }

    fn apply_line(&mut self, line: &str, sum: &mut Summary) -> Result<(), String> {
        let words: Vec<&str> = line.split(' ').collect();
        let busy = self.publishing.is_some() || self.receiving.is_some();
        let unsettled = |m: &Msg| matches!(m.st, St::Acking | St::Requeuing);
        if busy || self.msgs.values().any(unsettled) {
            // The child runs one operation at a time: each announcement is followed by its
            // result before the next one.
            if !matches!(words[0], "P" | "B" | "D" | "Z" | "A" | "R") {
                return Err("a new operation began before the previous one ended".into());
            }
        }
        match words.as_slice() {
            ["O"] => {}
            ["E", ..] => return Err("the child reported a failure".into()),
            ["p", first, n, queue] => {
                let first: u64 = first.parse().map_err(|_| "bad id")?;
                if first != self.next_id {
                    return Err(format!(
                        "publish from id {first}, expected {}",
                        self.next_id
                    ));
                }
                self.publishing = Some((first, n.parse().map_err(|_| "bad n")?, queue.to_string()));
            }
            ["P" | "B", ids @ ..] => {
                let (first, n, queue) = self.publishing.take().ok_or("unannounced publish")?;
                let ids = parse_ids(ids);
                if ids != (first..first + n).collect::<Vec<_>>() {
                    return Err(format!("ids {ids:?} for {n} announced from {first}"));
                }
                for id in ids {
                    let msg = Msg {
                        queue: queue.clone(),
                        count: 0,
                        st: St::Ready,
                    };
                    self.msgs.insert(id, msg);
                    sum.confirmed += 1;
                }
                self.next_id = first + n;
            }
            ["r", queue] => self.receiving = Some(queue.to_string()),
            ["Z"] => {
                self.receiving.take().ok_or("unannounced receive")?;
            }
            ["D", id, count] => {
                let queue = self.receiving.take().ok_or("unannounced receive")?;
                let id: u64 = id.parse().map_err(|_| "bad id")?;
                let count: u32 = count.parse().map_err(|_| "bad count")?;
                if self.acked.contains(&id) {
                    return Err(format!("acked message {id} delivered again"));
                }
                let m = self.msgs.get_mut(&id).ok_or("unknown message delivered")?;
                if m.queue != queue || m.st != St::Ready {
                    return Err(format!("delivered from {queue}, model has {m:?}"));
                }
                if count != m.count + 1 {
                    return Err(format!("delivery count {count}, expected {}", m.count + 1));
                }
                m.count = count;
                m.st = St::Delivered;
                sum.confirmed += 1;
            }
            ["S" | "Q", id] => {
                let id: u64 = id.parse().map_err(|_| "bad id")?;
                let m = self
                    .msgs
                    .get_mut(&id)
                    .ok_or("settling an unknown message")?;
                if m.st != St::Delivered {
                    return Err(format!("settling a message in state {:?}", m.st));
                }
                m.st = if words[0] == "S" {
                    St::Acking
                } else {
                    St::Requeuing
                };
            }
            ["A", id] => {
                let id: u64 = id.parse().map_err(|_| "bad id")?;
                match self.msgs.remove(&id) {
                    Some(Msg { st: St::Acking, .. }) => {}
                    other => return Err(format!("ack confirmed for {other:?}")),
                }
                self.acked.insert(id);
                sum.confirmed += 1;
            }
            ["R", id] => {
                let id: u64 = id.parse().map_err(|_| "bad id")?;
                let m = self
                    .msgs
                    .get_mut(&id)
                    .ok_or("requeue of an unknown message")?;
                if m.st != St::Requeuing {
                    return Err(format!("requeue confirmed in state {:?}", m.st));
                }
                m.st = St::Ready;
                sum.confirmed += 1;
            }
            _ => return Err("unknown line".into()),
        }
        Ok(())
    }

    /// Opens the store after a kill, drains every queue and checks what it holds against the
    /// model; then requeues everything (so only delivery counts change) and updates the model
    /// to the state found.
    fn check(&mut self, dir: &Path, close: bool, sum: &mut Summary) -> Result<(), String> {
        // The parent's own writes need no fsync each (nothing crashes while it runs; it
        // syncs once at the end) and no Deliver records (its requeues record the delivery
        // counts): this keeps the log, which every start-up scans, from growing faster.
        let options = StoreOptions::new()
            .fsync(FsyncPolicy::Never)
            .persist_deliveries(false)
            .segment_size(SEGMENT_SIZE);
        let store = Store::open(dir, options).map_err(|e| format!("reopen failed: {e}"))?;
        if store.recovery_report().truncated.is_some() {
            sum.truncated += 1;
        }
        let stats = store.stats();
        let next_id = stats.next_message_id;
        sum.max_log_bytes = sum.max_log_bytes.max(stats.log_bytes);
        let names: Vec<String> = store.queue_names().iter().map(|n| n.to_string()).collect();
        if names.iter().any(|n| !QUEUES.contains(&n.as_str())) {
            return Err(format!("unexpected queues {names:?}"));
        }
        // Drain.
        let mut seen: BTreeMap<u64, (String, u32)> = BTreeMap::new();
        for name in &names {
            let q = store.queue(name).map_err(|e| e.to_string())?;
            let mut order = Vec::new();
            while let Some(d) = q.try_receive().map_err(|e| format!("receive: {e}"))? {
                let id = d.id.0;
                if d.payload != payload(id) {
                    return Err(format!("message {id} has a wrong payload"));
                }
                if d.redelivered != (d.delivery_count > 1) {
                    return Err(format!("message {id}: redelivered flag {d:?}"));
                }
                if seen.insert(id, (name.clone(), d.delivery_count)).is_some() {
                    return Err(format!("message {id} delivered twice"));
                }
                order.push((d.delivery_count == 1, id));
            }
            // Delivered-before messages first, oldest id first; then the others by id.
            let mut sorted = order.clone();
            sorted.sort_unstable();
            if order != sorted {
                return Err(format!("queue {name} delivered in order {order:?}"));
            }
        }

        // Nothing is in flight after an open; the counters agree with what was drained.
        if stats.unacked != 0 || stats.ready != seen.len() as u64 {
            return Err(format!(
                "stats say {} ready and {} unacked, {} drained",
                stats.ready,
                stats.unacked,
                seen.len()
            ));
        }

        // Every message the model knows must be there, except one whose ack was in flight.
        let mut bumped = Vec::new();
        for (id, m) in &self.msgs {
            match (seen.get(id), m.st) {
                (None, St::Acking) => {}
                (None, st) => return Err(format!("message {id} ({st:?}, confirmed) is lost")),
                (Some((queue, _)), _) if *queue != m.queue => {
                    return Err(format!("message {id} moved from {} to {queue}", m.queue));
                }
                (Some((_, count)), _) if *count == m.count + 1 => {}
                (Some((queue, count)), St::Ready)
                    if *count == m.count + 2 && self.receiving.as_ref() == Some(queue) =>
                {
                    // The receive in flight at the kill wrote its Deliver record.
                    bumped.push(*id);
                }
                (Some((_, count)), st) => {
                    return Err(format!(
                        "message {id} ({st:?}) came back with delivery count {count}, last \
                         confirmed {}",
                        m.count
                    ));
                }
            }
        }
        if bumped.len() > 1 {
            return Err(format!("one receive in flight, {bumped:?} all counted"));
        }
        sum.receives_counted += bumped.len() as u64;
        // Nothing else may be there but the publish in flight, all of it or none of it.
        let extra: Vec<u64> = seen
            .keys()
            .filter(|id| !self.msgs.contains_key(id))
            .copied()
            .collect();
        if let Some(id) = extra.iter().find(|id| self.acked.contains(id)) {
            return Err(format!("acked message {id} came back"));
        }
        let in_flight: Vec<u64> = self
            .publishing
            .as_ref()
            .map(|(first, n, _)| (*first..first + n).collect())
            .unwrap_or_default();
        if !extra.is_empty() && extra != in_flight {
            return Err(format!(
                "messages {extra:?} appeared; only {in_flight:?} were in flight"
            ));
        }
        let expected_next = self.next_id + extra.len() as u64;
        if next_id != expected_next {
            return Err(format!(
                "next message id {next_id}, expected {expected_next}"
            ));
        }
        if let Some((_, _, queue)) = self.publishing.take() {
            for id in &extra {
                if seen[id] != (queue.clone(), 1) {
                    return Err(format!(
                        "in-flight message {id} came back as {:?}",
                        seen[id]
                    ));
                }
                self.msgs.insert(
                    *id,
                    Msg {
                        queue: queue.clone(),
                        count: 0,
                        st: St::Ready,
                    },
                );
            }
            if extra.is_empty() {
                sum.lost_in_flight += 1;
            } else {
                sum.kept_in_flight += 1;
            }
        }
        self.msgs.retain(|id, m| {
            let kept = seen.contains_key(id);
            if m.st == St::Acking {
                if kept {
                    sum.acks_not_applied += 1;
                } else {
                    sum.acks_applied += 1;
                    self.acked.insert(*id);
                }
            }
            kept
        });
        sum.verified += seen.len() as u64;
        sum.max_live = sum.max_live.max(seen.len());

        // Put everything back, and carry on from the state found.
        for (id, (_, count)) in &seen {
            store
                .nack(walq::MessageId(*id), true)
                .map_err(|e| format!("requeue {id}: {e}"))?;
            let m = self.msgs.get_mut(id).ok_or("lost track")?;
            m.count = *count;
            m.st = St::Ready;
        }
        self.receiving = None;
        self.next_id = next_id;
        store.sync().map_err(|e| format!("sync: {e}"))?;
        if close {
            store.close().map_err(|e| format!("close: {e}"))?;
        }
        Ok(())
    }
}

#[test]
fn sigkill_at_random_moments_keeps_the_durability_contract() {
    let kills: u64 = std::env::var("WALQ_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("WALQ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x51_6B11);
    let binary = child_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let store_dir = dir.path().join("store");
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let mut sum = Summary::default();
    let started = Instant::now();
    for kill in 1..=kills {
        let fail = |why: String| -> ! {
            panic!(
                "seed {seed}, kill {kill}: {why}\nrerun with WALQ_SEED={seed} WALQ_KILLS={kill} \
                 cargo test --test sigkill_crash -- --nocapture (same child seeds and delays; \
                 the exact kill points depend on timing)"
            )
        };
        let child_seed = rng.next();
        let spawned = Instant::now();
        let mut running = Running::spawn(&binary, &store_dir, child_seed);
        // One kill in four counts from the spawn, so it often lands during recovery; the
        // others count from the moment the store is open, so they land in the workload.
        if rng.below(4) != 0 {
            if !running.wait_open(Duration::from_secs(60)) {
                let (_, status, lines, stderr) = running.kill();
                fail(format!(
                    "the child did not open the store ({status}): {lines:?}\n{stderr}"
                ));
            }
            sum.open_time += spawned.elapsed();
            sum.waited += 1;
        }
        std::thread::sleep(Duration::from_millis(5 + rng.below(76)));
        let (was_running, status, lines, stderr) = running.kill();
        if !was_running {
            fail(format!(
                "the child exited by itself ({status}) before the kill:\n{}\n{stderr}",
                lines.join("\n")
            ));
        }
        sum.kills += 1;
        if lines.first().is_some_and(|l| l == "O") {
            sum.opened += 1;
        }
        if let Err(why) = model.apply(&lines, &mut sum) {
            fail(format!("child seed {child_seed}: {why}\nstderr: {stderr}"));
        }
        if let Err(why) = model.check(&store_dir, rng.below(4) == 0, &mut sum) {
            fail(format!(
                "after the kill (child seed {child_seed}, last lines {:?}): {why}",
                &lines[lines.len().saturating_sub(5)..]
            ));
        }
    }
    println!(
        "sigkill crash test, seed {seed}: {} kills in {:.1?} ({} reached the workload), {} \
         protocol lines, {} confirmed operations checked, {} recovered messages verified \
         (at most {} live); in flight at the kill: publishes kept {} / lost {}, acks applied \
         {} / not {}, receives counted {}; {} torn tails cut; log {} KiB; start-up {:.1?} on \
         average",
        sum.kills,
        started.elapsed(),
        sum.opened,
        sum.lines,
        sum.confirmed,
        sum.verified,
        sum.max_live,
        sum.kept_in_flight,
        sum.lost_in_flight,
        sum.acks_applied,
        sum.acks_not_applied,
        sum.receives_counted,
        sum.truncated,
        sum.max_log_bytes >> 10,
        sum.open_time / sum.waited.max(1),
    );
    // The kills hit a working child, not only its start-up, and some of them interrupted an
    // operation (the in-flight cases the oracle tells apart).
    assert!(
        sum.opened > 0 && sum.confirmed > 0 && sum.verified > 0,
        "{sum:?}"
    );
    if kills >= 100 {
        assert!(
            sum.kept_in_flight + sum.lost_in_flight > 0,
            "no kill interrupted a publish: {sum:?}"
        );
    }
}
