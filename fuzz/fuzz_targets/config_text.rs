//! config.pbtxt text → parse, normalise, validate, print back.
//! The body is `harness::config_text`, which `tests/hostile.rs` also replays the regressions with.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../harness/mod.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::config_text(data));
