//! Request inputs (names, types, shapes, byte sizes, BYTES contents) → `infer` on a fixture
//! add/sub model and an identity model.
//! The body is `harness::infer_inputs`, which `tests/hostile.rs` also replays the regressions with.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../harness/mod.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::infer_inputs(data));
