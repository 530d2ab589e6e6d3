//! The `walq` command-line tool on real stores made through the library: each command's
//! output, exit codes, corruption and torn-tail reports, that read-only commands never
//! change a byte, and that a store held by a process is refused with exit code 4.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;
use walq::format::{decode_frame, SegmentHeader, SEGMENT_HEADER_LEN};
use walq::{QueueOptions, Store, StoreOptions};

const SEGMENT: u64 = 64 << 10;

fn walq() -> Command {
    assert_cmd::cargo::cargo_bin_cmd!("walq")
}

fn options() -> StoreOptions {
    StoreOptions::new().segment_size(SEGMENT)
}

fn open(dir: &Path) -> Store {
    Store::open(dir, options()).unwrap()
}

/// Every file of `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

/// The offsets of the valid frames of segment `id`, with their ends.
fn frames(dir: &Path, id: u64) -> Vec<(u64, u64)> {
    let bytes = std::fs::read(seg_path(dir, id)).unwrap();
    let header = SegmentHeader::decode(&bytes).unwrap();
    let mut out = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN as u64;
    while let Ok(view) = decode_frame(&bytes[offset as usize..], header.salt, id, offset) {
        out.push((offset, view.next_offset));
        offset = view.next_offset;
    }
    out
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

fn stdout_of(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// A store with "jobs" (dead-lettering into "jobs.dead" after one delivery), 40 messages of
/// 2 KiB in "jobs" (more than one 64 KiB segment) and one dead-lettered message, closed
/// cleanly.
fn sample_store(dir: &Path) {
    let store = open(dir);
    let jobs = store
        .declare_queue_with(
            "jobs",
            QueueOptions::new()
                .max_deliveries(1)
                .dead_letter_queue("jobs.dead"),
        )
        .unwrap();
    jobs.publish(b"poison").unwrap();
    let d = jobs.try_receive().unwrap().unwrap();
    jobs.nack(d.id, true).unwrap(); // its one delivery is used up: dead-lettered
    for i in 0..40u32 {
        let mut payload = format!("job {i} ").into_bytes();
        payload.resize(2048, b'.');
        jobs.publish(&payload).unwrap();
    }
    store.close().unwrap();
}

#[test]
fn stat_reports_queues_segments_and_disk_use() {
    let dir = tempfile::tempdir().unwrap();
    sample_store(dir.path());
    let text = stdout_of(walq().arg("stat").arg(dir.path()).arg("--json"));
    let stat: Value = serde_json::from_str(text.trim()).unwrap();
    let queues = stat["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 2);
    // Declaration order: the dead-letter queue is declared first.
    let (dead, jobs) = (&queues[0], &queues[1]);
    assert_eq!(jobs["name"], "jobs");
    assert_eq!(jobs["ready"], 40);
    assert_eq!(jobs["unacked"], 0);
    assert_eq!(jobs["dead_lettered"], 1);
    assert_eq!(dead["name"], "jobs.dead");
    assert_eq!(dead["ready"], 1);
    let segments = stat["segments"].as_array().unwrap();
    assert!(segments.len() >= 2, "{segments:?}");
    let on_disk: u64 = (0..segments.len() as u64)
        .map(|id| std::fs::metadata(seg_path(dir.path(), id)).unwrap().len())
        .sum();
    assert_eq!(stat["bytes_on_disk"], on_disk);
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s["id"], i as u64);
        assert!(s["record_bytes"].as_u64().unwrap() <= s["file_bytes"].as_u64().unwrap());
    }

    let text = stdout_of(walq().arg("stat").arg(dir.path()));
    let jobs_row = text.lines().find(|l| l.starts_with("jobs ")).unwrap();
    let cells: Vec<&str> = jobs_row.split_whitespace().collect();
    assert_eq!(cells, ["jobs", "40", "0", "0", "1", "0", "81920"]);
    assert!(text.contains("SEGMENT"), "{text}");
    assert!(text.contains("jobs.dead"), "{text}");
}

#[test]
fn read_only_commands_change_nothing_even_where_open_would() {
    // A store dropped without close whose last record is torn: opening it through the
    // library would cut the tail, and fire nothing but still rewrite files.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let q = store.declare_queue("q").unwrap();
        for i in 0..5u8 {
            q.publish(&[i; 100]).unwrap();
        }
    }
    let (last, _) = *frames(dir.path(), 0).last().unwrap();
    flip_byte(&seg_path(dir.path(), 0), last + 20);
    let before = snapshot(dir.path());
    for args in [
        vec!["stat"],
        vec!["stat", "--json"],
        vec!["verify"],
        vec!["dump"],
        vec!["dump", "--json"],
    ] {
        let mut cmd = walq();
        cmd.arg(args[0]).arg(dir.path()).args(&args[1..]);
        cmd.output().unwrap();
        assert_eq!(
            snapshot(dir.path()),
            before,
            "walq {args:?} changed the store"
        );
    }
    walq()
        .arg("peek")
        .arg(dir.path())
        .arg("q")
        .assert()
        .success();
    assert_eq!(snapshot(dir.path()), before, "walq peek changed the store");
}

