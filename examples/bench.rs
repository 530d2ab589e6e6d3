//! The bench tool: a fixed matrix of workloads, measured against the raw disk they run on.
//!
//! ```text
//! cargo run --release --example bench -- [--quick] [--dir DIR] [--rounds N]
//! ```
//!
//! Everything happens in a temporary directory under `DIR` (default: `WALQ_BENCH_DIR` if
//! set, else the system's temporary directory), removed at exit.
//!
//! The disk-bound workloads run interleaved: each runs for a short slice in turn, round
//! robin, until each has had its time. Disks (virtual ones above all) change speed from
//! one second to the next; interleaving exposes walq and the raw references to the same
//! conditions, so that their ratios mean something. They are:
//!
//! * `raw append 256 B`: 256-byte append + `fdatasync` per op, on a file that grows;
//! * `raw overwrite 256 B (zero-filled)`: 256-byte overwrite + `fdatasync` per op,
//!   sequentially through a file written full of zeros (and synced) beforehand;
//! * `raw overwrite 256 B (fallocated)`: the same through a file reserved with `fallocate`
//!   and never written, as walq preallocates its segments (a diagnostic row);
//! * `raw append 1 MiB`: 1 MiB append + `fdatasync` per op (bandwidth);
//! * `raw write 32 × 256 B`: 8 KiB writes + `fdatasync` per op, sequentially through a fresh
//!   `fallocate`d file, counted as 32 messages each: what 32 producers' group commit could
//!   reach if every `fdatasync` carried all 32 messages and nothing else cost time;
//! * walq under `FsyncPolicy::Always`: 256-byte publishes from 1 and from 32 threads, and
//!   batches of 1000 1-KiB messages.
//!
//! Then, one after the other (each first untimed for the throughput, then call by call for
//! the latencies): 256-byte appends to a plain file with one `write(2)` each and no sync
//! (the ceiling of any engine that makes one system call per message), 256-byte publishes
//! under `FsyncPolicy::Never`, the publish -> receive -> ack cycle under `Never`, and
//! batches of 100 256-byte publishes under `Never`. Then recovery (opening a store of about
//! 200 MB of 1-KiB messages) against a plain sequential read of the same segment files,
//! both with the files in the page cache (dropping the cache needs privileges a benchmark
//! should not assume), five times each in turn; the rows show the medians. Last, in a fresh child process,
//! the resident memory per queued message (1,000,000 messages of 100 B under `Never`,
//! `VmRSS` before and after).
//!
//! The whole matrix runs `--rounds` times (default 3; `--quick`: 1, with shorter phases and
//! a 40 MB recovery store, well under a minute). The first table shows, for each workload,
//! the round with the median throughput; ratios are computed within each round and the
//! median over rounds is compared with the targets. MB is 10^6 bytes: of payload, or of
//! log for the two recovery rows.
//!
//! `--compaction-latency [DIR]` measures something else, alone: the latency of durable
//! 256-byte publishes (`FsyncPolicy::Always`, one producer) on a store holding 300,000
//! messages of which every 30th is unacked, first with no compaction, then while another
//! thread runs `Store::compact` back to back (checkpoints of 10,000 unsettled messages,
//! relocation of the stragglers, segment deletion). It prints p50, p99 and the maximum.
//!
//! `--memory [COUNT] [DIR]` measures memory alone: COUNT (default 10,000,000) messages of
//! 100 B published under `FsyncPolicy::Never` in a fresh child process, then the store
//! reopened in another; for each, the growth of `VmRSS` and `RssAnon` per queued message.
//! `RssAnon` is the heap (what the engine holds per message); `VmRSS` also counts the
//! pages of mapped segment files the process touched, which the kernel can drop.
//!
//! The tool re-runs itself with `--rss-child PHASE STORE COUNT` to measure memory in a
//! fresh process; that flag is not meant to be used by hand.
//!
//! For profilers, `--profile WORKLOAD COUNT [DIR]` runs one workload a fixed number of
//! times and nothing else (deterministic instruction counts under `valgrind`):
//! `never-publish` (256 B under `Never`), `cycle` (publish -> receive -> ack under `Never`),
//! `always-publish` (256 B under `Always`), `always-publish:T` (the same from T threads,
//! COUNT in all), or `recovery` (opens a store of COUNT 1-KiB messages, built first).

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use walq::{FsyncPolicy, Queue, Store, StoreOptions};

type AnyResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// The phase lengths of one run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// How long each disk-bound workload runs per turn.
    slice: Duration,
    /// How many turns each disk-bound workload gets per round.
    slices: u32,
    /// How long each CPU-bound throughput phase runs.
    cpu: Duration,
    /// How many operations a CPU-bound latency phase times, one by one.
    cpu_latency_ops: usize,
    /// Size of the files of the raw overwrite references.
    overwrite_file: u64,
    /// Size of the file of the raw group reference (fresh blocks for every write).
    group_file: u64,
    /// Approximate log size of the recovery workload.
    recovery_bytes: u64,
    /// Messages queued for the memory measurement.
    rss_messages: u64,
    rounds: usize,
}

impl Plan {
    fn full(rounds: usize) -> Plan {
        Plan {
            slice: Duration::from_millis(100),
            slices: 40,
            cpu: Duration::from_secs(2),
            cpu_latency_ops: 500_000,
            overwrite_file: 64 << 20,
            group_file: 256 << 20,
            recovery_bytes: 200_000_000,
            rss_messages: 1_000_000,
            rounds,
        }
    }

