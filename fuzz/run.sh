#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each; FUZZ_SECONDS to change) with
# cargo-fuzz on the nightly toolchain, seeded from the fixtures. Crash inputs land in
# fuzz/artifacts/<target>/; copy each into fuzz/regressions/<target>/ (replayed by
# tests/hostile.rs) once fixed. Needs: rustup toolchain nightly, cargo install cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${FUZZ_SECONDS:-60}
ROOT=..
seed() { # target, files...
  local dir=corpus/$1; shift
  mkdir -p "$dir"
  for f in "$@"; do [ -f "$f" ] && cp "$f" "$dir/$(echo "$f" | tr '/' '_')"; done
}
seed config_text $(find $ROOT/fixtures -name '*.pbtxt' | head -400)
seed onnx_load $(find $ROOT/fixtures/generated $ROOT/fixtures/tutorial_repository -name '*.onnx')
mkdir -p corpus/repository_tree corpus/infer_inputs
for t in config_text onnx_load repository_tree infer_inputs; do
  echo "== $t (${SECONDS_EACH}s)"
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096 -timeout=20 2>&1 \
    | tee "/tmp/fuzz-$t.log" | grep -E "^#[0-9]+ +DONE|Done [0-9]+ runs|SUMMARY|panicked" || true
  if ls "artifacts/$t"/crash-* >/dev/null 2>&1; then
    echo "!! $t: crash inputs in fuzz/artifacts/$t"
  fi
done
