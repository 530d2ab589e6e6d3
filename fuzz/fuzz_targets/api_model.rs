//! Arbitrary bytes as a script of API operations (publish, receive, ack, nack, consumers
//! with prefetch, reopen, close, process crash) over two queues: the store must agree with
//! an in-memory model of the documented semantics after every operation.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
mod api_model {
    include!("../src/api_model.rs");
}

fuzz_target!(|data: &[u8]| {
    let _ = api_model::api_model_target(data);
});