    fn quick(rounds: usize) -> Plan {
        Plan {
            slice: Duration::from_millis(100),
            slices: 10,
            cpu: Duration::from_millis(700),
            cpu_latency_ops: 100_000,
            overwrite_file: 16 << 20,
            group_file: 64 << 20,
            recovery_bytes: 40_000_000,
            rss_messages: 1_000_000,
            rounds,
        }
    }
}

/// One measured workload: how many operations and messages, how many payload bytes, how
/// long, and (if timed one by one) each operation's latency.
#[derive(Debug, Clone, Default)]
struct Sample {
    ops: u64,
    messages: u64,
    bytes: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Sample {
    fn messages_per_s(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// What the median round is chosen by: messages per second, or operations per second
    /// for rows without messages.
    fn rate(&self) -> f64 {
        if self.messages > 0 {
            self.messages_per_s()
        } else {
            self.ops_per_s()
        }
    }

    /// The `p`-quantile (0 < p <= 1) of the recorded latencies (nearest rank); they must be
    /// sorted.
    fn percentile(&self, p: f64) -> Option<Duration> {
        let n = self.latencies.len();
        if n == 0 {
            return None;
        }
        let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
        Some(self.latencies[rank - 1])
    }
}

// The rows of the main table, in order.
const RAW_APPEND: usize = 0;
const RAW_OVERWRITE: usize = 1;
const RAW_FALLOCATED: usize = 2;
const RAW_MIB: usize = 3;
const RAW_GROUP: usize = 4;
const ONE_PRODUCER: usize = 5;
const PRODUCERS_32: usize = 6;
const BATCH: usize = 7;
const RAW_WRITE: usize = 8;
const NEVER: usize = 9;
const CYCLE: usize = 10;
const NEVER_BATCH: usize = 11;
const RECOVERY: usize = 12;
const READ: usize = 13;
const ROWS: [&str; 14] = [
    "raw append 256 B + fdatasync",
    "raw overwrite 256 B + fdatasync (zero-filled file)",
    "raw overwrite 256 B + fdatasync (fallocated file)",
    "raw append 1 MiB + fdatasync",
    "raw write 32 × 256 B at once + fdatasync (fallocated file)",
    "publish 256 B, Always, 1 producer",
    "publish 256 B, Always, 32 producers",
    "publish_batch 1000 × 1 KiB, Always",
    "raw append 256 B, no fdatasync (one write(2) each)",
    "publish 256 B, Never, 1 thread",
    "publish → receive → ack 256 B, Never",
    "publish_batch 100 × 256 B, Never, 1 thread",
    "recovery: Store::open (warm cache)",
    "sequential read of the same files (std::fs, warm cache)",
];

/// The ratios of one round.
#[derive(Debug, Clone, Copy)]
struct Ratios {
    /// The better of raw append and raw overwrite, 256 B + fdatasync, in ops/s.
    raw_small: f64,
    /// Durable publish, 1 producer / `raw_small`.
    one: f64,
    /// Durable publish, 32 producers / 1 producer.
    many: f64,
    /// Messages/s of raw 32 × 256 B writes + fdatasync / durable publish, 1 producer: the
    /// most that group commit of 32 producers could reach over 1 producer on this disk.
    group_ceiling: f64,
    /// Durable publish, 32 producers / messages/s of raw 32 × 256 B writes + fdatasync.
    of_group: f64,
    /// Durable batch MB/s / raw 1 MiB append MB/s.
    batch: f64,
    /// Recovery MB/s / sequential read MB/s.
    recovery: f64,
    /// Raw 256 B overwrite + fdatasync ops/s: fallocated file / zero-filled file.
    fallocated: f64,
    /// Publish under `Never` / raw 256 B write(2) without sync.
    never: f64,
}

impl Ratios {
    fn of(round: &[Sample]) -> Ratios {
        let raw_small = round[RAW_APPEND]
            .ops_per_s()
            .max(round[RAW_OVERWRITE].ops_per_s());
        let one = round[ONE_PRODUCER].messages_per_s();
        Ratios {
            raw_small,
            one: one / raw_small,
            many: round[PRODUCERS_32].messages_per_s() / one,
            group_ceiling: round[RAW_GROUP].messages_per_s() / one,
            of_group: round[PRODUCERS_32].messages_per_s() / round[RAW_GROUP].messages_per_s(),
            batch: round[BATCH].mb_per_s() / round[RAW_MIB].mb_per_s(),
            recovery: round[RECOVERY].mb_per_s() / round[READ].mb_per_s(),
            fallocated: round[RAW_FALLOCATED].ops_per_s() / round[RAW_OVERWRITE].ops_per_s(),
            never: round[NEVER].messages_per_s() / round[RAW_WRITE].ops_per_s(),
        }
    }
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> AnyResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--rss-child") => return rss_child(&args[1..]),
        Some("--profile") => return profile(&args[1..]),
        Some("--compaction-latency") => return compaction_latency(args.get(1)),
        Some("--memory") => return memory(&args[1..]),
        _ => {}
    }
    let mut quick = false;
    let mut dir: Option<PathBuf> = std::env::var_os("WALQ_BENCH_DIR").map(PathBuf::from);
    let mut rounds: Option<usize> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--dir" => dir = Some(PathBuf::from(it.next().ok_or("--dir needs a directory")?)),
            "--rounds" => rounds = Some(it.next().ok_or("--rounds needs a number")?.parse()?),
            "-h" | "--help" => {
                println!("usage: bench [--quick] [--dir DIR] [--rounds N]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    let base = dir.unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let work = tempfile::Builder::new()
        .prefix("walq-bench")
        .tempdir_in(&base)?;
    let plan = if quick {
        Plan::quick(rounds.unwrap_or(1).max(1))
    } else {
        Plan::full(rounds.unwrap_or(3).max(1))
    };
    let started = Instant::now();
    eprintln!(
        "walq bench: {} mode, {} round(s), in {}",
        if quick { "quick" } else { "full" },
        plan.rounds,
        base.display()
    );

    let recovery_dir = work.path().join("recovery-store");
    eprintln!(
        "building the recovery store ({} MB)",
        plan.recovery_bytes / 1_000_000
    );
    build_recovery_store(&recovery_dir, plan.recovery_bytes)?;

    let mut rounds: Vec<Vec<Sample>> = Vec::new();
    for round in 0..plan.rounds {
        let scratch = work.path().join(format!("round-{round}"));
        std::fs::create_dir_all(&scratch)?;
        eprintln!(
            "round {}/{}: disk-bound workloads, interleaved",
            round + 1,
            plan.rounds
        );
        let mut samples = disk_bound(&scratch, &plan)?;
        eprintln!("  raw append, no fdatasync");
        samples.push(raw_write(&scratch, &plan)?);
        eprintln!("  publish, Never");
        samples.push(buffered_publish(&scratch, &plan)?);
        eprintln!("  publish -> receive -> ack, Never");
        samples.push(buffered_cycle(&scratch, &plan)?);
        eprintln!("  publish_batch, Never");
        samples.push(buffered_batches(&scratch, &plan)?);
        eprintln!("  recovery");
        let (open, read) = recovery(&recovery_dir)?;
        samples.push(open);
        samples.push(read);
        for sample in &mut samples {
            sample.latencies.sort_unstable();
        }
        std::fs::remove_dir_all(&scratch)?;
        rounds.push(samples);
    }

    eprintln!("memory per queued message ({} messages)", plan.rss_messages);
    let rss = rss_per_message(work.path(), plan.rss_messages)?;

    print_report(&rounds, &rss, &plan, quick);
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The disk-bound workloads
// ---------------------------------------------------------------------------------------

/// A workload that can run in slices, keeping its state (an open file, a store) between
/// them.
trait Sliced {
    /// Runs for about `slice`, adding what it did to its sample.
    fn run(&mut self, slice: Duration) -> AnyResult<()>;
    /// Cleans up and returns the sample.
    fn finish(self: Box<Self>) -> AnyResult<Sample>;
}

/// Runs the disk-bound workloads round robin, `plan.slices` turns of `plan.slice` each,
/// and returns their samples in row order.
fn disk_bound(dir: &Path, plan: &Plan) -> AnyResult<Vec<Sample>> {
    let mut workloads: Vec<Box<dyn Sliced>> = vec![
        Box::new(RawFile::append(dir, 256)?),
        Box::new(RawFile::overwrite(dir, plan.overwrite_file, false, 1)?),
        Box::new(RawFile::overwrite(dir, plan.overwrite_file, true, 1)?),
        Box::new(RawFile::append(dir, 1 << 20)?),
        Box::new(RawFile::overwrite(dir, plan.group_file, true, 32)?),
        Box::new(Durable::publish(dir, 1)?),
        Box::new(Durable::publish(dir, 32)?),
        Box::new(Durable::batch(dir)?),
    ];
    for _ in 0..plan.slices {
        for workload in &mut workloads {
            workload.run(plan.slice)?;
        }
    }
    workloads.into_iter().map(|w| w.finish()).collect()
}

/// A raw-disk reference: fixed-size writes to a plain file, each followed by `fdatasync`.
struct RawFile {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    /// `None`: append. `Some(len)`: overwrite sequentially within the first `len` bytes,
    /// wrapping around.
    overwrite: Option<u64>,
    /// Each write stands for this many 256-B messages (0: the row counts no messages).
    messages_per_op: u64,
    offset: u64,
    sample: Sample,
}

impl RawFile {
    fn append(dir: &Path, size: usize) -> AnyResult<RawFile> {
        let path = dir.join(format!("raw-append-{size}"));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        Ok(RawFile {
            path,
            file,
            buf: vec![0x5a; size],
            overwrite: None,
            messages_per_op: 0,
            offset: 0,
            sample: Sample::default(),
        })
    }

    /// A file of `len` bytes, either written full of zeros, or only reserved with
    /// `fallocate` (unwritten extents: the first write to each block converts it, a
    /// metadata change `fdatasync` must make durable too). Synced before it is used. Each
    /// write is `messages` × 256 B (the write of a group commit of that many messages).
    fn overwrite(dir: &Path, len: u64, fallocated: bool, messages: u64) -> AnyResult<RawFile> {
        let kind = if fallocated {
            "fallocated"
        } else {
            "zero-filled"
        };
        let path = dir.join(format!("raw-{kind}-{messages}"));
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        if fallocated {
            fs2::FileExt::allocate(&file, len)?;
        } else {
            let zeros = vec![0u8; 1 << 20];
            let mut written = 0;
            while written < len {
                file.write_all(&zeros)?;
                written += zeros.len() as u64;
            }
        }
        file.sync_all()?;
        Ok(RawFile {
            path,
            file,
            buf: vec![0x5a; 256 * messages as usize],
            overwrite: Some(len),
            messages_per_op: if messages > 1 { messages } else { 0 },
            offset: 0,
            sample: Sample::default(),
        })
    }
}

impl Sliced for RawFile {
    fn run(&mut self, slice: Duration) -> AnyResult<()> {
        let start = Instant::now();
        while start.elapsed() < slice {
            let t = Instant::now();
            match self.overwrite {
                None => self.file.write_all(&self.buf)?,
                Some(len) => {
                    if self.offset + self.buf.len() as u64 > len {
                        self.offset = 0;
                    }
                    self.file.write_all_at(&self.buf, self.offset)?;
                    self.offset += self.buf.len() as u64;
                }
            }
            self.file.sync_data()?;
            self.sample.latencies.push(t.elapsed());
            self.sample.ops += 1;
            self.sample.messages += self.messages_per_op;
            self.sample.bytes += self.buf.len() as u64;
        }
        self.sample.elapsed += start.elapsed();
        Ok(())
    }

    fn finish(self: Box<Self>) -> AnyResult<Sample> {
        drop(self.file);
        std::fs::remove_file(&self.path)?;
        Ok(self.sample)
    }
}

fn open_store(dir: &Path, name: &str, policy: FsyncPolicy) -> AnyResult<(Store, Queue)> {
    let store = Store::open(dir.join(name), StoreOptions::new().fsync(policy))?;
    let queue = store.declare_queue("bench")?;
    Ok((store, queue))
}

fn finish_store(store: Store) -> AnyResult<()> {
    let dir = store.dir().to_path_buf();
    store.close()?;
    drop(store);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

/// walq under `FsyncPolicy::Always`: 256-byte publishes from `producers` threads, or
/// batches of 1000 1-KiB messages from one thread; every call timed.
struct Durable {
    store: Store,
    queue: Queue,
    producers: usize,
    /// The batch to publish, or empty for single 256-byte publishes.
    batch: Vec<Vec<u8>>,
    sample: Sample,
}

const PAYLOAD_256: [u8; 256] = [0xa5; 256];

impl Durable {
    fn publish(dir: &Path, producers: usize) -> AnyResult<Durable> {
        let (store, queue) = open_store(dir, &format!("always-{producers}"), FsyncPolicy::Always)?;
        Ok(Durable {
            store,
            queue,
            producers,
            batch: Vec::new(),
            sample: Sample::default(),
        })
    }

    fn batch(dir: &Path) -> AnyResult<Durable> {
        let (store, queue) = open_store(dir, "always-batch", FsyncPolicy::Always)?;
        Ok(Durable {
            store,
            queue,
            producers: 1,
            batch: (0..1000).map(|i| vec![i as u8; 1024]).collect(),
            sample: Sample::default(),
        })
    }

    /// One thread's loop: calls until `slice` has passed since `start`, each timed.
    fn produce(&self, start: Instant, slice: Duration) -> walq::Result<Vec<Duration>> {
        let mut latencies = Vec::new();
        while start.elapsed() < slice {
            let t = Instant::now();
            if self.batch.is_empty() {
                self.queue.publish(&PAYLOAD_256)?;
            } else {
                self.queue.publish_batch(&self.batch)?;
            }
            latencies.push(t.elapsed());
        }
        Ok(latencies)
    }
}

impl Sliced for Durable {
    fn run(&mut self, slice: Duration) -> AnyResult<()> {
        let (latencies, elapsed) = if self.producers == 1 {
            let start = Instant::now();
            let latencies = self.produce(start, slice)?;
            (latencies, start.elapsed())
        } else {
            // Threads are spawned outside the timed part; they start together.
            let barrier = Barrier::new(self.producers + 1);
            let this = &*self;
            std::thread::scope(|s| -> AnyResult<_> {
                let handles: Vec<_> = (0..this.producers)
                    .map(|_| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            this.produce(Instant::now(), slice)
                        })
                    })
                    .collect();
                barrier.wait();
                let start = Instant::now();
                let mut all = Vec::new();
                for handle in handles {
                    all.extend(handle.join().map_err(|_| "producer panicked")??);
                }
                Ok((all, start.elapsed()))
            })?
        };
        let calls = latencies.len() as u64;
        let per_call = if self.batch.is_empty() {
            1
        } else {
            self.batch.len() as u64
        };
        let bytes_per_call = if self.batch.is_empty() {
            PAYLOAD_256.len() as u64
        } else {
            self.batch.iter().map(|m| m.len() as u64).sum()
        };
        self.sample.ops += calls;
        self.sample.messages += calls * per_call;
        self.sample.bytes += calls * bytes_per_call;
        self.sample.elapsed += elapsed;
        self.sample.latencies.extend(latencies);
        Ok(())
    }

    fn finish(self: Box<Self>) -> AnyResult<Sample> {
        finish_store(self.store)?;
        Ok(self.sample)
    }
}

// ---------------------------------------------------------------------------------------
// The CPU-bound workloads and recovery
// ---------------------------------------------------------------------------------------

/// Runs `op` untimed for `plan.cpu` (the throughput), then `latency_ops` more times
/// timing each call (the latencies). Timing every call costs two clock reads, which at
/// these rates would distort the throughput, hence the two phases.
fn cpu_bound(
    plan: &Plan,
    bytes_per_op: u64,
    latency_ops: usize,
    mut op: impl FnMut() -> AnyResult<()>,
) -> AnyResult<Sample> {
    let mut sample = Sample::default();
    let start = Instant::now();
    loop {
        for _ in 0..256 {
            op()?;
        }
        sample.ops += 256;
        if start.elapsed() >= plan.cpu {
            break;
        }
    }
    sample.elapsed = start.elapsed();
    sample.messages = sample.ops;
    sample.bytes = sample.ops * bytes_per_op;
    sample.latencies.reserve(latency_ops);
    for _ in 0..latency_ops {
        let t = Instant::now();
        op()?;
        sample.latencies.push(t.elapsed());
    }
    Ok(sample)
}

/// The ceiling of any engine that hands each message to the operating system with its own
/// system call: 256-byte appends to a plain file, one `write(2)` each, never synced.
fn raw_write(dir: &Path, plan: &Plan) -> AnyResult<Sample> {
    let path = dir.join("raw-write");
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    let buf = [0x5a_u8; 256];
    let sample = cpu_bound(plan, 256, plan.cpu_latency_ops, || {
        file.write_all(&buf)?;
        Ok(())
    })?;
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(sample)
}

/// One thread publishes 256-byte messages under `FsyncPolicy::Never`.
fn buffered_publish(dir: &Path, plan: &Plan) -> AnyResult<Sample> {
    let (store, queue) = open_store(dir, "never-publish", FsyncPolicy::Never)?;
    let payload = [0xa5_u8; 256];
    let sample = cpu_bound(plan, 256, plan.cpu_latency_ops, || {
        queue.publish(&payload)?;
        Ok(())
    })?;
    finish_store(store)?;
    Ok(sample)
}

/// One thread publishes batches of 100 messages of 256 bytes under `FsyncPolicy::Never`:
/// what the per-call costs of a publish (locks, clock reads, timers) leave when shared.
fn buffered_batches(dir: &Path, plan: &Plan) -> AnyResult<Sample> {
    const BATCH: u64 = 100;
    let (store, queue) = open_store(dir, "never-batch", FsyncPolicy::Never)?;
    let payload = [0xa5_u8; 256];
    let batch = [&payload[..]; BATCH as usize];
    // As many messages timed as for single publishes, in a hundredth of the calls.
    let latency_ops = plan.cpu_latency_ops / BATCH as usize;
    let mut sample = cpu_bound(plan, 256 * BATCH, latency_ops, || {
        queue.publish_batch(&batch)?;
        Ok(())
    })?;
    sample.messages = sample.ops * BATCH;
    finish_store(store)?;
    Ok(sample)
}

/// One thread publishes a 256-byte message, receives it and acks it, under
/// `FsyncPolicy::Never`.
fn buffered_cycle(dir: &Path, plan: &Plan) -> AnyResult<Sample> {
    let (store, queue) = open_store(dir, "never-cycle", FsyncPolicy::Never)?;
    let payload = [0xa5_u8; 256];
    let sample = cpu_bound(plan, 256, plan.cpu_latency_ops, || {
        let id = queue.publish(&payload)?;
        let delivery = queue.try_receive()?.ok_or("nothing to receive")?;
        if delivery.id != id {
            return Err("received another message".into());
        }
        queue.ack(id)?;
        Ok(())
    })?;
    finish_store(store)?;
    Ok(sample)
}

/// Fills a store with about `bytes` of 1-KiB messages (published in batches of 1000 under
/// `FsyncPolicy::Never`, none acked) and closes it.
fn build_recovery_store(dir: &Path, bytes: u64) -> AnyResult<()> {
    let store = Store::open(dir, StoreOptions::new().fsync(FsyncPolicy::Never))?;
    let queue = store.declare_queue("bench")?;
    let batch: Vec<Vec<u8>> = (0..1000).map(|i| vec![i as u8; 1024]).collect();
    while store.stats().log_bytes < bytes {
        queue.publish_batch(&batch)?;
    }
    store.close()?;
    Ok(())
}

/// How many times each round opens the recovery store and reads its files; the row shows the
/// median of each. One open alone is at the mercy of whatever else the machine does in
/// those few milliseconds (the spread of single opens was 2× here).
const RECOVERY_REPEATS: usize = 5;

/// Opens the store in `dir` (timed: the recovery), then reads its segment files with plain
/// `std::fs` reads in 1 MiB chunks, as many bytes as the log holds (timed: the sequential
/// read), [`RECOVERY_REPEATS`] times in turn. Both run with the files in the page cache.
/// Each sample's elapsed time is the median of its repeats.
fn recovery(dir: &Path) -> AnyResult<(Sample, Sample)> {
    let mut opens = Vec::with_capacity(RECOVERY_REPEATS);
    let mut reads = Vec::with_capacity(RECOVERY_REPEATS);
    let mut stats = None;
    let mut read_bytes = 0;
    for _ in 0..RECOVERY_REPEATS {
        let start = Instant::now();
        let store = Store::open(dir, StoreOptions::new().fsync(FsyncPolicy::Never))?;
        opens.push(start.elapsed());
        let s = store.stats();
        store.close()?;
        drop(store);
        let (bytes, elapsed) = read_segments(dir, s.log_bytes)?;
        reads.push(elapsed);
        read_bytes = bytes;
        stats = Some(s);
    }
    let stats = stats.ok_or("no recovery repeats")?;
    let sample = |messages, bytes, mut times: Vec<Duration>| {
        times.sort_unstable();
        Sample {
            ops: 1,
            messages,
            bytes,
            elapsed: times[times.len() / 2],
            latencies: times,
        }
    };
    Ok((
        sample(stats.ready, stats.log_bytes, opens),
        sample(0, read_bytes, reads),
    ))
}

/// Reads the segment files of `dir` in order, `log_bytes` in all, with `std::fs` reads of
/// 1 MiB; returns how many bytes it read and how long that took.
fn read_segments(dir: &Path, log_bytes: u64) -> AnyResult<(u64, Duration)> {
    let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let id = walq::format::parse_segment_file_name(&name)?;
            Some((id, entry.path()))
        })
        .collect();
    segments.sort();
    let mut left = log_bytes;
    let mut buf = vec![0u8; 1 << 20];
    let mut checksum = 0u64;
    let start = Instant::now();
    for (_, path) in &segments {
        let mut file = File::open(path)?;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = file.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            // Use the data, so that nothing about the read can be optimised away.
            checksum = checksum.wrapping_add(u64::from(buf[n - 1]));
            left -= n as u64;
        }
    }
    let elapsed = start.elapsed();
    std::hint::black_box(checksum);
    Ok((log_bytes - left, elapsed))
}

