//! `walq`: the operator's tool for walq store directories.
//!
//! Read-only commands (`stat`, `verify`, `dump`, `peek`) never write to the store: they read
//! the segment files directly, or run the library's recovery over a copy-on-write view of
//! them (`overlay.rs`). Every command takes the directory lock for as long as it runs, so
//! none of them works on a store that a process has open.

#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod dump;
mod messages;
mod output;
mod overlay;
mod scan;
mod stat;
mod verify;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit codes (also in `--help` and docs/operations.md).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A problem: `verify` found damage, or the command failed (the message says why).
    pub const PROBLEM: u8 = 1;
    /// A usage error (bad arguments); clap exits with it itself.
    #[allow(dead_code)]
    pub const USAGE: u8 = 2;
    /// `verify` (and `dump`) found only a torn tail: nothing is damaged, but the next open
    /// will cut the unconfirmed end of the log.
    pub const TORN_TAIL: u8 = 3;
    /// Another process holds the store's directory lock.
    pub const LOCKED: u8 = 4;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success (verify: no problem found)
  1  a problem: verify found damage, or the command failed (the message says why)
  2  usage error (bad arguments)
  3  verify/dump: only a torn tail was found (the unconfirmed end of the log left by a
     crash; the next open cuts it, nothing that was confirmed is lost)
  4  the store is in use: another process holds its directory lock

Read-only commands (stat, verify, dump, peek) never write to the store. All commands need
the store to be closed: they take its directory lock while they run.";

/// Inspect, check and operate walq store directories.
#[derive(Debug, Parser)]
#[command(name = "walq", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How a payload is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PayloadFormat {
    /// Printable ASCII as is, everything else escaped (`\n`, `\xNN`).
    Escaped,
    /// Hexadecimal.
    Hex,
    /// Length only.
    None,
}

/// Record kinds, for `dump --kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindFilter {
    /// A message was published.
    Publish,
    /// Messages were acknowledged.
    Ack,
    /// A delivery was rolled back (requeued or dropped).
    Rollback,
    /// A message was handed to a consumer.
    Deliver,
    /// A message moved to another queue (dead-lettered or redriven).
    Move,
    /// A live message was rewritten at the head of the log by compaction.
    Relocate,
    /// A queue was declared.
    Declare,
    /// A segment was sealed (rolled over).
    Seal,
    /// A clean close.
    Commit,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show queues (ready, delayed, unacked, dead-lettered counts), segments and disk use.
    ///
    /// Read-only: recovery and replay run over an in-memory copy-on-write view of the files.
    /// Queue counts are those the store would have if opened now (due timers fired); a
    /// message out with a consumer when the store was last closed counts as ready again.
    Stat {
        /// The store directory.
        dir: PathBuf,
        /// One JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Check every record's checksum and the format's rules; print each problem with its
    /// segment and byte offset.
    ///
    /// Read-only. Exits 0 with a one-line summary when the store is clean, 1 if anything is
    /// damaged (the store would not open), 3 if the only finding is a torn tail (the
    /// unconfirmed end of the log left by a crash, which the next open cuts).
    Verify {
        /// The store directory.
        dir: PathBuf,
    },
    /// Print every record of the log, in log order.
    ///
    /// Read-only. Stops at the first damaged record of each segment (reported on stderr;
    /// exit 1). Records of a torn tail are not printed (exit 3).
    Dump {
        /// The store directory.
        dir: PathBuf,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only records about this queue (its declaration, its messages, and moves into or
        /// out of it).
        #[arg(long, value_name = "NAME")]
        queue: Option<String>,
        /// Only records of these kinds (repeat the option or separate with commas).
        #[arg(long, value_enum, value_delimiter = ',')]
        kind: Vec<KindFilter>,
        /// How to show payloads.
        #[arg(long, value_enum, default_value_t = PayloadFormat::Escaped)]
        payload: PayloadFormat,
        /// Show at most this many payload bytes (0: all).
        #[arg(long, value_name = "BYTES", default_value_t = 64)]
        payload_bytes: usize,
    },
    /// Show the next ready messages of a queue without taking them.
    ///
    /// Read-only: nothing is delivered, counted or written; a later receive gets the same
    /// messages.
    Peek {
        /// The store directory.
        dir: PathBuf,
        /// The queue.
        queue: String,
        /// How many messages.
        #[arg(short = 'n', long = "count", value_name = "N", default_value_t = 10)]
        count: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// How to show payloads.
        #[arg(long, value_enum, default_value_t = PayloadFormat::Escaped)]
        payload: PayloadFormat,
        /// Show at most this many payload bytes (0: all).
        #[arg(long, value_name = "BYTES", default_value_t = 256)]
        payload_bytes: usize,
    },
    /// Publish messages read from standard input: one per line (the line end removed), or
    /// the whole input as one message with --raw.
    ///
    /// Writes to the store; durable when the command returns (fsync policy Always).
    Publish {
        /// The store directory.
        dir: PathBuf,
        /// The queue.
        queue: String,
        /// Publish the whole of standard input as one message.
        #[arg(long)]
        raw: bool,
        /// Declare the queue (with default options) if it does not exist, and create the
        /// store if the directory does not exist.
        #[arg(long)]
        create: bool,
        #[command(flatten)]
        store: WriteOptions,
    },
    /// Receive messages and print their payloads, one per line, for scripts.
    ///
    /// Writes to the store. Without --ack every message received is put back (nack with
    /// requeue) before the command ends: it stays in the queue, but the delivery counts (so
    /// a queue with max_deliveries may dead-letter it).
    Consume {
        /// The store directory.
        dir: PathBuf,
        /// The queue.
        queue: String,
        /// Acknowledge each message once it is printed (it is gone for good).
        #[arg(long)]
        ack: bool,
        /// How many messages at most.
        #[arg(short = 'n', long = "count", value_name = "N", default_value_t = 1)]
        count: usize,
        /// Wait up to this many seconds for each message when none is ready (default: do
        /// not wait; stop when the queue is empty).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
        /// One JSON object per line (id, delivery count, payload) instead of raw payloads.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: WriteOptions,
    },
    /// Move the dead-lettered messages of a dead-letter queue back to the queues they came
    /// from (Store::redrive).
    ///
    /// Writes to the store.
    Redrive {
        /// The store directory.
        dir: PathBuf,
        /// The dead-letter queue.
        dlq: String,
        #[command(flatten)]
        store: WriteOptions,
    },
    /// Compact the store: write a checkpoint, relocate the live messages of mostly-settled
    /// segments and delete every segment nothing needs any more.
    ///
    /// Writes to the store. Prints what was reclaimed.
    Compact {
        /// The store directory.
        dir: PathBuf,
        #[command(flatten)]
        store: WriteOptions,
    },
    /// Remove every ready message of a queue, for good.
    ///
    /// Writes to the store. Implemented with the public API: each ready message is received
    /// and acknowledged (in atomic groups of up to 1000). Delayed messages are not ready and
    /// stay. Asks for confirmation on a terminal; without a terminal it refuses unless --yes
    /// is given.
    Purge {
        /// The store directory.
        dir: PathBuf,
        /// The queue.
        queue: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        store: WriteOptions,
    },
}

/// Options of the commands that open a store for writing.
#[derive(Debug, Clone, clap::Args)]
pub struct WriteOptions {
    /// Segment size to open the store with (default: the size of its largest segment file,
    /// which is the configured size when segments are preallocated; 64 MiB for a new store).
    #[arg(long, value_name = "BYTES")]
    segment_size: Option<u64>,
    /// Largest payload accepted, in bytes (default 4 MiB).
    #[arg(long, value_name = "BYTES")]
    max_message_size: Option<u64>,
}

/// Why a command did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// The directory lock is held by another process.
    Locked(PathBuf),
    /// An error, with what to do about it; exits with [`exit::PROBLEM`].
    Message(String),
    /// Standard output was closed (`walq dump | head`): stop quietly.
    BrokenPipe,
    /// The command already printed its verdict; exit with this code.
    Exit(u8),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::BrokenPipe
        } else {
            Failure::Message(format!("I/O error: {e}"))
        }
    }
}

