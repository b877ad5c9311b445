#!/usr/bin/env bash
# Long crash-torture run: the crash, model and broker crash tests over many seeds, in release
# mode.
# Usage: tests/soak.sh [SEEDS]   (default 2000; CI runs the same tests with 150)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${1:-2000}"
export POTOK_CRASH_SEEDS="$seeds"
export PROPTEST_CASES="${PROPTEST_CASES:-$((seeds * 2))}"
time cargo test --release --test crash --test model --test broker_crash
