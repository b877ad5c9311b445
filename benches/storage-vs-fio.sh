#!/usr/bin/env bash
# Storage benchmarks beside fio, in one run, on the same disk. Compare as ratios: the machine is
# shared and noisy. Needs fio (apt-get install fio).
# Usage: benches/storage-vs-fio.sh [criterion filter]
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${POTOK_BENCH_DIR:-$PWD/target}"
mkdir -p "$dir"
command -v fio >/dev/null || { echo "fio is missing: apt-get install fio" >&2; exit 1; }

echo "== fio: buffered sequential write, 1 MiB blocks, 4 GiB, fsync at end"
fio --name=seqwrite --rw=write --bs=1m --size=4g --end_fsync=1 --filename="$dir/fio.dat" \
    | grep -E "WRITE: bw="
rm -f "$dir/fio.dat"

echo "== criterion (thrpt lines are MiB/s or GiB/s)"
POTOK_BENCH_DIR="$dir" cargo bench --bench storage -- "${1:-}" 2>&1 \
    | grep -E "^(append|group_commit|read|timestamp_lookup)|time:|thrpt:"
