//! A repository tree built from fuzz input → load in every model-control mode, poll, index.
//! The body is `harness::repository_tree`, which `tests/hostile.rs` also replays the regressions with.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../harness/mod.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::repository_tree(data));
