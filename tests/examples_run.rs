//! The examples run to completion on a real directory: `work_queue` completes every task
//! exactly once and, after the simulated crash, lists the unacknowledged deliveries as
//! redelivered; `dead_letter` moves the poison message to the dead-letter queue after three
//! deliveries and redrives it back.
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
    let binary = example_binary("work_queue");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("store");
    let output = Command::new(&binary)
        .arg(&store)
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "example failed ({}):\n{stdout}\n{stderr}",
        output.status
    );

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
    let binary = example_binary("dead_letter");
    let dir = tempfile::tempdir().expect("temp dir");
    let store_dir = dir.path().join("store");
    let output = Command::new(&binary)
        .arg(&store_dir)
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "example failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
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
    let again = Command::new(&binary)
        .arg(&store_dir)
        .output()
        .expect("rerun");
    assert!(
        !again.status.success(),
        "a second run on the same store must fail"
    );
}
