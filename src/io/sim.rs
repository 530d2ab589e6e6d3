//! [`SimVfs`]: a simulated disk that models the page cache, power loss and I/O faults.
//!
//! Every file has two images: the *volatile* one that reads see (the page cache) and the
//! *durable* one that survives a power loss. Writes and truncations change the volatile
//! image and are remembered as pending until `sync_data` moves them to the durable image.
//! Directory entries work the same way: creating, renaming or removing a file changes the
//! volatile directory; `sync_dir` makes the directory's entries durable.
//!
//! [`SimVfs::crash`] turns the current state into what a restarted machine would find:
//! - [`CrashMode::ProcessCrash`]: the page cache survives, so everything volatile is kept
//!   (what a `SIGKILL` does);
//! - [`CrashMode::PowerLoss`]: each pending write is independently kept, lost, torn at a
//!   512-byte sector boundary, or has its sectors replaced by zeros or garbage; unsynced
//!   directory operations survive only as a prefix (metadata journals commit in order).
//!
//! Faults are injected by a [`FaultPlan`]: fail the n-th `sync_data` or `write_at` with
//! `EIO`, make a write short and fail it with `ENOSPC`. After a failed `sync_data` the
//! pending writes of that file are dropped from the durable future (Linux marks the pages
//! clean: a later sync succeeds without writing them) while reads still see them.
//!
//! Everything is deterministic for a given seed and sequence of calls.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{read_image_at, to_usize, FileView, LockGuard, Vfs, VfsFile};

/// Sector size used for torn writes.
pub const SECTOR: usize = 512;

/// What a simulated crash preserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// The process dies, the kernel survives: every write made so far is kept.
    ProcessCrash,
    /// The machine loses power: only synced data and directory entries are guaranteed;
    /// unsynced writes may be kept, lost, torn or garbled.
    PowerLoss,
}

/// Faults to inject, counted from when the plan is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Fail the n-th `sync_data` call (1-based) with `EIO`.
    pub fail_sync_data: Option<u64>,
    /// Fail the n-th `sync_dir` call (1-based) with `EIO`.
    pub fail_sync_dir: Option<u64>,
    /// Fail the n-th `write_at` call (1-based) with `EIO`, writing nothing.
    pub fail_write: Option<u64>,
    /// Make the n-th `write_at` call (1-based) write only its first half, and the next
    /// call on that file fail with `ENOSPC` (a full disk).
    pub short_write: Option<u64>,
    /// Fail the n-th `create` call (1-based) with `ENOSPC`.
    pub fail_create: Option<u64>,
    /// Cut the power right after the n-th mutating call (1-based): that call completes,
    /// every later call fails with `EIO`, and [`SimVfs::crash`] then shows what survived.
    /// This is how tests crash "after every file operation".
    pub halt_after_mutations: Option<u64>,
}

/// Counters of the calls made so far, for tests that check what the engine did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimCounters {
    /// `write_at` calls.
    pub writes: u64,
    /// `sync_data` calls.
    pub sync_data: u64,
    /// `sync_dir` calls.
    pub sync_dir: u64,
    /// `create` calls.
    pub creates: u64,
    /// `rename` calls.
    pub renames: u64,
    /// `remove` calls.
    pub removes: u64,
    /// Every mutating call (write, set_len, preallocate, sync, create, rename, remove).
    pub mutations: u64,
}

type InodeId = u64;

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: usize, data: Vec<u8> },
    SetLen(usize),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    /// The next write fails with ENOSPC (after a short write).
    full: bool,
}

#[derive(Debug, Clone)]
enum DirOp {
    Link {
        dir: PathBuf,
        name: String,
        inode: InodeId,
    },
    Unlink {
        dir: PathBuf,
        name: String,
    },
}

