//! Shared by the compaction tests: a store in memory with small segments and no background
//! compaction, a model of the live messages, and the checks against it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use walq::format::{frame_len, PUBLISH_HEADER_LEN};
use walq::io::Vfs;
use walq::{CompactionOptions, FsyncPolicy, Store, StoreOptions};

/// The store directory inside the simulated file system.
pub const DIR: &str = "/compact";

/// 64 KiB segments, fsync always, compaction only on demand.
pub fn options() -> StoreOptions {
    StoreOptions::new()
        .fsync(FsyncPolicy::Always)
        .segment_size(64 << 10)
        .compaction(CompactionOptions::new().background(None))
}

pub fn open(vfs: &Arc<dyn Vfs>) -> Store {
    Store::open_with_vfs(Arc::clone(vfs), Path::new(DIR), options()).expect("open the store")
}

/// The payload of message `id`, `len` bytes, derived from the id.
pub fn payload(id: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (id as u8).wrapping_mul(17) ^ (i as u8) ^ (id >> 8) as u8)
        .collect()
}

/// Unsettled messages the test expects: id → (queue, payload).
pub type Live = BTreeMap<u64, (String, Vec<u8>)>;

/// Receives every message of every queue and checks it against `live`: the same ids, in
/// each queue in increasing id order (no message was delivered before), same payloads.
/// Acks nothing: the caller drops or reopens the store afterwards.
pub fn check_live(store: &Store, live: &Live, label: &str) {
    let mut found = Live::new();
    for name in store.queue_names() {
        let q = store.queue(&name).expect("listed queue exists");
        let mut last = None;
        while let Some(d) = q.try_receive().expect("receive") {
            if d.delivery_count == 1 {
                assert!(
                    last < Some(d.id.0),
                    "{label}: {name} delivered {} after {last:?}",
                    d.id
                );
                last = Some(d.id.0);
            }
            found.insert(d.id.0, (name.to_string(), d.payload));
        }
    }
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        live.keys().collect::<Vec<_>>(),
        "{label}: the live ids"
    );
    assert!(found == *live, "{label}: queues or payloads differ");
}

/// The framed size of the live messages, counted as publish records.
pub fn live_bytes(live: &Live) -> u64 {
    live.values()
        .map(|(_, p)| frame_len(PUBLISH_HEADER_LEN + p.len()) as u64)
        .sum()
}

/// The space bound `docs/design.md` states for a compacted store with live threshold 0.5
/// and 64 KiB segments: bytes of the segment files (preallocated space included) ≤ 2 ×
/// live bytes + 2 segments; so, a fortiori, bytes of records.
pub fn assert_space_bound(store: &Store, live: &Live, label: &str) {
    let stats = store.segment_stats();
    let data: u64 = stats.iter().map(|s| s.data_bytes).sum();
    let files: u64 = stats.iter().map(|s| s.file_bytes).sum();
    let bound = 2 * live_bytes(live) + 2 * (64 << 10);
    assert!(
        files <= bound && data <= files,
        "{label}: {files} bytes of files ({data} of records) in {} segments, bound {bound} \
         (live {})",
        stats.len(),
        live_bytes(live)
    );
}