// ---------------------------------------------------------------------------------------
// Resident memory
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Rss {
    messages: u64,
    rss_before_kb: u64,
    rss_after_kb: u64,
    anon_before_kb: u64,
    anon_after_kb: u64,
    /// `VmHWM`: the peak `VmRSS` of the child, at any time.
    peak_kb: u64,
}

impl Rss {
    fn per_message(&self) -> f64 {
        (self.rss_after_kb.saturating_sub(self.rss_before_kb) * 1024) as f64 / self.messages as f64
    }

    fn anon_per_message(&self) -> f64 {
        (self.anon_after_kb.saturating_sub(self.anon_before_kb) * 1024) as f64
            / self.messages as f64
    }
}

/// `VmRSS`, `RssAnon` and `VmHWM` of this process, in kB.
fn rss_kb() -> AnyResult<(u64, u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> AnyResult<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| format!("no {name} in /proc/self/status"))?;
        let kb = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kb)
    };
    Ok((field("VmRSS:")?, field("RssAnon:")?, field("VmHWM:")?))
}

/// Runs this program again as `--rss-child PHASE STORE COUNT`, in a fresh process whose
/// heap holds nothing else, and parses what it reports. `publish` creates the store at
/// `store` and queues `count` messages; `reopen` opens it again.
fn rss_child_run(phase: &str, store: &Path, messages: u64) -> AnyResult<Rss> {
    let output = Command::new(std::env::current_exe()?)
        .arg("--rss-child")
        .arg(phase)
        .arg(store)
        .arg(messages.to_string())
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "rss child ({phase}) failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let text = String::from_utf8(output.stdout)?;
    let numbers: Vec<u64> = text
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [rss_before_kb, rss_after_kb, anon_before_kb, anon_after_kb, peak_kb] = numbers[..] else {
        return Err(format!("unexpected rss child output {text:?}").into());
    };
    Ok(Rss {
        messages,
        rss_before_kb,
        rss_after_kb,
        anon_before_kb,
        anon_after_kb,
        peak_kb,
    })
}