#[derive(Debug, Default, Clone)]
struct SimState {
    /// False once the disk crashed: every call through an old handle fails.
    alive: bool,
    /// Set when `halt_after_mutations` is reached: every later call fails.
    halted: bool,
    dirs: BTreeSet<PathBuf>,
    volatile_dir: BTreeMap<PathBuf, InodeId>,
    durable_dir: BTreeMap<PathBuf, InodeId>,
    pending_dir: Vec<DirOp>,
    inodes: BTreeMap<InodeId, Inode>,
    next_inode: InodeId,
    locks: BTreeSet<PathBuf>,
    plan: FaultPlan,
    /// Counters since the plan was set, for matching the plan's n-th calls.
    plan_counts: SimCounters,
    counters: SimCounters,
    rng: u64,
}

/// A simulated disk; see the module docs. Cloning gives another handle to the same disk.
#[derive(Debug, Clone)]
pub struct SimVfs {
    state: Arc<Mutex<SimState>>,
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated I/O error: {what}"))
}

fn dead() -> io::Error {
    io::Error::other("simulated disk has crashed; reopen on the disk returned by crash()")
}

/// SplitMix64: small, fast and good enough to drive fault decisions.
fn next_rand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn apply(image: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, data } => {
            let end = offset + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            if let Some(dst) = image.get_mut(*offset..end) {
                dst.copy_from_slice(data);
            }
        }
        Pending::SetLen(len) => image.resize(*len, 0),
    }
}

impl SimVfs {
    /// A new, empty disk whose fault decisions derive from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> SimVfs {
        let state = SimState {
            alive: true,
            rng: seed,
            ..SimState::default()
        };
        SimVfs {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn live(&self) -> io::Result<MutexGuard<'_, SimState>> {
        let state = self.lock();
        if !state.alive {
            Err(dead())
        } else if state.halted {
            Err(eio("the power is off"))
        } else {
            Ok(state)
        }
    }

    /// Whether a planned halt (`halt_after_mutations`) has happened.
    #[must_use]
    pub fn halted(&self) -> bool {
        self.lock().halted
    }

    /// A deep copy of the disk as it is now, unsynced state included, with no locks held,
    /// so that one moment can be crashed in many ways.
    #[must_use]
    pub fn fork(&self) -> SimVfs {
        let mut copy = self.lock().clone();
        copy.locks.clear();
        copy.halted = false;
        copy.plan = FaultPlan::default();
        SimVfs {
            state: Arc::new(Mutex::new(copy)),
        }
    }

    /// Replaces the fault plan; its call counts start from zero.
    pub fn set_faults(&self, plan: FaultPlan) {
        let mut state = self.lock();
        state.plan = plan;
        state.plan_counts = SimCounters::default();
    }

    /// The calls made so far.
    #[must_use]
    pub fn counters(&self) -> SimCounters {
        self.lock().counters
    }

    /// Whether any write, truncation or directory operation is not yet durable.
    #[must_use]
    pub fn has_unsynced(&self) -> bool {
        let state = self.lock();
        !state.pending_dir.is_empty() || state.inodes.values().any(|i| !i.pending.is_empty())
    }

    /// Crashes the disk: every handle on this disk fails from now on, and the returned disk
    /// holds what survived under `mode`, decided by `seed`. The new disk has no faults
    /// planned and no locks held.
    #[must_use]
    pub fn crash(&self, mode: CrashMode, seed: u64) -> SimVfs {
        let mut old = self.lock();
        old.alive = false;
        match mode {
            CrashMode::ProcessCrash => {
                let entries = old.volatile_dir.clone();
                let images = old
                    .inodes
                    .iter()
                    .map(|(&id, inode)| (id, inode.volatile.clone()))
                    .collect();
                rebuilt(&old, entries, images, seed)
            }
            CrashMode::PowerLoss => {
                let mut rng = seed ^ old.rng;
                let outcome = random_outcome(&old, &mut rng);
                materialize(&old, &outcome, seed)
            }
        }
    }

