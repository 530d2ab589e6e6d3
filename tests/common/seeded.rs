//! Seeded randomness shared by the crash tests and the `crash_child` example (which
//! includes this file by path, so the child and `tests/sigkill_crash.rs` derive payloads the
//! same way).

/// SplitMix64, for seeded workloads.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The payload the crash child publishes as message `id`: its id (8 bytes, little-endian)
/// and 0 to 2047 filler bytes, all derived from the id.
pub fn child_payload(id: u64) -> Vec<u8> {
    let z = Rng(id).next();
    // Mostly short, one in eight up to 2 KiB (spanning pages and sectors).
    let len = (if z % 8 == 0 {
        (z >> 3) % 2048
    } else {
        (z >> 3) % 256
    }) as usize;
    let mut p = id.to_le_bytes().to_vec();
    p.extend((0..len as u64).map(|i| (i.wrapping_mul(131) ^ id.wrapping_mul(7)) as u8));
    p
}
