//! Proves that a store directory can be open in only one place at a time: a second open, from
//! this process or another one, fails with `Error::Locked` until every handle of the first
//! store is dropped, and the in-memory file system's locks behave the same way.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use walq::io::{DiskVfs, MemVfs, Vfs};
use walq::{Error, Store, StoreOptions};

/// Environment variable naming the directory the child probe opens.
const DIR_ENV: &str = "WALQ_LOCK_PROBE_DIR";
/// `try` (open, report, exit) or `hold` (open, report, keep it open until stdin says go).
const MODE_ENV: &str = "WALQ_LOCK_PROBE_MODE";
/// Prefix of the probe's report lines, to tell them from the test harness's own output.
const MARK: &str = "walq-lock-probe: ";

fn options() -> StoreOptions {
    StoreOptions::new().segment_size(1 << 20)
}

#[track_caller]
fn assert_locked(result: walq::Result<Store>, dir: &Path) {
    match result {
        Err(Error::Locked { dir: reported }) => {
            assert_eq!(reported, dir, "Locked names the directory");
            let text = Error::Locked { dir: reported }.to_string();
            assert!(
                text.contains(&dir.display().to_string()),
                "the message names the directory: {text}"
            );
        }
        Err(other) => panic!("expected Error::Locked, got {other:?}"),
        Ok(_) => panic!("a second open of a locked directory succeeded"),
    }
}

#[test]
fn second_open_in_the_same_process_fails_with_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let first = Store::open(&dir, options()).unwrap();
    let q = first.declare_queue("q").unwrap();
    q.publish(b"held").unwrap();

    assert_locked(Store::open(&dir, options()), &dir);
    assert_locked(Store::open(&dir, options()), &dir);

    // The failed attempts did not disturb the holder.
    q.publish(b"still works").unwrap();
    assert_eq!(q.try_receive().unwrap().unwrap().payload, b"held");
    assert_eq!(first.stats().ready, 1);
}

#[test]
fn the_lock_lasts_until_the_store_and_every_queue_handle_are_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let store = Store::open(&dir, options()).unwrap();
    let q = store.declare_queue("q").unwrap();
    q.publish(b"survives").unwrap();
    let clone = store.clone();

    drop(store);
    assert_locked(Store::open(&dir, options()), &dir);
    drop(clone);
    // A queue handle keeps the store open too.
    assert_locked(Store::open(&dir, options()), &dir);
    q.publish(b"through the last handle").unwrap();
    drop(q);

    let reopened = Store::open(&dir, options()).expect("every handle is gone");
    let q = reopened.queue("q").unwrap();
    assert_eq!(q.try_receive().unwrap().unwrap().payload, b"survives");
    assert_eq!(
        q.try_receive().unwrap().unwrap().payload,
        b"through the last handle"
    );
}

/// `Store::close` releases the directory lock at once, even while handles on the closed
/// store still exist; those handles must then leave the directory alone.
fn close_releases_the_lock(open: &dyn Fn() -> walq::Result<Store>, dir: &Path) {
    let old = open().unwrap();
    let old_q = old.declare_queue("q").unwrap();
    let out = old_q.publish(b"out").unwrap();
    old_q.publish(b"waiting").unwrap();
    assert_eq!(old_q.try_receive().unwrap().unwrap().id, out);
    old.close().unwrap();

    let new = open().expect("close releases the directory lock");
    assert_locked(open(), dir);

    // The closed store's handles refuse everything that would touch the directory.
    assert!(matches!(old_q.publish(b"late"), Err(Error::Closed)));
    assert!(matches!(old_q.try_receive(), Err(Error::Closed)));
    assert!(matches!(old_q.ack(out), Err(Error::Closed)));
    assert!(matches!(old.nack(out, true), Err(Error::Closed)));
    assert!(matches!(old.declare_queue("other"), Err(Error::Closed)));

    // Dropping the closed store must not release the lock the new store holds.
    drop(old_q);
    drop(old);
    assert_locked(open(), dir);

    let q = new.queue("q").unwrap();
    let back = q.try_receive().unwrap().unwrap();
    assert_eq!(
        (back.id, back.redelivered, back.delivery_count),
        (out, true, 2)
    );
    assert_eq!(q.try_receive().unwrap().unwrap().payload, b"waiting");
    assert!(q.try_receive().unwrap().is_none());
    assert_eq!(
        new.stats().next_message_id,
        2,
        "the old handles wrote nothing"
    );
    drop(q);
    drop(new);
    assert_eq!(
        open()
            .expect("every handle is gone")
            .stats()
            .next_message_id,
        2
    );
}

