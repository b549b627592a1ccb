//! Arbitrary bytes as `model.onnx` → auto-complete and load; if it loads, one request of
//! zeros shaped by its completed config.
//! The body is `harness::onnx_load`, which `tests/hostile.rs` also replays the regressions with.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../harness/mod.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::onnx_load(data));