    /// Every distinct state a power loss could leave right now, or `limit` of them sampled
    /// with `seed` if there are more. Returns the number of reachable states and the disks.
    ///
    /// A state is a choice of how many pending directory operations persist (a prefix) and,
    /// for every pending write, whether it is lost, kept, zeroed, torn after each whole
    /// sector, or has garbage in its last sector; pending size changes persist or not. This
    /// disk is left untouched.
    #[must_use]
    pub fn power_loss_states(&self, limit: usize, seed: u64) -> (u128, Vec<SimVfs>) {
        let state = self.lock();
        let radices = outcome_radices(&state);
        let total = radices
            .iter()
            .fold(1u128, |acc, &r| acc.saturating_mul(r as u128));
        let mut rng = seed;
        let mut disks = Vec::new();
        if total <= limit as u128 {
            let mut digits = vec![0usize; radices.len()];
            loop {
                disks.push(materialize(
                    &state,
                    &outcome_from_digits(&state, &digits),
                    seed,
                ));
                // Mixed-radix increment.
                let mut i = 0;
                loop {
                    let Some(d) = digits.get_mut(i) else {
                        return (total, disks);
                    };
                    *d += 1;
                    if *d < radices.get(i).copied().unwrap_or(1) {
                        break;
                    }
                    *d = 0;
                    i += 1;
                }
            }
        }
        for _ in 0..limit {
            let digits: Vec<usize> = radices
                .iter()
                .map(|&r| (next_rand(&mut rng) % r as u64) as usize)
                .collect();
            disks.push(materialize(
                &state,
                &outcome_from_digits(&state, &digits),
                seed,
            ));
        }
        (total, disks)
    }

    /// A copy of the volatile contents of `path`, if it exists.
    #[must_use]
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let id = state.volatile_dir.get(path)?;
        state.inodes.get(id).map(|i| i.volatile.clone())
    }

    /// Replaces the contents of `path` durably (for tests that corrupt files at rest).
    pub fn write_file(&self, path: &Path, bytes: Vec<u8>) {
        let mut state = self.lock();
        let id = match state.volatile_dir.get(path) {
            Some(id) => *id,
            None => {
                let id = state.next_inode;
                state.next_inode += 1;
                state.volatile_dir.insert(path.to_path_buf(), id);
                state.durable_dir.insert(path.to_path_buf(), id);
                id
            }
        };
        state.inodes.insert(
            id,
            Inode {
                volatile: bytes.clone(),
                durable: bytes,
                ..Inode::default()
            },
        );
    }

    /// Paths of all files (volatile view), sorted.
    #[must_use]
    pub fn files(&self) -> Vec<PathBuf> {
        self.lock().volatile_dir.keys().cloned().collect()
    }
}

/// What happens to one pending write at a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Lost,
    Kept,
    /// The size grew but the data never landed: zeros.
    Zeroed,
    /// Only the first n whole sectors landed.
    Torn(usize),
    /// Everything landed but the last sector holds garbage.
    GarbageTail,
    /// An arbitrary subset of sectors landed (bit i of the mask: sector i kept), the rest
    /// read as zeros; only drawn by the random crash.
    Sectors(u64),
}

/// The choices one power loss makes.
struct Outcome {
    dir_ops_kept: usize,
    /// Per inode with pending operations (in inode order), a fate per operation.
    fates: BTreeMap<InodeId, Vec<Fate>>,
}

fn sectors(len: usize) -> usize {
    len.div_ceil(SECTOR).max(1)
}

/// The fates enumeration tries for a pending operation.
fn fate_choices(op: &Pending) -> Vec<Fate> {
    match op {
        Pending::SetLen(_) => vec![Fate::Lost, Fate::Kept],
        Pending::Write { data, .. } => {
            let mut choices = vec![Fate::Lost, Fate::Kept, Fate::Zeroed];
            choices.extend((1..sectors(data.len())).map(Fate::Torn));
            if !data.is_empty() {
                choices.push(Fate::GarbageTail);
            }
            choices
        }
    }
}

/// The number of choices for each decision, directory prefix first.
fn outcome_radices(state: &SimState) -> Vec<usize> {
    let mut radices = vec![state.pending_dir.len() + 1];
    for inode in state.inodes.values() {
        radices.extend(inode.pending.iter().map(|op| fate_choices(op).len()));
    }
    radices
}

