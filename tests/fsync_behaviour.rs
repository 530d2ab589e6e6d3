//! What each fsync policy really calls, seen through a counting, fault-injecting file
//! system: syncs before returning under `Always`, group commit under contention, no syncs
//! under `Never`, background syncs under `Batch`/`Interval`, poisoning without retry after a
//! failed `fdatasync` or write, and the create/sync/rename/sync_dir order of new segments.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use walq::format::{decode_frame, SegmentHeader, SEGMENT_HEADER_LEN};
use walq::io::{DiskVfs, FileView, LockGuard, MemVfs, Vfs, VfsFile};
use walq::{Error, FsyncPolicy, SegmentId, Store, StoreOptions};

// ---------------------------------------------------------------------------------------
// The wrapper file system.
// ---------------------------------------------------------------------------------------

/// One call seen by the wrapper, recorded after it completed (failed calls included).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Create {
        file: usize,
        path: PathBuf,
    },
    Open {
        file: usize,
        path: PathBuf,
    },
    WriteAt {
        file: usize,
        offset: u64,
        len: usize,
    },
    SyncData {
        file: usize,
        ok: bool,
    },
    SetLen {
        file: usize,
        len: u64,
    },
    Preallocate {
        file: usize,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    Remove {
        path: PathBuf,
    },
    SyncDir {
        dir: PathBuf,
    },
}

#[derive(Debug, Default)]
struct FaultState {
    events: Mutex<Vec<Op>>,
    next_file: AtomicUsize,
    sync_data_calls: AtomicUsize,
    sync_dir_calls: AtomicUsize,
    write_calls: AtomicUsize,
    /// The `sync_data` call with this (1-based) number fails with EIO; 0 for none.
    fail_sync_data_at: AtomicUsize,
    /// From the `write_at` call with this number on, writes fail with ENOSPC (that one call
    /// first writes half of its buffer and reports a short write); 0 for none.
    fail_writes_from: AtomicUsize,
    /// Sleep this long in every `sync_data`, in microseconds.
    sync_delay_us: AtomicU64,
}

/// A [`Vfs`] wrapping another one, counting and recording calls and injecting failures.
#[derive(Debug, Clone)]
struct FaultVfs {
    inner: Arc<dyn Vfs>,
    state: Arc<FaultState>,
}

#[derive(Debug)]
struct FaultFile {
    inner: Arc<dyn VfsFile>,
    id: usize,
    state: Arc<FaultState>,
}

impl FaultState {
    fn record(&self, op: Op) {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(op);
    }
}

impl FaultVfs {
    fn new(inner: Arc<dyn Vfs>) -> Self {
        FaultVfs {
            inner,
            state: Arc::default(),
        }
    }

    fn syncs(&self) -> usize {
        self.state.sync_data_calls.load(Ordering::SeqCst)
    }

    fn dir_syncs(&self) -> usize {
        self.state.sync_dir_calls.load(Ordering::SeqCst)
    }

    fn writes(&self) -> usize {
        self.state.write_calls.load(Ordering::SeqCst)
    }

    fn events(&self) -> Vec<Op> {
        self.state
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes the next `sync_data` call fail with EIO.
    fn fail_next_sync(&self) {
        self.state
            .fail_sync_data_at
            .store(self.syncs() + 1, Ordering::SeqCst);
    }

    /// Makes the next `write_at` short and every later one fail with ENOSPC.
    fn fill_disk_at_next_write(&self) {
        self.state
            .fail_writes_from
            .store(self.writes() + 1, Ordering::SeqCst);
    }

    fn set_sync_delay(&self, delay: Duration) {
        self.state
            .sync_delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    fn wrap(&self, inner: Arc<dyn VfsFile>) -> (usize, Arc<dyn VfsFile>) {
        let id = self.state.next_file.fetch_add(1, Ordering::SeqCst);
        let file = FaultFile {
            inner,
            id,
            state: Arc::clone(&self.state),
        };
        (id, Arc::new(file))
    }
}

impl Vfs for FaultVfs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        let (file, wrapped) = self.wrap(self.inner.create(path)?);
        self.state.record(Op::Create {
            file,
            path: path.to_path_buf(),
        });
        Ok(wrapped)
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn VfsFile>> {
        let (file, wrapped) = self.wrap(self.inner.open(path, writable)?);
        self.state.record(Op::Open {
            file,
            path: path.to_path_buf(),
        });
        Ok(wrapped)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)?;
        self.state.record(Op::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)?;
        self.state.record(Op::Remove {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.state.sync_dir_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.sync_dir(dir)?;
        self.state.record(Op::SyncDir {
            dir: dir.to_path_buf(),
        });
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        self.inner.try_lock(path)
    }
}

impl VfsFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let n = self.state.write_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let fail_from = self.state.fail_writes_from.load(Ordering::SeqCst);
        let result = if fail_from != 0 && n > fail_from {
            Err(io::Error::from_raw_os_error(28)) // ENOSPC
        } else if fail_from != 0 && n == fail_from && buf.len() >= 2 {
            self.inner.write_at(&buf[..buf.len() / 2], offset)
        } else if fail_from != 0 && n == fail_from {
            Err(io::Error::from_raw_os_error(28))
        } else {
            self.inner.write_at(buf, offset)
        };
        if let Ok(len) = result {
            self.state.record(Op::WriteAt {
                file: self.id,
                offset,
                len,
            });
        }
        result
    }