/// Memory per queued message while publishing, in a store under `dir` removed afterwards.
fn rss_per_message(dir: &Path, messages: u64) -> AnyResult<Rss> {
    let store = tempfile::Builder::new().prefix("rss").tempdir_in(dir)?;
    rss_child_run("publish", &store.path().join("store"), messages)
}

/// The child. `publish`: opens a new store under `FsyncPolicy::Never` (compaction at its
/// defaults), publishes COUNT 100-byte messages in batches of 1000 (one batch before the
/// first reading, so that buffers allocated once are in it), closes it. `reopen`: opens
/// that store again (recovery rebuilds the table of the COUNT + 1000 queued messages).
/// Prints `RSS before after anon_before anon_after peak` in kB.
fn rss_child(args: &[String]) -> AnyResult<()> {
    let [phase, dir, count] = args else {
        return Err("usage: --rss-child publish|reopen STORE COUNT".into());
    };
    let count: u64 = count.parse()?;
    let options = StoreOptions::new().fsync(FsyncPolicy::Never);
    let (store, before) = match phase.as_str() {
        "publish" => {
            let store = Store::open(dir, options)?;
            let queue = store.declare_queue("bench")?;
            let batch: Vec<[u8; 100]> = vec![[0x42; 100]; 1000];
            queue.publish_batch(&batch)?;
            let before = rss_kb()?;
            let mut published = 0;
            while published < count {
                queue.publish_batch(&batch)?;
                published += batch.len() as u64;
            }
            (store, before)
        }
        "reopen" => {
            let before = rss_kb()?;
            (Store::open(dir, options)?, before)
        }
        other => return Err(format!("unknown rss phase {other:?}").into()),
    };
    let after = rss_kb()?;
    let ready = store.stats().ready;
    if ready != count + 1000 {
        return Err(format!("expected {} queued messages, found {ready}", count + 1000).into());
    }
    println!(
        "RSS {} {} {} {} {}",
        before.0, after.0, before.1, after.1, after.2
    );
    store.close()?;
    Ok(())
}