fn outcome_from_digits(state: &SimState, digits: &[usize]) -> Outcome {
    let mut digits = digits.iter().copied();
    let dir_ops_kept = digits.next().unwrap_or(0);
    let mut fates = BTreeMap::new();
    for (&id, inode) in &state.inodes {
        let f: Vec<Fate> = inode
            .pending
            .iter()
            .map(|op| {
                let choices = fate_choices(op);
                let d = digits.next().unwrap_or(0);
                choices.get(d).copied().unwrap_or(Fate::Lost)
            })
            .collect();
        fates.insert(id, f);
    }
    Outcome {
        dir_ops_kept,
        fates,
    }
}

fn random_outcome(state: &SimState, rng: &mut u64) -> Outcome {
    let dir_ops_kept = (next_rand(rng) % (state.pending_dir.len() as u64 + 1)) as usize;
    let mut fates = BTreeMap::new();
    for (&id, inode) in &state.inodes {
        let f: Vec<Fate> = inode
            .pending
            .iter()
            .map(|op| match op {
                Pending::SetLen(_) if next_rand(rng) % 2 == 0 => Fate::Kept,
                Pending::SetLen(_) => Fate::Lost,
                Pending::Write { data, .. } => match next_rand(rng) % 8 {
                    0..=1 => Fate::Lost,
                    2..=4 => Fate::Kept,
                    5 => Fate::Torn((next_rand(rng) % (sectors(data.len()) as u64 + 1)) as usize),
                    6 => Fate::Sectors(next_rand(rng)),
                    _ => Fate::GarbageTail,
                },
            })
            .collect();
        fates.insert(id, f);
    }
    Outcome {
        dir_ops_kept,
        fates,
    }
}

/// The durable image of `inode` after its pending operations meet their fates.
fn survivor_image(inode: &Inode, fates: &[Fate], seed: u64) -> Vec<u8> {
    let mut image = inode.durable.clone();
    let mut rng = seed;
    for (op, fate) in inode.pending.iter().zip(fates.iter().copied()) {
        let Pending::Write { offset, data } = op else {
            if fate == Fate::Kept {
                apply(&mut image, op);
            }
            continue;
        };
        let data: Vec<u8> = match fate {
            Fate::Lost => continue,
            Fate::Kept => data.clone(),
            Fate::Zeroed => vec![0; data.len()],
            Fate::Torn(n) => data
                .get(..(n * SECTOR).min(data.len()))
                .unwrap_or_default()
                .to_vec(),
            Fate::GarbageTail => {
                let mut out = data.clone();
                let last = (sectors(out.len()) - 1) * SECTOR;
                for b in out.get_mut(last..).unwrap_or_default() {
                    *b = next_rand(&mut rng) as u8 | 1;
                }
                out
            }
            Fate::Sectors(mask) => {
                let mut out = data.clone();
                for (i, chunk) in out.chunks_mut(SECTOR).enumerate() {
                    if mask >> (i % 64) & 1 == 0 {
                        chunk.fill(0);
                    }
                }
                out
            }
        };
        apply(
            &mut image,
            &Pending::Write {
                offset: *offset,
                data,
            },
        );
    }
    image
}

