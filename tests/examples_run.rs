//! The examples run to completion on a real directory: `work_queue` completes every task
//! exactly once and, after the simulated crash, lists the unacknowledged deliveries as
//! redelivered; `dead_letter` moves the poison message to the dead-letter queue after three
//! deliveries and redrives it back; `job_scheduler` restarts in the middle and still completes
//! every job exactly once; `fsync_policies` prints a row for every policy and producer count;
//! `crash_recovery` survives a real SIGKILL of its child with every confirmed message back
//! and no acked one.
//!
//! The example binary sits next to this test's binary (`target/<profile>/examples/`);
//! `cargo test` builds it, and this test builds it itself (`cargo build --example`) when it
//! runs alone (`cargo test --test examples_run`), so it never runs a stale binary.

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/examples/work_queue`, built up to date.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    // .../target/<profile>/deps/examples_run-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary under target/<profile>/deps")
        .to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--example", name]);
    if release {
        build.arg("--release");
    }
    // Build into the same target directory this test binary came from.
    if let Some(target) = profile_dir.parent() {
        build.env("CARGO_TARGET_DIR", target);
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build --example {name} failed");
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.is_file(), "{} was not built", binary.display());
    binary
}

#[test]
fn work_queue_example_recovers_unacked_deliveries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("store");
    let stdout = run_example("work_queue", &[store.as_os_str()]);

    // The store really lives in the directory given on the command line.
    let names: Vec<String> = std::fs::read_dir(&store)
        .expect("store directory exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with(".wal")),
        "no segment in {names:?}"
    );

    // Failed tasks were nacked, requeued and redelivered with a higher delivery count.
    assert!(stdout.contains("nack with requeue"), "{stdout}");
    assert!(stdout.contains("redelivered, delivery_count 2"), "{stdout}");

    // The recovered set: the section exists and lists at least the deliveries that the
    // early-stopping workers abandoned, each redelivered with a delivery count of 2 or more.
    let section = stdout
        .split("-- recovered unacked set --")
        .nth(1)
        .expect("recovered-set section")
        .split("\n\n")
        .next()
        .unwrap_or_default();
    let rows: Vec<Vec<&str>> = section
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<&str>>())
        .filter(|cols| cols.first().is_some_and(|c| c.starts_with('#')))
        .collect();
    let abandoned: usize = stdout
        .lines()
        .filter(|l| l.contains("stops early"))
        .filter_map(|l| {
            l.split("leaving ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(abandoned > 0, "no worker stopped early:\n{stdout}");
    assert!(
        rows.len() >= abandoned,
        "{abandoned} abandoned, rows {rows:?}"
    );
    for row in &rows {
        assert_eq!(row.get(2), Some(&"true"), "row {row:?} not redelivered");
        let count: u32 = row.get(3).and_then(|c| c.parse().ok()).expect("count");
        assert!(count >= 2, "row {row:?}");
    }
    assert!(stdout.contains("the log ended cleanly"), "{stdout}");
    assert!(
        stdout.contains("all 50 tasks completed exactly once"),
        "{stdout}"
    );
}

#[test]
fn dead_letter_example_dead_letters_the_poison_message_and_redrives_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store_dir = dir.path().join("store");
    let stdout = run_example("dead_letter", &[store_dir.as_os_str()]);
    for n in 1..=3 {
        assert!(
            stdout.contains(&format!("\"resize corrupt.png\" (delivery {n}): failed")),
            "{stdout}"
        );
    }
    assert!(!stdout.contains("(delivery 4)"), "{stdout}");
    assert!(
        stdout.contains("dead-lettered: #2 reason DeliveryLimit from \"jobs\""),
        "{stdout}"
    );
    assert!(stdout.contains("redrive moved 1 message"), "{stdout}");
    assert!(
        stdout.contains("back in jobs: #2 delivery_count 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("all expected outcomes observed"),
        "{stdout}"
    );
    let store = walq::Store::open(&store_dir, walq::StoreOptions::new()).expect("reopen");
    let jobs = store.queue("jobs").expect("jobs").stats();
    let dead = store.queue("jobs.dead").expect("jobs.dead").stats();
    assert_eq!(
        (jobs.published, jobs.acked, jobs.dead_lettered, jobs.ready),
        (5, 5, 1, 0)
    );
    assert_eq!((dead.ready, dead.unacked), (0, 0));
    drop(store);
    let again = Command::new(example_binary("dead_letter"))
        .arg(&store_dir)
        .output()
        .expect("rerun");
    assert!(
        !again.status.success(),
        "a second run on the same store must fail"
    );
}

/// Runs an example binary with `args`; returns its stdout, failing on a non-zero exit.
fn run_example(name: &str, args: &[&std::ffi::OsStr]) -> String {
    let output = Command::new(example_binary(name))
        .args(args)
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

#[test]
fn job_scheduler_example_restarts_and_completes_every_job_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store_dir = dir.path().join("store");
    let stdout = run_example("job_scheduler", &[store_dir.as_os_str()]);

    // The restart happened: the store was closed and reopened, and the reopened store held
    // exactly the jobs that had not completed.
    assert!(
        stdout.contains("-- restart: stop the workers, close the store --"),
        "{stdout}"
    );
    assert!(stdout.contains("store closed;"), "{stdout}");
    assert!(stdout.contains("reopened: "), "{stdout}");
    assert!(stdout.contains("the log ended cleanly"), "{stdout}");
    let before: usize = stdout
        .split("before the restart: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("count of jobs completed before the restart");
    let resumed = stdout
        .lines()
        .find(|l| l.starts_with("resumed: "))
        .expect("resumed line");
    assert!(
        resumed.contains(&format!("the {} jobs not completed yet", 16 - before)),
        "{resumed}"
    );

    // The summary table: one row per job, each completed exactly once, some before the
    // restart and some after it, retries counted.
    let table = stdout
        .split("-- summary --")
        .nth(1)
        .expect("summary section");
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.contains("the restart") && !l.starts_with("completed"))
        .collect();
    assert_eq!(rows.len(), 16, "{table}");
    let mut phases = (0, 0);
    for row in &rows {
        let completions = row.matches(", before the restart").count()
            + row.matches(", after the restart").count();
        assert_eq!(completions, 1, "job not completed exactly once: {row}");
        if row.contains("before the restart") {
            phases.0 += 1;
        } else {
            phases.1 += 1;
        }
    }
    assert_eq!(phases.0, before, "{table}");
    assert!(phases.0 > 0 && phases.1 > 0, "{table}");
    // The flaky job failing twice took three attempts; the one due at +1300 ms ran after the
    // restart.
    let charge = rows
        .iter()
        .find(|r| r.starts_with("charge invoice 17"))
        .expect("charge row");
    assert_eq!(charge.split_whitespace().nth(4), Some("3"), "{charge}");
    let digest = rows
        .iter()
        .find(|r| r.starts_with("weekly digest"))
        .expect("digest row");
    assert!(digest.contains("after the restart"), "{digest}");
    assert!(
        stdout.contains(&format!("of the {before} completed before, 0 ran again")),
        "{stdout}"
    );
    assert!(
        stdout.contains("all 16 jobs completed exactly once, none before its run-at time"),
        "{stdout}"
    );
    assert!(!stdout.contains("PROBLEM"), "{stdout}");
}

#[test]
fn fsync_policies_example_prints_a_row_per_policy_and_producer_count() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stdout = run_example(
        "fsync_policies",
        &[
            "--messages".as_ref(),
            "150".as_ref(),
            "--producers".as_ref(),
            "3".as_ref(),
            "--max-seconds".as_ref(),
            "1".as_ref(),
            "--dir".as_ref(),
            dir.path().as_os_str(),
        ],
    );
    let policies = [
        ("Always", "durable: fdatasync'd before it returns"),
        (
            "Batch { 256, 5 ms }",
            "durable after the next background sync",
        ),
        ("Interval(10 ms)", "durable after the next background sync"),
        ("Never", "durable only at Store::sync"),
    ];
    for (policy, durable) in policies {
        for producers in ["1", "3"] {
            let row = stdout
                .lines()
                .find(|l| {
                    l.starts_with(policy)
                        && l[policy.len()..].split_whitespace().next() == Some(producers)
                })
                .unwrap_or_else(|| panic!("no row for {policy} x {producers}:\n{stdout}"));
            let cols: Vec<&str> = row[policy.len()..].split_whitespace().collect();
            // producers, published (a `*` if stopped by the time limit), msgs/s, close ms.
            let published: u64 = cols[1].trim_end_matches('*').parse().expect("published");
            assert!(published > 0 && published <= 150, "{row}");
            if !cols[1].ends_with('*') {
                assert_eq!(published, 150, "{row}");
            }
            let rate: f64 = cols[2].parse().expect("msgs/s");
            assert!(rate > 0.0, "{row}");
            assert!(row.contains(durable), "{row}");
        }
    }
    assert!(
        stdout.contains("every run's messages were all present after reopening its store"),
        "{stdout}"
    );
    // Every store was removed with its run.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .collect::<Result<_, _>>()
        .expect("entries");
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn crash_recovery_example_recovers_every_confirmed_message_after_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store_dir = dir.path().join("store");
    let stdout = run_example(
        "crash_recovery",
        &[
            "--kill-after-lines".as_ref(),
            "150".as_ref(),
            "--kill-after-ms".as_ref(),
            "20000".as_ref(),
            "--dir".as_ref(),
            store_dir.as_os_str(),
        ],
    );
    assert!(stdout.contains("killed the child with SIGKILL"), "{stdout}");
    #[cfg(unix)]
    assert!(stdout.contains("signal: 9"), "{stdout}");
    let confirmed = stdout
        .lines()
        .find(|l| l.starts_with("confirmed by the child: "))
        .expect("confirmed line");
    let numbers: Vec<usize> = confirmed
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    // publishes, acks, held: the child was killed mid-work, after doing all three.
    assert!(
        numbers.len() >= 3 && numbers[0] > 0 && numbers[1] > 0 && numbers[2] > 0,
        "{confirmed}"
    );
    assert!(stdout.contains("records replayed"), "{stdout}");
    assert!(!stdout.contains("[FAIL]"), "{stdout}");
    let verdict = stdout
        .lines()
        .find(|l| l.starts_with("verdict: "))
        .expect("verdict line");
    assert!(verdict.starts_with("verdict: PASS: all "), "{verdict}");
    assert!(
        verdict.ends_with(&format!(
            "confirmed messages were recovered and none of the {} acked came back",
            numbers[1]
        )),
        "{verdict}"
    );

    // The store the example checked holds what the verdict says: reopened here, every
    // confirmed-unacked message is still there (the example only received, never acked).
    let recovered: u64 = verdict
        .trim_start_matches("verdict: PASS: all ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("recovered count");
    let store = walq::Store::open(&store_dir, walq::StoreOptions::new()).expect("reopen");
    let orders = store.queue("orders").expect("orders").stats();
    assert!(
        orders.ready >= recovered && orders.ready <= recovered + 2,
        "ready {} vs verdict {recovered}",
        orders.ready
    );
    assert_eq!(orders.unacked, 0);
}
