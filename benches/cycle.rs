//! The full life of a message: publish -> receive -> ack of a 256-byte message, under
//! `FsyncPolicy::Never` (the engine's own cost) and `FsyncPolicy::Always` (two durable
//! writes per cycle: the publish and the ack).
//!
//! ```text
//! cargo bench --bench cycle [-- --quick]
//! ```
//! Stores live under `WALQ_BENCH_DIR` if set (see `benches/common/mod.rs`).

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use walq::FsyncPolicy;

const PAYLOAD: [u8; 256] = [0xa5; 256];

fn cycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("cycle_256B");
    group.throughput(Throughput::Elements(1));
    for (name, policy) in [
        ("never", FsyncPolicy::Never),
        ("always", FsyncPolicy::Always),
    ] {
        if policy == FsyncPolicy::Always {
            common::disk_bound(&mut group);
        } else {
            common::cpu_bound(&mut group);
        }
        let (store, queue, _dir) = common::store(policy);
        group.bench_function(format!("publish_receive_ack/{name}"), |b| {
            b.iter(|| {
                let id = queue.publish(&PAYLOAD).expect("publish");
                let delivery = queue.try_receive().expect("receive").expect("ready");
                assert_eq!(delivery.id, id);
                queue.ack(delivery.id).expect("ack");
            });
        });
        store.close().expect("close");
    }
    group.finish();
}

criterion_group!(benches, cycle);
criterion_main!(benches);