#[test]
fn verify_passes_a_clean_store_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    sample_store(dir.path());
    let text = stdout_of(walq().arg("verify").arg(dir.path()));
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("ok: "), "{text}");
    assert!(text.contains("no problem found"), "{text}");
}

#[test]
fn verify_reports_a_flipped_byte_with_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    sample_store(dir.path());
    // A record in the middle of the first (sealed) segment.
    let frames = frames(dir.path(), 0);
    let (start, end) = frames[frames.len() / 2];
    flip_byte(&seg_path(dir.path(), 0), (start + end) / 2);
    walq()
        .arg("verify")
        .arg(dir.path())
        .assert()
        .code(1)
        .stdout(predicate::str::contains(format!(
            "problem: segment 0 offset {start}: checksum mismatch"
        )))
        .stdout(predicate::str::contains("FAILED"));
    // stat cannot replay a damaged store and says where the damage is.
    walq()
        .arg("stat")
        .arg(dir.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "corruption in segment 0 at offset {start}"
        )));
}

#[test]
fn verify_reports_a_torn_tail_as_a_warning_with_exit_code_3() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let q = store.declare_queue("q").unwrap();
        for i in 0..5u8 {
            q.publish(&[i; 300]).unwrap();
        }
        // Dropped without close: no clean-close marker.
    }
    let (last, _) = *frames(dir.path(), 0).last().unwrap();
    flip_byte(&seg_path(dir.path(), 0), last + 100);
    walq()
        .arg("verify")
        .arg(dir.path())
        .assert()
        .code(3)
        .stdout(predicate::str::contains(format!(
            "warning: segment 0 offset {last}: torn tail: checksum mismatch"
        )))
        .stdout(predicate::str::contains("problem").not());
    // The library agrees: the next open cuts the log exactly there.
    let store = open(dir.path());
    let cut = store.recovery_report().truncated.clone().unwrap();
    assert_eq!((cut.segment.0, cut.offset), (0, last));
    assert_eq!(store.stats().ready, 4);
}

#[test]
fn verify_warns_of_a_pending_successor_and_open_adopts_it() {
    let dir = tempfile::tempdir().unwrap();
    sample_store(dir.path());
    // What a crash while a roll-over is in flight leaves: the last segment, sealed, and its
    // successor under its pending name.
    let last = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| {
            walq::format::parse_segment_file_name(&e.unwrap().file_name().to_string_lossy())
        })
        .max()
        .unwrap();
    let ready = open(dir.path()).stats().ready;
    let store = open(dir.path());
    store.compact().unwrap(); // seals the active segment and starts the next one
    store.close().unwrap();
    let successor = seg_path(dir.path(), last + 1);
    assert!(successor.exists(), "compaction rolled over");
    let pending = PathBuf::from(format!("{}.next", successor.display()));
    std::fs::rename(&successor, &pending).unwrap();
    std::fs::remove_file(dir.path().join("CLOSED")).unwrap();
    // Like a leftover temporary file: worth a warning, not a failure.
    walq()
        .arg("verify")
        .arg(dir.path())
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "warning: {}: the successor of a roll-over that a crash interrupted",
            pending.display()
        )));
    let store = open(dir.path());
    assert_eq!(
        store.recovery_report().adopted_successor,
        Some(walq::SegmentId(last + 1))
    );
    assert_eq!(store.stats().ready, ready);
    assert!(successor.exists() && !pending.exists());
}