/// `--memory [COUNT] [DIR]`: see the module docs.
fn memory(args: &[String]) -> AnyResult<()> {
    let count: u64 = match args.first() {
        Some(n) => n.parse()?,
        None => 10_000_000,
    };
    let base = match args.get(1) {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("WALQ_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from),
    };
    std::fs::create_dir_all(&base)?;
    let work = tempfile::Builder::new()
        .prefix("walq-memory")
        .tempdir_in(&base)?;
    let store = work.path().join("store");
    eprintln!("publishing {count} messages of 100 B");
    let started = Instant::now();
    let published = rss_child_run("publish", &store, count)?;
    let publish_time = started.elapsed();
    eprintln!("reopening");
    let started = Instant::now();
    let reopened = rss_child_run("reopen", &store, count)?;
    let reopen_time = started.elapsed();
    println!("\n### resident memory per queued message ({count} × 100 B, `Never`)\n");
    println!(
        "| phase | time | VmRSS growth | RssAnon growth | VmRSS / msg | RssAnon / msg | peak VmRSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, rss, time) in [
        ("publish", &published, publish_time),
        ("reopen (recovery)", &reopened, reopen_time),
    ] {
        println!(
            "| {name} | {:.1} s | {:.1} MB | {:.1} MB | {:.2} B | {:.2} B | {:.1} MB |",
            time.as_secs_f64(),
            (rss.rss_after_kb.saturating_sub(rss.rss_before_kb)) as f64 * 1024.0 / 1e6,
            (rss.anon_after_kb.saturating_sub(rss.anon_before_kb)) as f64 * 1024.0 / 1e6,
            rss.per_message(),
            rss.anon_per_message(),
            rss.peak_kb as f64 * 1024.0 / 1e6
        );
    }
    Ok(())
}

/// `--profile WORKLOAD COUNT [DIR]`: see the module docs.
fn profile(args: &[String]) -> AnyResult<()> {
    let (workload, count, base) = match args {
        [w, c] => (w, c, std::env::var_os("WALQ_BENCH_DIR").map(PathBuf::from)),
        [w, c, d] => (w, c, Some(PathBuf::from(d))),
        _ => return Err("usage: --profile WORKLOAD COUNT [DIR]".into()),
    };
    let count: u64 = count.parse()?;
    let base = base.unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("walq-profile")
        .tempdir_in(&base)?;
    let payload = [0xa5_u8; 256];
    let start;
    match workload.as_str() {
        w if w.starts_with("always-publish:") => {
            let threads: usize = w["always-publish:".len()..].parse()?;
            let (store, queue) = open_store(work.path(), "store", FsyncPolicy::Always)?;
            start = Instant::now();
            std::thread::scope(|s| -> AnyResult<()> {
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        let queue = queue.clone();
                        s.spawn(move || -> walq::Result<()> {
                            for _ in 0..count / threads as u64 {
                                queue.publish(&payload)?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                for handle in handles {
                    handle.join().map_err(|_| "producer panicked")??;
                }
                Ok(())
            })?;
            eprintln!("{workload}: {count} ops in {:?}", start.elapsed());
            finish_store(store)?;
        }
        "never-publish" | "always-publish" | "cycle" => {
            let policy = if workload == "always-publish" {
                FsyncPolicy::Always
            } else {
                FsyncPolicy::Never
            };
            let (store, queue) = open_store(work.path(), "store", policy)?;
            start = Instant::now();
            for _ in 0..count {
                let id = queue.publish(&payload)?;
                if workload == "cycle" {
                    let delivery = queue.try_receive()?.ok_or("nothing to receive")?;
                    queue.ack(delivery.id)?;
                    debug_assert_eq!(delivery.id, id);
                }
            }
            eprintln!("{workload}: {count} ops in {:?}", start.elapsed());
            finish_store(store)?;
        }
        "recovery" => {
            let dir = work.path().join("store");
            build_recovery_store(&dir, count * 1024)?;
            start = Instant::now();
            let store = Store::open(&dir, StoreOptions::new().fsync(FsyncPolicy::Never))?;
            eprintln!(
                "recovery: {} messages, {} log bytes in {:?}",
                store.stats().ready,
                store.stats().log_bytes,
                start.elapsed()
            );
        }
        other => return Err(format!("unknown workload {other:?}").into()),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

fn fmt_latency(d: Option<Duration>) -> String {
    let Some(d) = d else { return "-".into() };
    let us = d.as_secs_f64() * 1e6;
    if us < 10.0 {
        format!("{us:.2} µs")
    } else if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// A rate with thousands separators (or one decimal below 100).
fn fmt_rate(x: f64) -> String {
    if x < 100.0 {
        return format!("{x:.1}");
    }
    let digits = format!("{x:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_report(rounds: &[Vec<Sample>], rss: &Rss, plan: &Plan, quick: bool) {
    println!(
        "\n### walq bench ({} mode, {} round(s); each row: the round with the median throughput)\n",
        if quick { "quick" } else { "full" },
        plan.rounds
    );
    println!("| workload | ops/s | messages/s | MB/s | p50 | p99 | p99.9 | max |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (row, name) in ROWS.iter().enumerate() {
        let mut of_row: Vec<&Sample> = rounds.iter().map(|r| &r[row]).collect();
        of_row.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        let s = of_row[of_row.len() / 2];
        let ops = if s.ops > 1 {
            fmt_rate(s.ops_per_s())
        } else {
            "-".into()
        };
        let messages = if s.messages > 0 {
            fmt_rate(s.messages_per_s())
        } else {
            "-".into()
        };
        let (p50, p99, p999, max) = if s.latencies.len() > 1 {
            (
                fmt_latency(s.percentile(0.50)),
                fmt_latency(s.percentile(0.99)),
                fmt_latency(s.percentile(0.999)),
                fmt_latency(s.percentile(1.0)),
            )
        } else {
            (
                fmt_latency(s.percentile(0.5)),
                "-".into(),
                "-".into(),
                "-".into(),
            )
        };
        println!(
            "| {name} | {ops} | {messages} | {:.1} | {p50} | {p99} | {p999} | {max} |",
            s.mb_per_s()
        );
    }
    println!(
        "| resident memory, {} × 100 B queued, Never | - | - | - | VmRSS +{:.1} B/msg | RssAnon +{:.1} B/msg | - | - |",
        fmt_rate(rss.messages as f64),
        rss.per_message(),
        rss.anon_per_message()
    );

    let recovered = &rounds[0][RECOVERY];
    println!(
        "\nThe recovery store holds {} unsettled messages of 1 KiB: {:.1} MB of log.",
        fmt_rate(recovered.messages as f64),
        recovered.bytes as f64 / 1e6
    );

    let ratios: Vec<Ratios> = rounds.iter().map(|r| Ratios::of(r)).collect();
    println!("\n### ratios, round by round\n");
    println!("| round | raw 256 B fdatasync ops/s (better of append, overwrite) | 1 producer / raw | 32 producers / 1 | raw 32 × 256 B / 1 producer | 32 producers / raw 32 × 256 B | batch / raw 1 MiB | recovery / read | raw fallocated / zero-filled | Never publish / raw write(2) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, r) in ratios.iter().enumerate() {
        println!(
            "| {} | {} | {:.1}% | {:.1}× | {:.1}× | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.1}% |",
            i + 1,
            fmt_rate(r.raw_small),
            100.0 * r.one,
            r.many,
            r.group_ceiling,
            100.0 * r.of_group,
            100.0 * r.batch,
            100.0 * r.recovery,
            100.0 * r.fallocated,
            100.0 * r.never
        );
    }

    let one = median(ratios.iter().map(|r| r.one));
    let many = median(ratios.iter().map(|r| r.many));
    let batch = median(ratios.iter().map(|r| r.batch));
    let recovery = median(ratios.iter().map(|r| r.recovery));
    let never = median(rounds.iter().map(|r| r[NEVER].messages_per_s()));
    let cycle = median(rounds.iter().map(|r| r[CYCLE].messages_per_s()));
    let never_batch = median(rounds.iter().map(|r| r[NEVER_BATCH].messages_per_s()));
    let per_message = rss.per_message();
    let verdict = |ok: bool| if ok { "met" } else { "missed" };

    println!("\n### against the targets of issue 6 (medians over rounds)\n");
    println!("| target | measured | goal | |");
    println!("|---|---:|---:|---|");
    println!(
        "| durable publish, 1 producer, 256 B / better raw 256 B write + fdatasync rate | {:.1}% | ≥ 90% | {} |",
        100.0 * one,
        verdict(one >= 0.9)
    );
    println!(
        "| durable publish, 32 producers / 1 producer | {many:.1}× | ≥ 25× | {} |",
        verdict(many >= 25.0)
    );
    println!(
        "| (the disk's ceiling for it: raw 32 × 256 B + fdatasync, messages/s / 1 producer) | {:.1}× | | |",
        median(ratios.iter().map(|r| r.group_ceiling))
    );
    println!(
        "| durable batch 1000 × 1 KiB / raw 1 MiB append + fdatasync bandwidth | {:.1}% | ≥ 70% | {} |",
        100.0 * batch,
        verdict(batch >= 0.7)
    );
    println!(
        "| buffered publish (Never), 1 thread, 256 B | {} msg/s | ≥ 3,000,000 | {} |",
        fmt_rate(never),
        verdict(never >= 3e6)
    );
    println!(
        "| the same in batches of 100 (`publish_batch`) | {} msg/s | ≥ 3,000,000 | {} |",
        fmt_rate(never_batch),
        verdict(never_batch >= 3e6)
    );
    println!(
        "| publish → receive → ack (Never) | {} cycles/s | ≥ 1,500,000 | {} |",
        fmt_rate(cycle),
        verdict(cycle >= 1.5e6)
    );
    println!(
        "| recovery / sequential read of the same files, both warm | {:.1}% | ≥ 60% | {} |",
        100.0 * recovery,
        verdict(recovery >= 0.6)
    );
    println!(
        "| resident memory per queued message (VmRSS growth) | {per_message:.1} B | ≤ 8 B | {} |",
        verdict(per_message <= 8.0)
    );
    println!();
}

/// `--compaction-latency [DIR]`: publish latency with and without compaction running.
fn compaction_latency(dir: Option<&String>) -> AnyResult<()> {
    let base = match dir {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("WALQ_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from),
    };
    let tmp = tempfile::tempdir_in(base)?;
    let no_background = walq::CompactionOptions::new().background(None);
    // The history, quickly: published and mostly acked under `Never`.
    {
        let store = Store::open(
            tmp.path(),
            StoreOptions::new()
                .fsync(FsyncPolicy::Never)
                .compaction(no_background.clone()),
        )?;
        let queue = store.declare_queue("bench")?;
        let batch = vec![[0x5a_u8; 100]; 1000];
        for _ in 0..300 {
            queue.publish_batch(&batch)?;
        }
        let mut held = Vec::new();
        while let Some(d) = queue.try_receive()? {
            if d.id.get() % 30 == 0 {
                held.push(d.id);
            } else {
                queue.ack(d.id)?;
            }
        }
        for id in held {
            queue.nack(id, true)?;
        }
        store.close()?;
    }
    let store = Store::open(
        tmp.path(),
        StoreOptions::new()
            .fsync(FsyncPolicy::Always)
            .compaction(no_background),
    )?;
    let queue = store.declare_queue("bench")?;
    const PUBLISHES: usize = 3000;
    let measure = |queue: &Queue| -> AnyResult<Vec<Duration>> {
        let mut times = Vec::with_capacity(PUBLISHES);
        for _ in 0..PUBLISHES {
            let start = Instant::now();
            queue.publish(&PAYLOAD_256)?;
            times.push(start.elapsed());
        }
        times.sort_unstable();
        Ok(times)
    };
    let quiet = measure(&queue)?;
    let done = std::sync::atomic::AtomicBool::new(false);
    let (busy, compactions) = std::thread::scope(|scope| -> AnyResult<_> {
        let compactor = scope.spawn(|| -> walq::Result<u32> {
            let mut runs = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                store.compact()?;
                runs += 1;
            }
            Ok(runs)
        });
        let busy = measure(&queue);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let runs = compactor
            .join()
            .map_err(|_| "the compaction thread panicked")??;
        Ok((busy?, runs))
    })?;
    store.close()?;
    let at = |times: &[Duration], p: f64| {
        let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1;
        times[i].as_secs_f64() * 1e3
    };
    println!("| durable publish, 256 B | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|");
    for (name, times) in [
        ("no compaction".to_string(), &quiet),
        (format!("{compactions} compactions running"), &busy),
    ] {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} |",
            at(times, 0.5),
            at(times, 0.99),
            at(times, 1.0)
        );
    }
    Ok(())
}
