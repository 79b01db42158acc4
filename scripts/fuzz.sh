#!/usr/bin/env bash
# Run every fuzz target for SECONDS (default 30) each with cargo-fuzz (libFuzzer), from the
# committed corpus. cargo-fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them. Crashes land in fuzz/artifacts/<target>/.
#   bash scripts/fuzz.sh 600        # the 10-minute-per-target run
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-30}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for t in $(cargo fuzz list); do
  echo "== fuzz $t for ${secs}s"
  cargo fuzz run -O "$t" -- -max_total_time="$secs" -print_final_stats=0 2>&1 | grep -E "^Done|ERROR|SUMMARY" || true
  if ls "artifacts/$t"/crash-* >/dev/null 2>&1; then
    echo "fuzz target $t crashed: see fuzz/artifacts/$t"; exit 1
  fi
done