#[test]
fn dump_json_lines_have_the_records_in_log_order() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let q = store.declare_queue("jobs").unwrap();
        let other = store.declare_queue("other").unwrap();
        q.publish_batch(&[&b"a\n"[..], b"b"]).unwrap();
        other.publish(b"x").unwrap();
        let d = q.try_receive().unwrap().unwrap();
        q.ack(d.id).unwrap();
        store.close().unwrap();
    }
    let records = json_lines(&stdout_of(walq().arg("dump").arg(dir.path()).arg("--json")));
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["declare", "declare", "publish", "publish", "publish", "deliver", "ack", "commit"]
    );
    assert_eq!(records[2]["id"], 0);
    assert_eq!(records[2]["queue"], "jobs");
    assert_eq!(records[2]["payload"], "a\\n");
    assert_eq!(records[2]["continues"], true, "first record of the batch");
    assert_eq!(records[4]["queue"], "other");
    assert_eq!(records[6]["ranges"], serde_json::json!([[0, 0]]));
    assert!(records
        .iter()
        .all(|r| r["segment"] == 0 && r["offset"].is_u64()));

    let only = json_lines(&stdout_of(walq().arg("dump").arg(dir.path()).args([
        "--json",
        "--queue",
        "jobs",
        "--kind",
        "publish,ack",
        "--payload",
        "hex",
    ])));
    let summary: Vec<(&str, Value)> = only
        .iter()
        .map(|r| (r["kind"].as_str().unwrap(), r["id"].clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("publish", 0.into()),
            ("publish", 1.into()),
            ("ack", Value::Null)
        ]
    );
    assert_eq!(only[0]["payload_hex"], "610a");

    let text = stdout_of(
        walq()
            .arg("dump")
            .arg(dir.path())
            .args(["--kind", "publish"]),
    );
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.contains("payload=\"a\\n\""), "{text}");
}

#[test]
fn dump_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), StoreOptions::new()).unwrap();
        let q = store.declare_queue("q").unwrap();
        let payloads: Vec<Vec<u8>> = (0..3000).map(|i| vec![b'a' + (i % 26) as u8; 60]).collect();
        q.publish_batch(&payloads).unwrap();
        store.close().unwrap();
    }
    let mut child = StdCommand::new(assert_cmd::cargo::cargo_bin!("walq"))
        .arg("dump")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap(); // and the pipe closes here
    assert!(first.contains("declare"), "{first}");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn peek_shows_messages_and_leaves_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let q = store.declare_queue("jobs").unwrap();
        q.publish_batch(&[&b"first"[..], b"second", b"third"])
            .unwrap();
        store.close().unwrap();
    }
    let before = snapshot(dir.path());
    let text = stdout_of(walq().arg("peek").arg(dir.path()).args(["jobs", "-n", "2"]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("id=0 deliveries=0") && lines[0].contains("\"first\""));
    assert!(lines[1].contains("\"second\""));
    let json = json_lines(&stdout_of(
        walq().arg("peek").arg(dir.path()).args(["jobs", "--json"]),
    ));
    assert_eq!(json.len(), 3);
    assert_eq!(json[2]["payload"], "third");
    assert_eq!(snapshot(dir.path()), before, "peek wrote to the store");

    let store = open(dir.path());
    assert_eq!(store.stats().ready, 3);
    let d = store.queue("jobs").unwrap().try_receive().unwrap().unwrap();
    assert_eq!((d.payload.as_slice(), d.delivery_count), (&b"first"[..], 1));
}

#[test]
fn publish_and_consume_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    walq()
        .arg("publish")
        .arg(&store_dir)
        .arg("jobs")
        .write_stdin("a\nb\n")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("does not exist"));
    walq()
        .arg("publish")
        .arg(&store_dir)
        .args(["jobs", "--create"])
        .write_stdin("a\r\nb\n\nc")
        .assert()
        .success()
        .stdout("published 4 message(s) to jobs (ids 0-3)\n");
    walq()
        .arg("publish")
        .arg(&store_dir)
        .args(["jobs", "--raw"])
        .write_stdin("multi\nline\n")
        .assert()
        .success()
        .stdout(predicate::str::contains("published 1 message(s)"));

    // Without --ack the messages go back, in order.
    walq()
        .arg("consume")
        .arg(&store_dir)
        .args(["jobs", "-n", "2"])
        .assert()
        .success()
        .stdout("a\nb\n");
    let text = stdout_of(
        walq()
            .arg("consume")
            .arg(&store_dir)
            .args(["jobs", "-n", "10", "--ack", "--json"]),
    );
    let got = json_lines(&text);
    let payloads: Vec<&str> = got.iter().map(|m| m["payload"].as_str().unwrap()).collect();
    assert_eq!(payloads, ["a", "b", "", "c", "multi\\nline\\n"]);
    assert_eq!(got[0]["delivery_count"], 2);
    walq()
        .arg("consume")
        .arg(&store_dir)
        .args(["jobs", "--timeout", "0.05"])
        .assert()
        .success()
        .stdout("");

    let store = open(&store_dir);
    let stats = store.stats();
    assert_eq!((stats.ready, stats.acked), (0, 5));
}

