#!/usr/bin/env bash
# XADD throughput over RESP: Potok (--fsync always) beside Redis 7.0 with AOF fsync always and
# everysec, same machine, same run, same load. Then stream read throughput (XRANGE, XREAD) on a
# large stream for both. Needs redis-server and redis-benchmark (apt-get install redis-server).
#
# Usage: benches/resp-vs-redis.sh [REQUESTS] [SCAN_MB] [ROUNDS]
#
# The machine is shared and noisy, so the XADD part runs ROUNDS rounds (default 5); each round
# starts every server afresh on an empty directory, one after the other, and the table gives
# each server's median and every run. Compare the medians as ratios.
# redis-benchmark 7.0 does not substitute __data__ in custom commands, so the 100-byte value is
# passed literally (the same payload -d 100 would produce).
set -euo pipefail
cd "$(dirname "$0")/.."
requests="${1:-500000}"
scan_mb="${2:-1024}"
rounds="${3:-5}"
work="$(mktemp -d "${TMPDIR:-/tmp}/potok-bench.XXXXXX")"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
value="$(head -c 100 /dev/zero | tr '\0' 'x')"
cargo build --release --quiet --bin potok --example stream_scan

wait_port() { for _ in $(seq 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }

# One run: start the server on a fresh directory, load it, stop it; prints "rate p50".
run_once() { # label
  local dir="$work/run" pid out
  rm -rf "$dir"; mkdir -p "$dir"
  case "$1" in
    potok) ./target/release/potok serve --data-dir "$dir" --resp-addr 127.0.0.1:7601 --amqp-addr 127.0.0.1:7603 --fsync always >/dev/null 2>&1 & ;;
    redis-always) redis-server --port 7601 --dir "$dir" --save "" --appendonly yes --appendfsync always >/dev/null 2>&1 & ;;
    redis-everysec) redis-server --port 7601 --dir "$dir" --save "" --appendonly yes --appendfsync everysec >/dev/null 2>&1 & ;;
  esac
  pid=$!
  wait_port 7601
  out="$(redis-benchmark -p 7601 -P 16 -c 50 -n "$requests" -q XADD bench '*' f "$value" 2>/dev/null | tr '\r' '\n' | grep 'requests per second' | tail -1)"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$out" | sed -E 's/.*: ([0-9.]+) requests per second, p50=([0-9.]+) msec.*/\1 \2/'
}

labels=(potok redis-always redis-everysec)
declare -A rates p50s
for round in $(seq "$rounds"); do
  for label in "${labels[@]}"; do
    read -r rate p50 < <(run_once "$label")
    rates[$label]+=" ${rate%.*}"; p50s[$label]+=" $p50"
    echo "round $round: $label ${rate%.*} XADD/s, p50 $p50 ms" >&2
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base="$(echo "${rates[redis-always]}" | median)"
echo "| server | median XADD/s | median p50 (ms) | vs Redis always | every run |"
echo "|---|---:|---:|---:|---|"
for label in "${labels[@]}"; do
  m="$(echo "${rates[$label]}" | median)"
  printf '| %s | %s | %s | %.2fx | %s |\n' "$label" "$m" "$(echo "${p50s[$label]}" | median)" \
    "$(echo "$m / $base" | bc -l)" "$(echo "${rates[$label]}" | sed 's/^ //')"
done

echo
echo "Stream reads of a ${scan_mb} MB stream (1 KB entries), COUNT 1000 per call:"
mkdir -p "$work/potok-scan" "$work/redis-scan"
./target/release/potok serve --data-dir "$work/potok-scan" --resp-addr 127.0.0.1:7601 --amqp-addr 127.0.0.1:7603 --fsync always >/dev/null 2>&1 & pids+=($!)
wait_port 7601
echo "-- Potok"; ./target/release/examples/stream_scan 7601 "$scan_mb" 1024
redis-server --port 7602 --dir "$work/redis-scan" --save "" --appendonly yes --appendfsync everysec >/dev/null 2>&1 & pids+=($!)
wait_port 7602
echo "-- Redis 7.0 (appendfsync everysec)"; ./target/release/examples/stream_scan 7602 "$scan_mb" 1024
