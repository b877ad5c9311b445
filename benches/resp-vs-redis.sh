#!/usr/bin/env bash
# XADD throughput over RESP: Potok (--fsync always) beside Redis 7.0 with AOF fsync always and
# everysec, same machine, same run, same load. Then stream read throughput (XRANGE, XREAD) on a
# large stream for both. Needs redis-server and redis-benchmark (apt-get install redis-server).
#
# Usage: benches/resp-vs-redis.sh [REQUESTS] [SCAN_MB]
# redis-benchmark 7.0 does not substitute __data__ in custom commands, so the 100-byte value is
# passed literally (the same payload -d 100 would produce).
set -euo pipefail
cd "$(dirname "$0")/.."
requests="${1:-300000}"
scan_mb="${2:-1024}"
work="$(mktemp -d "${TMPDIR:-/tmp}/potok-bench.XXXXXX")"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
value="$(head -c 100 /dev/zero | tr '\0' 'x')"
cargo build --release --quiet --bin potok --example stream_scan

wait_port() { for _ in $(seq 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }

bench() { # port label
  local out
  out="$(redis-benchmark -p "$1" -P 16 -c 50 -n "$requests" -q XADD bench '*' f "$value" 2>/dev/null | tr '\r' '\n' | grep 'requests per second' | tail -1)"
  printf '| %-34s | %s |\n' "$2" "$out"
}

echo "| server | XADD, -P 16 -c 50, 100-byte value, $requests requests |"
echo "|---|---|"
mkdir -p "$work/potok"
./target/release/potok serve --data-dir "$work/potok" --resp-addr 127.0.0.1:7601 --fsync always >/dev/null 2>&1 & pids+=($!)
wait_port 7601; bench 7601 "Potok, fsync always"
for mode in always everysec; do
  mkdir -p "$work/redis-$mode"
  redis-server --port 7602 --dir "$work/redis-$mode" --save "" --appendonly yes --appendfsync "$mode" >/dev/null 2>&1 & pids+=($!)
  wait_port 7602; bench 7602 "Redis 7.0, appendfsync $mode"
  redis-cli -p 7602 shutdown nosave >/dev/null 2>&1 || true; sleep 0.5
done

echo
echo "Stream reads of a ${scan_mb} MB stream (1 KB entries), COUNT 1000 per call:"
echo "-- Potok"; ./target/release/examples/stream_scan 7601 "$scan_mb" 1024
mkdir -p "$work/redis-scan"
redis-server --port 7602 --dir "$work/redis-scan" --save "" --appendonly yes --appendfsync everysec >/dev/null 2>&1 & pids+=($!)
wait_port 7602
echo "-- Redis 7.0 (appendfsync everysec)"; ./target/release/examples/stream_scan 7602 "$scan_mb" 1024