#[test]
fn redrive_moves_dead_letters_back() {
    let dir = tempfile::tempdir().unwrap();
    sample_store(dir.path());
    walq()
        .arg("redrive")
        .arg(dir.path())
        .arg("jobs.dead")
        .assert()
        .success()
        .stdout(predicate::str::starts_with("moved 1 message(s)"));
    let store = open(dir.path());
    assert_eq!(store.queue("jobs").unwrap().stats().ready, 41);
    assert_eq!(store.queue("jobs.dead").unwrap().stats().ready, 0);
}

#[test]
fn compact_reclaims_acked_segments_and_stat_shows_live_fractions() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let jobs = store.declare_queue("jobs").unwrap();
        for i in 0..1500u32 {
            jobs.publish(format!("job {i:0200}").as_bytes()).unwrap();
        }
        // Everything but the last 10 messages is acked.
        for _ in 0..1490 {
            let d = jobs.try_receive().unwrap().unwrap();
            jobs.ack(d.id).unwrap();
        }
        store.close().unwrap();
    }
    let segments_before = open(dir.path()).segment_stats().len();
    assert!(segments_before >= 4);
    let stat = stdout_of(walq().arg("stat").arg(dir.path()));
    assert!(stat.contains("LIVE"), "{stat}");
    assert!(
        stat.contains("0.0%"),
        "fully acked segments show 0% live: {stat}"
    );

    let out = stdout_of(walq().arg("compact").arg(dir.path()));
    assert!(out.starts_with("checkpoint "), "{out}");
    assert!(out.contains("(10 unsettled messages)"), "{out}");
    // Reclaimed segments leave gaps in the seal chain below the checkpoint: still clean.
    walq().arg("verify").arg(dir.path()).assert().success();
    let store = open(dir.path());
    assert!(store.segment_stats().len() < segments_before, "{out}");
    let jobs = store.queue("jobs").unwrap();
    assert_eq!(
        jobs.stats().ready,
        10,
        "compaction kept the unacked messages"
    );
    let first = jobs.try_receive().unwrap().unwrap();
    assert_eq!(first.payload, format!("job {:0200}", 1490).as_bytes());
}

#[test]
fn purge_refuses_without_yes_when_nobody_can_confirm() {
    let dir = tempfile::tempdir().unwrap();
    sample_store(dir.path());
    let before = snapshot(dir.path());
    let mut no_terminal = StdCommand::new(assert_cmd::cargo::cargo_bin!("walq"));
    no_terminal
        .arg("purge")
        .arg(dir.path())
        .arg("jobs")
        .stdin(Stdio::null());
    Command::from_std(no_terminal)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--yes"));
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a refused purge touched the store"
    );

    walq()
        .arg("purge")
        .arg(dir.path())
        .args(["jobs", "--yes"])
        .assert()
        .success()
        .stdout("purged 40 message(s) from jobs\n");
    let store = open(dir.path());
    assert_eq!(store.queue("jobs").unwrap().stats().ready, 0);
    assert_eq!(store.queue("jobs.dead").unwrap().stats().ready, 1);
}

#[test]
fn a_store_open_in_a_process_is_refused_with_exit_code_4() {
    let dir = tempfile::tempdir().unwrap();
    sample_store(dir.path());
    let store = open(dir.path());
    for args in [
        vec!["stat"],
        vec!["verify"],
        vec!["dump"],
        vec!["peek", "jobs"],
        vec!["consume", "jobs"],
        vec!["redrive", "jobs.dead"],
        vec!["purge", "jobs", "--yes"],
    ] {
        let mut cmd = walq();
        cmd.arg(args[0]).arg(dir.path()).args(&args[1..]);
        cmd.assert()
            .code(4)
            .stdout("")
            .stderr(predicate::str::contains(
                "is in use by another process; stop it first",
            ));
    }
    walq()
        .arg("publish")
        .arg(dir.path())
        .arg("jobs")
        .write_stdin("x\n")
        .assert()
        .code(4);
    drop(store);
    walq().arg("stat").arg(dir.path()).assert().success();
}

#[test]
fn usage_errors_exit_with_2_and_help_documents_exit_codes() {
    walq().arg("stat").assert().code(2);
    walq()
        .args(["dump", ".", "--kind", "nonsense"])
        .assert()
        .code(2);
    walq()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("Exit codes:"))
        .stdout(predicate::str::contains("4  the store is in use"));
    walq()
        .args(["stat", "/nonexistent/walq/dir"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("/nonexistent/walq/dir"));
}