#[test]
fn close_releases_the_lock_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    close_releases_the_lock(&|| Store::open(&dir, options()), &dir);
}

#[test]
fn close_releases_the_lock_on_mem_vfs() {
    let vfs = MemVfs::new();
    let dir = Path::new("/stores/closing");
    close_releases_the_lock(
        &|| Store::open_with_vfs(Arc::new(vfs.clone()), dir, options()),
        dir,
    );
}

#[test]
fn the_log_layer_refuses_a_directory_a_store_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let store = Store::open(&dir, options()).unwrap();
    let result = walq::log::Log::open(
        Arc::new(DiskVfs),
        &dir,
        walq::LogOptions::new().segment_size(1 << 20),
        &mut |_| Ok(()),
    );
    assert!(
        matches!(result, Err(Error::Locked { .. })),
        "Log::open of a held directory: {:?}",
        result.map(|_| ())
    );
    drop(store);
}

#[test]
fn failed_opens_release_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    drop(Store::open(&dir, options()).unwrap());

    // Fails after taking the lock (during recovery): the lock must be released again.
    let foreign = dir.join("notes.txt");
    std::fs::write(&foreign, b"not a segment").unwrap();
    let result = Store::open(&dir, options());
    assert!(
        matches!(result, Err(Error::ForeignFile { .. })),
        "{:?}",
        result.map(|_| ())
    );
    std::fs::remove_file(&foreign).unwrap();

    // Fails before taking the lock.
    let result = Store::open(&dir, options().segment_size(1000));
    assert!(
        matches!(result, Err(Error::InvalidOptions(_))),
        "{:?}",
        result.map(|_| ())
    );

    let store = Store::open(&dir, options()).expect("no failed open keeps the lock");
    assert_locked(Store::open(&dir, options()), &dir);
    drop(store);
}

#[test]
fn disk_vfs_try_lock_is_exclusive_within_a_process() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("LOCK");
    let guard = DiskVfs.try_lock(&path).unwrap().expect("the first lock");
    assert!(DiskVfs.try_lock(&path).unwrap().is_none(), "a second lock");
    drop(guard);
    assert!(
        DiskVfs.try_lock(&path).unwrap().is_some(),
        "lock after release"
    );
}

// ---------------------------------------------------------------------------------------
// Another process.

/// Run by the parent as a child process; does nothing when run directly.
#[test]
#[ignore = "helper: run in a child process by the cross-process tests"]
fn child_probe() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let hold = std::env::var(MODE_ENV).is_ok_and(|m| m == "hold");
    match Store::open(PathBuf::from(dir), options()) {
        Err(Error::Locked { .. }) => println!("{MARK}locked"),
        Err(other) => println!("{MARK}error {other}"),
        Ok(store) => {
            println!("{MARK}opened ready={}", store.stats().ready);
            if hold {
                println!("{MARK}holding");
                std::io::stdout().flush().unwrap();
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).unwrap();
                let q = store.declare_queue("from-child").unwrap();
                q.publish(b"written by the child").unwrap();
                store.close().unwrap();
            }
        }
    }
}

fn probe_command(dir: &Path, mode: &str) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--ignored",
        "--exact",
        "child_probe",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(DIR_ENV, dir)
    .env(MODE_ENV, mode);
    cmd
}

/// The probe's report on `line`, if any (the harness may print "test child_probe ... " on
/// the same line first).
fn report_of(line: &str) -> Option<&str> {
    line.find(MARK).map(|at| &line[at + MARK.len()..])
}

/// Runs the probe to completion and returns its report lines.
fn probe(dir: &Path) -> Vec<String> {
    let out = probe_command(dir, "try")
        .output()
        .expect("run the child probe");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child probe failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<String> = stdout
        .lines()
        .filter_map(report_of)
        .map(str::to_owned)
        .collect();
    assert_eq!(reports.len(), 1, "one report expected, stdout:\n{stdout}");
    reports
}