    fn sync_data(&self) -> io::Result<()> {
        let n = self.state.sync_data_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let delay = self.state.sync_delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        let result = if self.state.fail_sync_data_at.load(Ordering::SeqCst) == n {
            Err(io::Error::from_raw_os_error(5)) // EIO
        } else {
            self.inner.sync_data()
        };
        self.state.record(Op::SyncData {
            file: self.id,
            ok: result.is_ok(),
        });
        result
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn finish_writes(&self) {
        self.inner.finish_writes();
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)?;
        self.state.record(Op::SetLen { file: self.id, len });
        Ok(())
    }

    fn preallocate(&self, len: u64) -> io::Result<()> {
        self.inner.preallocate(len)?;
        self.state.record(Op::Preallocate { file: self.id });
        Ok(())
    }

    fn view(&self, len: u64) -> io::Result<FileView> {
        self.inner.view(len)
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------

const QUEUE: &str = "q";

fn dir() -> PathBuf {
    PathBuf::from("/store")
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

fn small_opts() -> StoreOptions {
    StoreOptions::new().segment_size(64 << 10)
}

fn open(vfs: &FaultVfs, dir: &Path, options: StoreOptions) -> Store {
    Store::open_with_vfs(Arc::new(vfs.clone()), dir, options).expect("open store")
}

fn drain(store: &Store) -> Vec<Vec<u8>> {
    let queue = store.queue(QUEUE).expect("queue");
    let mut out = Vec::new();
    while let Some(d) = queue.try_receive().expect("receive") {
        out.push(d.payload);
    }
    out
}

/// Polls `cond` every millisecond until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn is_poisoned<T: std::fmt::Debug>(r: walq::Result<T>) -> bool {
    matches!(r, Err(Error::Poisoned { .. }))
}

// ---------------------------------------------------------------------------------------
// (a) Always: every publish syncs before returning.
// ---------------------------------------------------------------------------------------

fn always_syncs_each_publish(vfs: &FaultVfs, dir: &Path) {
    let store = open(vfs, dir, small_opts().fsync(FsyncPolicy::Always));
    let queue = store.declare_queue(QUEUE).expect("declare");
    for i in 0..20 {
        let before_syncs = vfs.syncs();
        let before_events = vfs.events().len();
        queue.publish(format!("m{i}").as_bytes()).expect("publish");
        assert!(
            vfs.syncs() > before_syncs,
            "publish {i} returned without a sync"
        );
        // The sync came after the write of the publish record, on the same file.
        let events = vfs.events();
        let new = &events[before_events..];
        let write = new
            .iter()
            .rposition(|e| matches!(e, Op::WriteAt { .. }))
            .expect("the publish wrote");
        let Op::WriteAt { file, .. } = new[write] else {
            unreachable!()
        };
        assert!(
            new[write..].contains(&Op::SyncData { file, ok: true }),
            "publish {i}: no sync of file {file} after its write: {new:?}"
        );
    }
    // A receive writes a Deliver record without waiting for a sync; ack and nack sync.
    let d = queue.try_receive().expect("receive").expect("a message");
    let before = vfs.syncs();
    queue.ack(d.id).expect("ack");
    assert!(vfs.syncs() > before, "ack returned without a sync");
    let d = queue.try_receive().expect("receive").expect("a message");
    let before = vfs.syncs();
    queue.nack(d.id, true).expect("nack");
    assert!(vfs.syncs() > before, "nack returned without a sync");
    let before = vfs.syncs();
    for _ in 0..5 {
        queue.try_receive().expect("receive").expect("a message");
    }
    assert_eq!(vfs.syncs(), before, "receives do not wait for fsync");
}

#[test]
fn always_syncs_before_each_publish_returns_in_memory() {
    let vfs = FaultVfs::new(Arc::new(MemVfs::new()));
    always_syncs_each_publish(&vfs, &dir());
}

#[test]
fn always_syncs_before_each_publish_returns_on_disk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vfs = FaultVfs::new(Arc::new(DiskVfs));
    always_syncs_each_publish(&vfs, &tmp.path().join("store"));
}

// ---------------------------------------------------------------------------------------
// (b) Group commit.
// ---------------------------------------------------------------------------------------

#[test]
fn group_commit_shares_syncs_between_threads() {
    const THREADS: usize = 16;
    const EACH: usize = 25;
    let vfs = FaultVfs::new(Arc::new(MemVfs::new()));
    let store = open(&vfs, &dir(), small_opts().fsync(FsyncPolicy::Always));
    let queue = store.declare_queue(QUEUE).expect("declare");
    vfs.set_sync_delay(Duration::from_millis(2));
    let before = vfs.syncs();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let queue = queue.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    queue
                        .publish(format!("t{t}-{i}").as_bytes())
                        .expect("publish");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("publisher thread");
    }
    let publishes = THREADS * EACH;
    let syncs = vfs.syncs() - before;
    assert!(syncs >= 1);
    assert!(
        syncs < publishes / 3,
        "{syncs} syncs for {publishes} concurrent publishes: no group commit"
    );
    assert_eq!(queue.stats().ready, publishes as u64);
    assert_eq!(queue.stats().published, publishes as u64);
    drop(queue);
    drop(store);
    let store = open(&vfs, &dir(), small_opts());
    assert_eq!(drain(&store).len(), publishes);
}

