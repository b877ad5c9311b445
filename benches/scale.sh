#!/usr/bin/env bash
# Many entities under the common descriptor limit (ulimit -n 1024): STREAMS streams of one
# entry and QUEUES durable AMQP queues of one persistent message, created, then the server is
# stopped with SIGTERM and restarted, killed with -9 and restarted, and everything is read back
# each time. Prints, at each stage: time to first PING, SIGTERM time, disk used, RSS and
# descriptors held. Needs redis-cli; pip-installs redis and pika.
#
# Usage: benches/scale.sh [STREAMS] [QUEUES]   (default 1000000 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
streams="${1:-1000000}"
queues="${2:-100000}"
ulimit -n 1024
cargo build --release --quiet --bin potok
python3 -m pip install --quiet --disable-pip-version-check redis==8.1.0 pika
work="$(mktemp -d "${TMPDIR:-/tmp}/potok-scale.XXXXXX")"
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

start() {
  local t0; t0="$(now)"
  ./target/release/potok serve --data-dir "$work/data" --resp-addr 127.0.0.1:7701 \
    --amqp-addr 127.0.0.1:7702 >>"$work/server.log" 2>&1 &
  pid=$!
  until redis-cli -p 7701 ping >/dev/null 2>&1; do sleep 0.01; done
  printf '  first PING %.2f s after start\n' "$(since "$t0")"
}
stats() {
  printf '  %s: RSS %s, descriptors %s, disk %s\n' "$1" \
    "$(awk '/VmRSS/ {printf "%.0f MB", $2/1024}' "/proc/$pid/status")" \
    "$(ls "/proc/$pid/fd" | wc -l)" "$(du -sh "$work/data" | cut -f1)"
}
check() {
  local t0; t0="$(now)"
  python3 benches/scale_load.py streams-check 7701 "$streams"
  python3 benches/scale_load.py queues-check 7702 "$queues"
  printf '  read back every stream and queue in %.1f s\n' "$(since "$t0")"
}

echo "$streams streams, $queues durable queues, ulimit -n $(ulimit -n)"
start
t0="$(now)"; python3 benches/scale_load.py streams-load 7701 "$streams"
printf '  created %s streams in %.1f s\n' "$streams" "$(since "$t0")"
t0="$(now)"; python3 benches/scale_load.py queues-load 7702 "$queues"
printf '  created %s queues in %.1f s\n' "$queues" "$(since "$t0")"
stats "after loading"
echo "  files: $(find "$work/data" -type f | wc -l), directories: $(find "$work/data" -type d | wc -l)"
sleep 70 # idle: checkpoints run, idle entities are evicted
stats "idle 70 s later"
sleep 110 # the first checkpoint writes every new entity's files; eviction follows it
stats "idle 180 s later"
echo "  files: $(find "$work/data" -type f | wc -l), directories: $(find "$work/data" -type d | wc -l), apparent size $(du -sh --apparent-size "$work/data" | cut -f1)"
check
t0="$(now)"; kill -TERM "$pid"; wait "$pid" || true; pid=""
printf '  SIGTERM: exited in %.2f s\n' "$(since "$t0")"
echo "clean restart:"
start; stats "after restart"; check
echo "kill -9 and restart (1000 more streams created just before the kill):"
python3 benches/scale_load.py streams-load 7701 1000 k:
kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=""
start; stats "after restart"; check
python3 benches/scale_load.py streams-check 7701 1000 k:
t0="$(now)"; kill -TERM "$pid"; wait "$pid" || true; pid=""
printf '  SIGTERM: exited in %.2f s\n' "$(since "$t0")"
