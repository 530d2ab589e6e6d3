//! Arbitrary bytes as a segment file: the header, every frame and every record body must
//! decode to a value or an error without panicking, and re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod targets {
    include!("../src/targets.rs");
}

fuzz_target!(|data: &[u8]| {
    let _ = targets::decode_frame_target(data);
});