/// Builds the disk a power loss with `outcome` leaves behind.
fn materialize(old: &SimState, outcome: &Outcome, seed: u64) -> SimVfs {
    let mut entries = old.durable_dir.clone();
    for op in old.pending_dir.iter().take(outcome.dir_ops_kept) {
        match op {
            DirOp::Link { dir, name, inode } => {
                entries.insert(dir.join(name), *inode);
            }
            DirOp::Unlink { dir, name } => {
                entries.remove(&dir.join(name));
            }
        }
    }
    let images = old
        .inodes
        .iter()
        .map(|(&id, inode)| {
            let fates = outcome
                .fates
                .get(&id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            (id, survivor_image(inode, fates, seed ^ id))
        })
        .collect();
    rebuilt(old, entries, images, seed)
}

/// A fresh disk with the given directory entries and file images, everything durable.
fn rebuilt(
    old: &SimState,
    entries: BTreeMap<PathBuf, InodeId>,
    mut images: BTreeMap<InodeId, Vec<u8>>,
    seed: u64,
) -> SimVfs {
    let live: BTreeSet<InodeId> = entries.values().copied().collect();
    let inodes = live
        .into_iter()
        .map(|id| {
            let bytes = images.remove(&id).unwrap_or_default();
            (
                id,
                Inode {
                    volatile: bytes.clone(),
                    durable: bytes,
                    ..Inode::default()
                },
            )
        })
        .collect();
    let state = SimState {
        alive: true,
        rng: seed ^ 0x5EED,
        dirs: old.dirs.clone(),
        next_inode: old.next_inode,
        volatile_dir: entries.clone(),
        durable_dir: entries,
        inodes,
        ..SimState::default()
    };
    SimVfs {
        state: Arc::new(Mutex::new(state)),
    }
}

impl SimState {
    fn count(&mut self, f: impl Fn(&mut SimCounters)) {
        f(&mut self.counters);
        f(&mut self.plan_counts);
        self.counters.mutations += 1;
        self.plan_counts.mutations += 1;
        if self.plan.halt_after_mutations == Some(self.plan_counts.mutations) {
            self.halted = true;
        }
    }

    fn inode_of(&self, path: &Path) -> io::Result<InodeId> {
        self.volatile_dir.get(path).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found", path.display()),
            )
        })
    }

    fn split(path: &Path) -> io::Result<(PathBuf, String)> {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
        Ok((dir, name))
    }

    fn check_dir(&self, dir: &Path) -> io::Result<()> {
        if self.dirs.contains(dir) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found", dir.display()),
            ))
        }
    }
}

#[derive(Debug)]
struct SimFile {
    vfs: SimVfs,
    inode: InodeId,
    writable: bool,
}

#[derive(Debug)]
struct SimLock {
    vfs: SimVfs,
    path: PathBuf,
}

impl LockGuard for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.vfs.lock().locks.remove(&self.path);
    }
}