/// Many threads publish under `Always` through roll-overs while every `fdatasync` is slow,
/// so that most of them park behind a running round; then one `fdatasync` fails. Every
/// thread must return (the parked ones included), none may have been told its publish
/// succeeded unless it is durable: after a power loss on the simulated disk, every confirmed
/// payload is recovered.
#[test]
fn group_commit_confirms_only_durable_publishes_through_roll_overs_and_a_failed_sync() {
    use std::sync::mpsc;
    use walq::io::{CrashMode, SimVfs};
    const THREADS: usize = 12;
    let sim = SimVfs::new(7);
    let vfs = FaultVfs::new(Arc::new(sim.clone()));
    let store = open(&vfs, &dir(), small_opts().fsync(FsyncPolicy::Always));
    let queue = store.declare_queue(QUEUE).expect("declare");
    vfs.set_sync_delay(Duration::from_micros(500));
    let confirmed = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = mpsc::channel();
    for t in 0..THREADS {
        let (queue, confirmed, done_tx) = (queue.clone(), Arc::clone(&confirmed), done_tx.clone());
        std::thread::spawn(move || {
            let mut outcome = Ok(());
            for i in 0..10_000 {
                // About 600 bytes: a 64 KiB segment rolls over every hundred publishes.
                let payload = format!("t{t}-{i}-{}", "x".repeat(580)).into_bytes();
                match queue.publish(&payload) {
                    Ok(_) => confirmed.lock().unwrap().push(payload),
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            done_tx.send(outcome).unwrap();
        });
    }
    let enough = wait_until(Duration::from_secs(60), || {
        confirmed.lock().unwrap().len() >= 400
    });
    assert!(enough, "publishers made no progress");
    assert!(store.stats().segments > 2, "roll-overs happened meanwhile");
    vfs.fail_next_sync();
    for _ in 0..THREADS {
        let outcome = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a publisher hung after the failed fdatasync");
        let err = outcome.expect_err("publishers stop at the failure");
        assert!(
            matches!(&err, Error::Poisoned { .. })
                || matches!(&err, Error::Io { source, .. } if source.raw_os_error() == Some(5)),
            "a publisher failed otherwise: {err:?}"
        );
    }
    drop(queue);
    drop(store);
    let confirmed = std::mem::take(&mut *confirmed.lock().unwrap());
    let after = sim.crash(CrashMode::PowerLoss, 11);
    let store = Store::open_with_vfs(Arc::new(after), &dir(), small_opts()).expect("reopen");
    let recovered: std::collections::HashSet<Vec<u8>> = drain(&store).into_iter().collect();
    let lost = confirmed.iter().filter(|p| !recovered.contains(*p)).count();
    assert_eq!(
        lost,
        0,
        "{lost} of {} confirmed publishes lost",
        confirmed.len()
    );
}

// ---------------------------------------------------------------------------------------
// (c) Never.
// ---------------------------------------------------------------------------------------

#[test]
fn never_policy_does_not_sync_publishes() {
    let vfs = FaultVfs::new(Arc::new(MemVfs::new()));
    let store = open(
        &vfs,
        &dir(),
        StoreOptions::new()
            .fsync(FsyncPolicy::Never)
            .segment_size(4 << 20),
    );
    let queue = store.declare_queue(QUEUE).expect("declare");
    let before = vfs.syncs();
    for i in 0..1000 {
        queue
            .publish(format!("message {i}").as_bytes())
            .expect("publish");
    }
    assert_eq!(store.stats().segments, 1, "no roll-over in this part");
    assert_eq!(vfs.syncs(), before, "Never synced during publishes");
    store.sync().expect("explicit sync");
    assert_eq!(vfs.syncs(), before + 1, "Store::sync syncs once");
    store.sync().expect("second sync");
    assert_eq!(vfs.syncs(), before + 1, "nothing new to sync");
    queue.publish(b"last").expect("publish");
    store.close().expect("close");
    assert!(vfs.syncs() > before + 1, "close syncs");
}

#[test]
fn never_policy_syncs_only_at_roll_over() {
    let vfs = FaultVfs::new(Arc::new(MemVfs::new()));
    let store = open(&vfs, &dir(), small_opts().fsync(FsyncPolicy::Never));
    let queue = store.declare_queue(QUEUE).expect("declare");
    let before = vfs.syncs();
    let payload = vec![7u8; 900];
    for _ in 0..300 {
        queue.publish(&payload).expect("publish");
    }
    let rolls = store.stats().segments - 1;
    assert!(rolls >= 3, "{rolls} roll-overs");
    let syncs = vfs.syncs() - before;
    // Each roll-over syncs the sealed segment and the new segment's header, nothing else.
    assert!(
        syncs <= 2 * rolls,
        "{syncs} syncs for {rolls} roll-overs of unsynced publishes"
    );
}

// ---------------------------------------------------------------------------------------
// (d) Batch and Interval.
// ---------------------------------------------------------------------------------------

#[test]
fn batch_syncs_every_max_messages() {
    let vfs = FaultVfs::new(Arc::new(MemVfs::new()));
    let store = open(
        &vfs,
        &dir(),
        small_opts().fsync(FsyncPolicy::Batch {
            max_messages: 10,
            max_delay: Duration::from_secs(3600),
        }),
    );
    let queue = store.declare_queue(QUEUE).expect("declare");
    // The declaration is the first of the first batch.
    queue.publish(b"first").expect("publish");
    let mut base = vfs.syncs();
    let mut published = 2;
    for round in 0..5 {
        while published % 10 != 9 {
            queue.publish(b"x").expect("publish");
            published += 1;
        }
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(vfs.syncs(), base, "round {round}: synced before 10 records");
        queue.publish(b"tenth").expect("publish");
        published += 1;
        assert!(
            wait_until(Duration::from_secs(2), || vfs.syncs() > base),
            "round {round}: no sync after 10 records"
        );
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(vfs.syncs(), base + 1, "round {round}: one sync per batch");
        base += 1;
    }
    // Idle: no more syncs.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(vfs.syncs(), base);
}

#[test]
fn batch_syncs_after_max_delay() {
    let vfs = FaultVfs::new(Arc::new(MemVfs::new()));
    let store = open(
        &vfs,
        &dir(),
        small_opts().fsync(FsyncPolicy::Batch {
            max_messages: 1_000_000,
            max_delay: Duration::from_millis(30),
        }),
    );
    let before_declare = vfs.syncs();
    let queue = store.declare_queue(QUEUE).expect("declare");
    // The declaration itself is synced by the flusher after the delay; let that pass.
    assert!(wait_until(Duration::from_secs(2), || vfs.syncs() > before_declare));
    std::thread::sleep(Duration::from_millis(10));
    let base = vfs.syncs();
    let start = Instant::now();
    queue.publish(b"one").expect("publish");
    assert!(
        wait_until(Duration::from_secs(2), || vfs.syncs() > base),
        "no sync after max_delay"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(25),
        "synced too early"
    );
    let after = vfs.syncs();
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(vfs.syncs(), after, "no syncs while idle");
}

#[test]
fn interval_syncs_after_writes_and_not_while_idle() {
    let vfs = FaultVfs::new(Arc::new(MemVfs::new()));
    let store = open(
        &vfs,
        &dir(),
        small_opts().fsync(FsyncPolicy::Interval(Duration::from_millis(20))),
    );
    let base = vfs.syncs();
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(vfs.syncs(), base, "synced an idle, clean store");
    let queue = store.declare_queue(QUEUE).expect("declare");
    queue.publish(b"one").expect("publish");
    assert!(
        wait_until(Duration::from_secs(1), || vfs.syncs() > base),
        "no sync within a second of a write"
    );
    let after = vfs.syncs();
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(vfs.syncs(), after, "synced while idle");
    for _ in 0..3 {
        queue.publish(b"more").expect("publish");
        let before = vfs.syncs();
        assert!(wait_until(Duration::from_secs(1), || vfs.syncs() > before));
    }
}

// ---------------------------------------------------------------------------------------
// (e) A failed fdatasync poisons the store and is never retried.
// ---------------------------------------------------------------------------------------

#[test]
fn failed_sync_under_always_poisons_and_is_never_retried() {
    let mem = MemVfs::new();
    let vfs = FaultVfs::new(Arc::new(mem.clone()));
    let store = open(&vfs, &dir(), small_opts().fsync(FsyncPolicy::Always));
    let queue = store.declare_queue(QUEUE).expect("declare");
    queue.publish(b"a").expect("publish a");
    queue.publish(b"b").expect("publish b");
    let delivered = queue.try_receive().expect("receive").expect("a");
    vfs.fail_next_sync();
    let err = queue.publish(b"c").expect_err("the sync of c fails");
    assert!(
        matches!(&err, Error::Io { source, .. } if source.raw_os_error() == Some(5)),
        "the first failure reports the I/O error: {err:?}"
    );
    let syncs = vfs.syncs();

    assert!(is_poisoned(queue.publish(b"d")), "publish after failure");
    assert!(is_poisoned(queue.publish_batch(&[b"e", b"f"])), "batch");
    assert!(is_poisoned(queue.ack(delivered.id)), "ack");
    assert!(is_poisoned(queue.nack(delivered.id, true)), "nack requeue");
    assert!(is_poisoned(store.nack(delivered.id, false)), "nack drop");
    assert!(is_poisoned(store.sync()), "sync");
    assert!(is_poisoned(store.declare_queue("other")), "declare");
    assert!(store.close().is_err(), "close of a poisoned store");
    assert_eq!(vfs.syncs(), syncs, "the failed sync was retried");
    drop(queue);
    drop(delivered);
    drop(store);
    assert_eq!(vfs.syncs(), syncs, "dropping the store synced");

    // Reopen on the same files: a consistent state. `c` may or may not be there (its
    // publish failed, so either is correct); nothing after it is.
    let store = Store::open_with_vfs(Arc::new(mem), &dir(), small_opts()).expect("reopen");
    let got = drain(&store);
    assert!(
        got == vec![b"a".to_vec(), b"b".to_vec()]
            || got == vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()],
        "recovered {got:?}"
    );
    assert_eq!(
        store.queue_names().len(),
        1,
        "the refused declaration left nothing"
    );
}

#[test]
fn failed_background_sync_under_batch_poisons_and_is_never_retried() {
    let mem = MemVfs::new();
    let vfs = FaultVfs::new(Arc::new(mem.clone()));
    let store = open(
        &vfs,
        &dir(),
        small_opts().fsync(FsyncPolicy::Batch {
            max_messages: 5,
            max_delay: Duration::from_millis(5),
        }),
    );
    let queue = store.declare_queue(QUEUE).expect("declare");
    queue.publish(b"warm-up").expect("publish");
    store.sync().expect("sync");
    let mut ok: Vec<Vec<u8>> = vec![b"warm-up".to_vec()];
    vfs.fail_next_sync();
    let failing_sync = vfs.syncs() + 1;
    // Publishes return without waiting; the flusher's sync fails, and from then on every
    // call is refused.
    let mut poisoned = false;
    let start = Instant::now();
    for i in 0.. {
        let p = format!("m{i}").into_bytes();
        match queue.publish(&p) {
            Ok(_) => ok.push(p),
            Err(Error::Poisoned { .. }) => {
                poisoned = true;
                break;
            }
            Err(other) => panic!("unexpected error {other}"),
        }
        if start.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        poisoned,
        "the background sync failure never poisoned the store"
    );
    assert_eq!(vfs.syncs(), failing_sync, "exactly the failing sync ran");
    // Give the flusher every chance to retry (it must not).
    std::thread::sleep(Duration::from_millis(100));
    assert!(is_poisoned(queue.publish(b"later")));
    assert!(
        is_poisoned(queue.try_receive()),
        "a receive writes a Deliver record: refused too"
    );
    assert!(is_poisoned(store.sync()));
    assert!(store.close().is_err());
    assert_eq!(vfs.syncs(), failing_sync, "a failed sync was retried");
    drop(queue);
    drop(store);
    assert_eq!(vfs.syncs(), failing_sync, "dropping the store synced");

    let store = Store::open_with_vfs(Arc::new(mem), &dir(), small_opts()).expect("reopen");
    // Every publish that returned Ok was written (this file system loses nothing).
    assert_eq!(drain(&store), ok);
}

// ---------------------------------------------------------------------------------------
// (f) New segments: create .tmp, header, sync, rename, sync_dir, then records.
// ---------------------------------------------------------------------------------------

fn position(events: &[Op], from: usize, pred: impl Fn(&Op) -> bool) -> Option<usize> {
    events[from..].iter().position(pred).map(|i| i + from)
}

/// Publishes 1000-byte messages under `policy` until the log has rolled over three times,
/// closes the store and returns the recorded calls, with each segment's creation: (index
/// of the `Create` event, file number, temporary path), in segment order.
fn roll_over_events(policy: FsyncPolicy) -> (Vec<Op>, Vec<(usize, usize, PathBuf)>) {
    let vfs = FaultVfs::new(Arc::new(MemVfs::new()));
    let store = open(&vfs, &dir(), small_opts().fsync(policy));
    let queue = store.declare_queue(QUEUE).expect("declare");
    let payload = vec![3u8; 1000];
    while store.stats().segments < 4 {
        queue.publish(&payload).expect("publish");
    }
    store.close().expect("close");
    let events = vfs.events();
    assert_eq!(
        vfs.dir_syncs(),
        events
            .iter()
            .filter(|e| matches!(e, Op::SyncDir { .. }))
            .count()
    );
    let creates: Vec<(usize, usize, PathBuf)> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            Op::Create { file, path } if path.to_string_lossy().contains(".wal") => {
                Some((i, *file, path.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(creates.len(), 4, "one creation per segment: {creates:?}");
    (events, creates)
}

/// Checks that the segment created at event `c` (file `file`, path `tmp`) was created as
/// `{k:020}.wal.tmp`, had its header written and synced, and nothing else written, before
/// its first rename; returns where that rename is.
fn created_under_a_temporary_name(
    events: &[Op],
    k: usize,
    c: usize,
    file: usize,
    tmp: &Path,
) -> usize {
    let name = tmp.file_name().and_then(|n| n.to_str()).expect("name");
    assert_eq!(
        name,
        format!("{k:020}.wal.tmp"),
        "segments are created under a temporary name"
    );
    let header = position(events, c, |e| {
        matches!(e, Op::WriteAt { file: f, offset: 0, len } if *f == file && *len == SEGMENT_HEADER_LEN)
    })
    .expect("header written");
    let synced =
        position(events, header, |e| *e == Op::SyncData { file, ok: true }).expect("header synced");
    let renamed = position(events, c, |e| matches!(e, Op::Rename { .. })).expect("rename");
    assert!(
        synced < renamed,
        "segment {k}: renamed before its header was synced"
    );
    for e in &events[c + 1..renamed] {
        if let Op::WriteAt {
            file: f, offset, ..
        } = e
        {
            assert!(*f != file || *offset == 0, "segment {k}: early write {e:?}");
        }
    }
    renamed
}

/// Where the previous segment's last write (its seal) is, before event `before`, and the
/// first sync of that file after it.
fn seal_and_sync(events: &[Op], prev: usize, before: usize) -> (usize, Option<usize>) {
    let seal = events[..before]
        .iter()
        .rposition(|e| matches!(e, Op::WriteAt { file: f, .. } if *f == prev))
        .expect("previous segment written");
    let synced = position(events, seal, |e| {
        *e == Op::SyncData {
            file: prev,
            ok: true,
        }
    });
    (seal, synced)
}

#[test]
fn under_always_new_segments_are_synced_into_the_directory_before_records_are_written() {
    let (events, creates) = roll_over_events(FsyncPolicy::Always);
    for (k, (c, file, tmp)) in creates.iter().enumerate() {
        let file = *file;
        let renamed = created_under_a_temporary_name(&events, k, *c, file, tmp);
        assert_eq!(
            events[renamed],
            Op::Rename {
                from: tmp.clone(),
                to: seg_path(&dir(), k as u64)
            },
            "segment {k}: the next rename moves the .tmp into place"
        );
        let dir_sync = position(&events, renamed, |e| matches!(e, Op::SyncDir { .. }))
            .expect("directory synced");
        assert_eq!(events[dir_sync], Op::SyncDir { dir: dir() });
        let first_record = position(&events, *c, |e| {
            matches!(e, Op::WriteAt { file: f, offset, .. } if *f == file && *offset >= SEGMENT_HEADER_LEN as u64)
        })
        .expect("records written into the segment");
        assert!(
            dir_sync < first_record,
            "segment {k}: a record was written at event {first_record} before the directory \
             sync at {dir_sync}"
        );
        // A roll-over: the previous segment's seal is written and synced before creation.
        if k > 0 {
            let (_, synced) = seal_and_sync(&events, creates[k - 1].1, *c);
            assert!(
                synced.is_some_and(|s| s < *c),
                "segment {k}: previous segment not synced after its seal before creation"
            );
        }
    }
}

#[test]
fn under_never_a_successor_is_published_only_after_the_sealed_segment_is_synced() {
    let (events, creates) = roll_over_events(FsyncPolicy::Never);
    let (c0, file0, tmp0) = &creates[0];
    created_under_a_temporary_name(&events, 0, *c0, *file0, tmp0);
    for (k, (c, file, path)) in creates.iter().enumerate().skip(1) {
        let file = *file;
        let target = seg_path(&dir(), k as u64);
        let pending = PathBuf::from(format!("{}.next", target.display()));
        // Created under its pending name, with no sync on the append path...
        assert_eq!(
            *path, pending,
            "segment {k}: created as a pending successor"
        );
        let first_record = position(&events, *c, |e| {
            matches!(e, Op::WriteAt { file: f, offset, .. } if *f == file && *offset >= SEGMENT_HEADER_LEN as u64)
        })
        .expect("records written into the segment");
        // ...published only once the previous one is durable up to its seal and it is
        // synced itself, and the directory synced after that.
        let published = position(&events, *c, |e| {
            *e == Op::Rename {
                from: pending.clone(),
                to: target.clone(),
            }
        })
        .unwrap_or_else(|| panic!("segment {k} was never published"));
        assert!(
            !events[*c..first_record].iter().any(|e| matches!(
                e,
                Op::SyncData { .. } | Op::Rename { .. } | Op::SyncDir { .. }
            )),
            "segment {k}: a sync or rename before its first record"
        );
        let (seal, synced) = seal_and_sync(&events, creates[k - 1].1, *c);
        let synced = synced.expect("previous segment synced after its seal");
        let self_synced = position(&events, synced, |e| *e == Op::SyncData { file, ok: true })
            .expect("the successor synced before it is published");
        assert!(
            seal < synced && synced < self_synced && self_synced < published,
            "segment {k}: published at event {published}, the sealed segment's sync is at \
             {synced}, its own at {self_synced}"
        );
        let dir_sync = position(&events, published, |e| matches!(e, Op::SyncDir { .. }))
            .expect("directory synced after publishing");
        assert_eq!(events[dir_sync], Op::SyncDir { dir: dir() });
    }
}

/// Opens a store on `mem` under `FsyncPolicy::Never` and publishes ten messages; the caller
/// decides whether it is closed or just dropped.
fn publish_ten_under_never(mem: &MemVfs) -> walq::Result<Store> {
    let store = Store::open_with_vfs(
        Arc::new(mem.clone()),
        &dir(),
        small_opts().fsync(FsyncPolicy::Never),
    )?;
    let queue = store.declare_queue(QUEUE)?;
    for i in 0..10 {
        queue.publish(format!("m{i}").as_bytes())?;
    }
    Ok(store)
}

#[test]
fn reopen_syncs_recovered_tail_and_directory_before_writing() {
    let mem = MemVfs::new();
    publish_ten_under_never(&mem).expect("open");
    let vfs = FaultVfs::new(Arc::new(mem));
    let store = open(&vfs, &dir(), small_opts().fsync(FsyncPolicy::Never));
    let events = vfs.events();
    let opened = events
        .iter()
        .find_map(|e| match e {
            Op::Open { file, path } if *path == seg_path(&dir(), 0) => Some(*file),
            _ => None,
        })
        .expect("segment opened");
    assert!(
        events.contains(&Op::SyncData {
            file: opened,
            ok: true
        }),
        "records recovered from the page cache are synced before being served"
    );
    assert!(
        matches!(events.last(), Some(Op::SyncDir { .. })),
        "{events:?}"
    );
    let queue = store.queue(QUEUE).expect("queue");
    queue.publish(b"new").expect("publish");
}

/// After a clean close the log is durable up to the marker: reopening needs no
/// `fdatasync` of the segment (the directory is still synced after the marker is removed).
/// After a close whose marker no longer matches where the log ends (records written after
/// it by a drop without close), the segment is synced again.
#[test]
fn reopen_after_clean_close_does_not_resync_the_segment() {
    let mem = MemVfs::new();
    publish_ten_under_never(&mem)
        .expect("open")
        .close()
        .expect("close");
    let vfs = FaultVfs::new(Arc::new(mem.clone()));
    let store = open(&vfs, &dir(), small_opts().fsync(FsyncPolicy::Never));
    assert_eq!(vfs.syncs(), 0, "{:?}", vfs.events());
    let events = vfs.events();
    assert!(
        events.contains(&Op::Remove {
            path: dir().join("CLOSED")
        }),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(Op::SyncDir { .. })),
        "{events:?}"
    );
    assert_eq!(drain(&store).len(), 10);
    // Dropped without close: the records of the deliveries are not covered by any marker.
    drop(store);
    let vfs = FaultVfs::new(Arc::new(mem));
    let _store = open(&vfs, &dir(), small_opts().fsync(FsyncPolicy::Never));
    assert!(vfs.syncs() > 0, "{:?}", vfs.events());
}

// ---------------------------------------------------------------------------------------
// (g) A failed write (disk full) poisons the store; the log stays on a record boundary.
// ---------------------------------------------------------------------------------------

fn frame_ends(bytes: &[u8]) -> Vec<u64> {
    let header = SegmentHeader::decode(bytes).expect("segment header");
    let mut ends = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN as u64;
    while let Ok(view) = decode_frame(
        &bytes[offset as usize..],
        header.salt,
        header.segment_id,
        offset,
    ) {
        offset = view.next_offset;
        ends.push(offset);
    }
    ends
}

fn disk_full_poisons(policy: FsyncPolicy) {
    let mem = MemVfs::new();
    let vfs = FaultVfs::new(Arc::new(mem.clone()));
    let options = || small_opts().fsync(policy).preallocate(false);
    let payloads: Vec<Vec<u8>> = (0..10)
        .map(|i| format!("message {i}").into_bytes())
        .collect();
    let store = open(&vfs, &dir(), options());
    let queue = store.declare_queue(QUEUE).expect("declare");
    for p in &payloads {
        queue.publish(p).expect("publish");
    }
    let delivered = queue.try_receive().expect("receive").expect("message");
    let before = mem.read_file(&seg_path(&dir(), 0)).expect("segment");
    let boundary = before.len() as u64;
    vfs.fill_disk_at_next_write();
    let err = queue
        .publish(b"this one hits a full disk")
        .expect_err("write fails");
    assert!(
        matches!(&err, Error::Io { source, .. } if source.raw_os_error() == Some(28)),
        "{err:?}"
    );
    let torn = mem.read_file(&seg_path(&dir(), 0)).expect("segment");
    assert!(torn.len() as u64 > boundary, "half a record was written");
    assert!(is_poisoned(queue.publish(b"next")));
    assert!(is_poisoned(queue.ack(delivered.id)));
    assert!(is_poisoned(queue.nack(delivered.id, true)));
    assert!(is_poisoned(store.sync()));
    drop(queue);
    drop(delivered);
    drop(store);

    // Reopen on the files as they are: the half record is cut, the log ends on a record
    // boundary, and every earlier message is intact.
    {
        let store = Store::open_with_vfs(Arc::new(mem.clone()), &dir(), options()).expect("reopen");
        let t = store
            .recovery_report()
            .truncated
            .clone()
            .expect("the half-written record is reported");
        assert_eq!((t.segment, t.offset), (SegmentId(0), boundary));
        let bytes = mem.read_file(&seg_path(&dir(), 0)).expect("segment");
        assert_eq!(
            bytes.len() as u64,
            boundary,
            "the file ends at the last whole record"
        );
        assert_eq!(frame_ends(&bytes).last().copied(), Some(boundary));
        assert_eq!(drain(&store), payloads);
        store
            .queue(QUEUE)
            .expect("queue")
            .publish(b"after")
            .expect("publish after recovery");
    }
    let store = Store::open_with_vfs(Arc::new(mem), &dir(), options()).expect("reopen again");
    assert_eq!(store.recovery_report().truncated, None);
    let mut expected = payloads;
    expected.push(b"after".to_vec());
    assert_eq!(drain(&store), expected);
}

#[test]
fn disk_full_during_write_poisons_under_always() {
    disk_full_poisons(FsyncPolicy::Always);
}

#[test]
fn disk_full_during_write_poisons_under_never() {
    disk_full_poisons(FsyncPolicy::Never);
}