/// The result of a command.
pub type Outcome = Result<(), Failure>;

fn run(cli: Cli) -> Outcome {
    match cli.command {
        Command::Stat { dir, json } => stat::run(&dir, json),
        Command::Verify { dir } => verify::run(&dir),
        Command::Dump {
            dir,
            json,
            queue,
            kind,
            payload,
            payload_bytes,
        } => dump::run(
            &dir,
            &dump::Filter {
                json,
                queue,
                kinds: kind,
                payload: output::PayloadStyle::new(payload, payload_bytes),
            },
        ),
        Command::Peek {
            dir,
            queue,
            count,
            json,
            payload,
            payload_bytes,
        } => messages::peek(
            &dir,
            &queue,
            count,
            json,
            output::PayloadStyle::new(payload, payload_bytes),
        ),
        Command::Publish {
            dir,
            queue,
            raw,
            create,
            store,
        } => messages::publish(&dir, &queue, raw, create, &store),
        Command::Consume {
            dir,
            queue,
            ack,
            count,
            timeout,
            json,
            store,
        } => messages::consume(
            &dir,
            &queue,
            &messages::ConsumeOptions {
                ack,
                count,
                timeout,
                json,
            },
            &store,
        ),
        Command::Redrive { dir, dlq, store } => messages::redrive(&dir, &dlq, &store),
        Command::Compact { dir, store } => messages::compact(&dir, &store),
        Command::Purge {
            dir,
            queue,
            yes,
            store,
        } => messages::purge(&dir, &queue, yes, &store),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => exit::OK,
        Err(Failure::BrokenPipe) => exit::OK,
        Err(Failure::Exit(code)) => code,
        Err(Failure::Locked(dir)) => {
            let _ = writeln!(
                std::io::stderr(),
                "walq: {} is in use by another process; stop it first (a store can be opened \
                 by one process at a time, and walq takes the same directory lock)",
                dir.display()
            );
            exit::LOCKED
        }
        Err(Failure::Message(message)) => {
            let _ = writeln!(std::io::stderr(), "walq: {message}");
            exit::PROBLEM
        }
    };
    ExitCode::from(code)
}
