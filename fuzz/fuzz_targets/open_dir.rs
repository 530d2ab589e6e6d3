//! Arbitrary bytes as one or two segment files in a store directory: `Store::open` must
//! return `Ok` or a typed error, never panic; a store that opens must serve, settle, close
//! and reopen consistently.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod targets {
    include!("../src/targets.rs");
}

fuzz_target!(|data: &[u8]| {
    let _ = targets::open_dir_target(data);
});