#[test]
fn another_process_sees_locked_while_this_one_holds_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let store = Store::open(&dir, options()).unwrap();
    let q = store.declare_queue("q").unwrap();
    q.publish_batch(&["a", "b", "c"]).unwrap();

    assert_eq!(
        probe(&dir),
        ["locked"],
        "while this process holds the store"
    );
    // Still ours, and unharmed.
    q.publish(b"d").unwrap();
    drop(q);
    drop(store);

    assert_eq!(
        probe(&dir),
        ["opened ready=4"],
        "after this process dropped the store"
    );
    // The child exited, so its lock is gone too.
    let store = Store::open(&dir, options()).expect("open after the child exited");
    assert_eq!(store.stats().ready, 4);
}

#[test]
fn another_process_can_open_as_soon_as_this_one_closed_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let store = Store::open(&dir, options()).unwrap();
    let q = store.declare_queue("q").unwrap();
    q.publish_batch(&["a", "b"]).unwrap();
    assert_eq!(probe(&dir), ["locked"]);
    store.close().unwrap();
    // `store` and `q` are still alive, but closed.
    assert_eq!(probe(&dir), ["opened ready=2"]);
    assert!(matches!(q.publish(b"c"), Err(Error::Closed)));
}

/// Kills the child if a test fails while it is running.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn this_process_sees_locked_while_another_one_holds_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    drop(Store::open(&dir, options()).unwrap());

    let mut child = ChildGuard(
        probe_command(&dir, "hold")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the child probe"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut reports = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(report) = report_of(&line) {
            reports.push(report.to_owned());
            if report == "holding" || !report.starts_with("opened") {
                break;
            }
        }
    }
    assert_eq!(
        reports,
        ["opened ready=0", "holding"],
        "the child opened the store"
    );

    assert_locked(Store::open(&dir, options()), &dir);
    assert_locked(Store::open(&dir, options()), &dir);

    // Let the child write something, close and exit.
    let mut stdin = child.0.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    drop(stdin);
    for line in lines {
        line.unwrap();
    }
    let status = child.0.wait().unwrap();
    assert!(status.success(), "child probe failed: {status}");

    let store = Store::open(&dir, options()).expect("open after the child exited");
    let q = store.queue("from-child").expect("the child's queue");
    assert_eq!(
        q.try_receive().unwrap().unwrap().payload,
        b"written by the child"
    );
}

// ---------------------------------------------------------------------------------------
// MemVfs.

#[test]
fn mem_vfs_locks_a_directory_across_clones_of_the_same_file_system() {
    let vfs = MemVfs::new();
    let dir = Path::new("/stores/locked");
    let open = |fs: &MemVfs, dir: &Path| Store::open_with_vfs(Arc::new(fs.clone()), dir, options());

    let first = open(&vfs, dir).unwrap();
    let q = first.declare_queue("q").unwrap();
    q.publish(b"mem").unwrap();
    assert_locked(open(&vfs, dir), dir);

    // Another directory of the same file system, and the same path on another file
    // system, are independent.
    let other_dir = open(&vfs, Path::new("/stores/other")).expect("another directory");
    let other_fs = open(&MemVfs::new(), dir).expect("another file system");
    drop((other_dir, other_fs));

    drop(first);
    assert_locked(open(&vfs, dir), dir);
    drop(q);
    let reopened = open(&vfs, dir).expect("every handle is gone");
    assert_eq!(reopened.stats().ready, 1);
}

#[test]
fn mem_vfs_try_lock_is_exclusive_until_the_guard_drops() {
    let vfs = MemVfs::new();
    let dir = Path::new("/locks");
    vfs.create_dir_all(dir).unwrap();
    let path = dir.join("LOCK");
    let guard = vfs.try_lock(&path).unwrap().expect("the first lock");
    let clone = vfs.clone();
    assert!(
        clone.try_lock(&path).unwrap().is_none(),
        "a clone shares the lock table"
    );
    assert!(vfs.try_lock(&dir.join("OTHER")).unwrap().is_some());
    let separate = MemVfs::new();
    separate.create_dir_all(dir).unwrap();
    assert!(
        separate.try_lock(&path).unwrap().is_some(),
        "another file system has its own locks"
    );
    drop(guard);
    assert!(
        clone.try_lock(&path).unwrap().is_some(),
        "lock after release"
    );
}