impl Vfs for SimVfs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        for ancestor in dir.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                state.dirs.insert(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        let mut state = self.live()?;
        let (dir, name) = SimState::split(path)?;
        state.check_dir(&dir)?;
        state.count(|c| c.creates += 1);
        if state.plan.fail_create == Some(state.plan_counts.creates) {
            return Err(io::Error::from_raw_os_error(28));
        }
        if state.volatile_dir.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
        }
        let inode = state.next_inode;
        state.next_inode += 1;
        state.inodes.insert(inode, Inode::default());
        state.volatile_dir.insert(path.to_path_buf(), inode);
        state.pending_dir.push(DirOp::Link { dir, name, inode });
        Ok(Arc::new(SimFile {
            vfs: self.clone(),
            inode,
            writable: true,
        }))
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<Arc<dyn VfsFile>> {
        let state = self.live()?;
        let inode = state.inode_of(path)?;
        Ok(Arc::new(SimFile {
            vfs: self.clone(),
            inode,
            writable,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        state.count(|c| c.renames += 1);
        let inode = state.inode_of(from)?;
        let (from_dir, from_name) = SimState::split(from)?;
        let (to_dir, to_name) = SimState::split(to)?;
        state.check_dir(&to_dir)?;
        state.volatile_dir.remove(from);
        state.volatile_dir.insert(to.to_path_buf(), inode);
        // A rename is atomic in the journal: model it as link-then-unlink in one step by
        // pushing both; a crash prefix may keep the new link without the unlink, which
        // leaves both names (possible on some file systems, harmless for walq).
        state.pending_dir.push(DirOp::Link {
            dir: to_dir,
            name: to_name,
            inode,
        });
        state.pending_dir.push(DirOp::Unlink {
            dir: from_dir,
            name: from_name,
        });
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        state.count(|c| c.removes += 1);
        state.inode_of(path)?;
        let (dir, name) = SimState::split(path)?;
        state.volatile_dir.remove(path);
        state.pending_dir.push(DirOp::Unlink { dir, name });
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.live()?;
        state.check_dir(dir)?;
        Ok(state
            .volatile_dir
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        state.check_dir(dir)?;
        state.count(|c| c.sync_dir += 1);
        if state.plan.fail_sync_dir == Some(state.plan_counts.sync_dir) {
            return Err(eio("fsync(dir)"));
        }
        let pending = std::mem::take(&mut state.pending_dir);
        let mut rest = Vec::new();
        for op in pending {
            let (op_dir, path, inode) = match &op {
                DirOp::Link { dir, name, inode } => (dir, dir.join(name), Some(*inode)),
                DirOp::Unlink { dir, name } => (dir, dir.join(name), None),
            };
            if op_dir == dir {
                match inode {
                    Some(inode) => state.durable_dir.insert(path, inode),
                    None => state.durable_dir.remove(&path),
                };
            } else {
                rest.push(op);
            }
        }
        state.pending_dir = rest;
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        let mut state = self.live()?;
        if !state.locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        if !state.volatile_dir.contains_key(path) {
            let (dir, name) = SimState::split(path)?;
            state.check_dir(&dir)?;
            let inode = state.next_inode;
            state.next_inode += 1;
            state.inodes.insert(inode, Inode::default());
            state.volatile_dir.insert(path.to_path_buf(), inode);
            state.pending_dir.push(DirOp::Link { dir, name, inode });
        }
        Ok(Some(Box::new(SimLock {
            vfs: self.clone(),
            path: path.to_path_buf(),
        })))
    }
}

impl SimFile {
    fn with_inode<T>(
        &self,
        f: impl FnOnce(&mut SimState, InodeId) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut state = self.vfs.live()?;
        if !state.inodes.contains_key(&self.inode) {
            return Err(dead());
        }
        f(&mut state, self.inode)
    }

    fn check_writable(&self) -> io::Result<()> {
        super::check_writable(self.writable)
    }
}

fn inode_mut(state: &mut SimState, id: InodeId) -> io::Result<&mut Inode> {
    state.inodes.get_mut(&id).ok_or_else(dead)
}

impl VfsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.with_inode(|state, id| read_image_at(&inode_mut(state, id)?.volatile, buf, offset))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.check_writable()?;
        self.with_inode(|state, id| {
            state.count(|c| c.writes += 1);
            let n = state.plan_counts.writes;
            if state.plan.fail_write == Some(n) {
                return Err(eio("write"));
            }
            let short = state.plan.short_write == Some(n);
            let inode = inode_mut(state, id)?;
            if inode.full {
                return Err(io::Error::from_raw_os_error(28));
            }
            let len = if short {
                inode.full = true;
                buf.len() / 2
            } else {
                buf.len()
            };
            let op = Pending::Write {
                offset: to_usize(offset)?,
                data: buf.get(..len).unwrap_or_default().to_vec(),
            };
            apply(&mut inode.volatile, &op);
            inode.pending.push(op);
            Ok(len)
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with_inode(|state, id| {
            state.count(|c| c.sync_data += 1);
            let fail = state.plan.fail_sync_data == Some(state.plan_counts.sync_data);
            let inode = inode_mut(state, id)?;
            if fail {
                // Linux semantics: the dirty pages are marked clean and their contents never
                // reach the disk; the page cache still shows them.
                inode.pending.clear();
                return Err(eio("fdatasync"));
            }
            // Only what is pending reaches the disk: bytes whose earlier sync failed stay lost
            // even though reads still see them.
            for op in std::mem::take(&mut inode.pending) {
                apply(&mut inode.durable, &op);
            }
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with_inode(|state, id| Ok(inode_mut(state, id)?.volatile.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.with_inode(|state, id| {
            state.count(|_| {});
            let op = Pending::SetLen(to_usize(len)?);
            let inode = inode_mut(state, id)?;
            apply(&mut inode.volatile, &op);
            inode.pending.push(op);
            Ok(())
        })
    }

    fn preallocate(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.with_inode(|state, id| {
            state.count(|_| {});
            let len = to_usize(len)?;
            let inode = inode_mut(state, id)?;
            if inode.volatile.len() < len {
                let op = Pending::SetLen(len);
                apply(&mut inode.volatile, &op);
                inode.pending.push(op);
            }
            Ok(())
        })
    }

    fn view(&self, len: u64) -> io::Result<FileView> {
        self.with_inode(|state, id| {
            let data = &inode_mut(state, id)?.volatile;
            let len = to_usize(len)?.min(data.len());
            Ok(FileView::from_vec(
                data.get(..len).unwrap_or_default().to_vec(),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/d")
    }

    #[test]
    fn unsynced_file_vanishes_on_power_loss_but_not_process_crash() {
        let vfs = SimVfs::new(1);
        vfs.create_dir_all(&dir()).unwrap();
        let f = vfs.create(&dir().join("a")).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        let after_kill = vfs.crash(CrashMode::ProcessCrash, 7);
        assert_eq!(after_kill.read_file(&dir().join("a")).unwrap(), b"hello");
        let vfs = SimVfs::new(1);
        vfs.create_dir_all(&dir()).unwrap();
        let f = vfs.create(&dir().join("a")).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        // Without sync_dir the entry may or may not survive; with it, it must.
        let mut seen_missing = false;
        for seed in 0..32 {
            let after = vfs.fork().crash(CrashMode::PowerLoss, seed);
            seen_missing |= after.read_file(&dir().join("a")).is_none();
        }
        assert!(
            seen_missing,
            "an unsynced directory entry must be able to vanish"
        );
        vfs.sync_dir(&dir()).unwrap();
        for seed in 0..32 {
            let after = vfs.fork().crash(CrashMode::PowerLoss, seed);
            assert_eq!(after.read_file(&dir().join("a")).unwrap(), b"hello");
        }
    }

    #[test]
    fn failed_sync_is_not_made_good_by_a_later_one() {
        let vfs = SimVfs::new(3);
        vfs.create_dir_all(&dir()).unwrap();
        let f = vfs.create(&dir().join("a")).unwrap();
        vfs.sync_dir(&dir()).unwrap();
        f.write_at(b"lost", 0).unwrap();
        vfs.set_faults(FaultPlan {
            fail_sync_data: Some(1),
            ..FaultPlan::default()
        });
        assert!(f.sync_data().is_err());
        assert!(f.sync_data().is_ok(), "Linux reports success on the retry");
        let mut buf = [0u8; 4];
        assert_eq!(
            f.read_at(&mut buf, 0).unwrap(),
            4,
            "the page cache still shows the data"
        );
        for seed in 0..16 {
            let after = vfs.fork().crash(CrashMode::PowerLoss, seed);
            assert_eq!(
                after.read_file(&dir().join("a")).unwrap(),
                b"",
                "the data never got to disk"
            );
        }
    }

    #[test]
    fn short_write_then_enospc() {
        let vfs = SimVfs::new(3);
        vfs.create_dir_all(&dir()).unwrap();
        let f = vfs.create(&dir().join("a")).unwrap();
        vfs.set_faults(FaultPlan {
            short_write: Some(1),
            ..FaultPlan::default()
        });
        assert_eq!(f.write_at(&[1u8; 100], 0).unwrap(), 50);
        assert_eq!(
            f.write_at(&[1u8; 50], 50).unwrap_err().raw_os_error(),
            Some(28)
        );
    }

    #[test]
    fn old_handles_die_with_the_crash() {
        let vfs = SimVfs::new(3);
        vfs.create_dir_all(&dir()).unwrap();
        let f = vfs.create(&dir().join("a")).unwrap();
        let _after = vfs.crash(CrashMode::ProcessCrash, 0);
        assert!(f.write_at(b"x", 0).is_err());
        assert!(vfs.list(&dir()).is_err());
    }
}
