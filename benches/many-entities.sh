#!/usr/bin/env bash
# Write throughput over many streams and queues, Potok beside Redis and RabbitMQ, same machine,
# same run (the figures in BENCHMARKS.md, "Many streams and queues").
#
# RESP: redis-benchmark -P 16 -c 50 XADD with a 100-byte value, to one stream and to 5,000 and
# 100,000 random streams (-r), against Potok (--fsync always) and Redis 7.0 (appendonly yes,
# appendfsync always). AMQP: examples/amqp_load (4 producers with confirms, 4 consumers
# acknowledging, persistent 100-byte messages) on one durable queue and spread over 1,000
# durable queues, against Potok and RabbitMQ (classic durable queues).
#
# Usage: benches/many-entities.sh [REQUESTS] [AMQP_SECONDS] [ROUNDS]   (default 1000000 10 3)
# Every run starts its server afresh on an empty directory; the machine is shared and noisy, so
# each case runs ROUNDS times, servers alternating, and the tables give medians and every run.
# POTOK_BASELINE=/path/to/an/older/potok adds that binary as a third server (before/after).
# Needs redis-server, redis-benchmark and rabbitmq-server (apt-get install redis-server
# rabbitmq-server).
set -euo pipefail
cd "$(dirname "$0")/.."
requests="${1:-1000000}"
seconds="${2:-10}"
rounds="${3:-3}"
baseline="${POTOK_BASELINE:-}"
work="$(mktemp -d "${TMPDIR:-/tmp}/potok-many.XXXXXX")"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rabbitmqctl -n "potokmany@localhost" stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
cargo build --release --quiet --bin potok --example amqp_load
value="$(head -c 100 /dev/zero | tr '\0' 'x')"
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
wait_tcp() { for _ in $(seq 300); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

start() { # server port-resp port-amqp
  rm -rf "$work/data"; mkdir -p "$work/data"
  case "$1" in
    potok) ./target/release/potok serve --data-dir "$work/data" --resp-addr "127.0.0.1:$2" \
      --amqp-addr "127.0.0.1:$3" --fsync always >/dev/null 2>&1 & ;;
    baseline) "$baseline" serve --data-dir "$work/data" --resp-addr "127.0.0.1:$2" \
      --amqp-addr "127.0.0.1:$3" --fsync always >/dev/null 2>&1 & ;;
    redis) redis-server --port "$2" --dir "$work/data" --save "" --appendonly yes \
      --appendfsync always >/dev/null 2>&1 & ;;
    rabbitmq)
      chmod 755 "$work"
      if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq:rabbitmq "$work/data"; fi
      RABBITMQ_NODE_PORT="$3" RABBITMQ_DIST_PORT=27674 RABBITMQ_NODENAME=potokmany@localhost \
        RABBITMQ_MNESIA_BASE="$work/data/mnesia" RABBITMQ_LOG_BASE="$work/data/log" \
        rabbitmq-server >/dev/null 2>&1 & ;;
  esac
  pid=$!
  if [ "$1" = rabbitmq ]; then wait_tcp "$3"; sleep 3; else wait_tcp "$2"; fi
}
stop() { # server
  if [ "$1" = rabbitmq ]; then
    rabbitmqctl -n potokmany@localhost stop >/dev/null 2>&1 || true
  else
    kill "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  pid=""
  sleep 1
}

xadd() { # keys -> "rate"
  local out
  if [ "$1" = 1 ]; then
    out="$(redis-benchmark -p 7801 -P 16 -c 50 -n "$requests" -q XADD bench '*' f "$value" 2>/dev/null)"
  else
    out="$(redis-benchmark -p 7801 -P 16 -c 50 -n "$requests" -r "$1" -q XADD 's:__rand_int__' '*' f "$value" 2>/dev/null)"
  fi
  echo "$out" | tr '\r' '\n' | grep 'requests per second' | tail -1 | sed -E 's/.*: ([0-9]+).*/\1/'
}

amqp() { # queues -> "confirmed/s"
  ./target/release/examples/amqp_load 127.0.0.1:7802 --seconds "$seconds" --size 100 \
    --producers 4 --consumers 4 --queues "$1" | sed -E 's/.*confirmed ([0-9]+) msg.*/\1/'
}

resp_servers=(potok redis)
amqp_servers=(potok rabbitmq)
if [ -n "$baseline" ]; then resp_servers+=(baseline); amqp_servers+=(baseline); fi
declare -A runs

for round in $(seq "$rounds"); do
  for keys in 1 5000 100000; do
    for server in "${resp_servers[@]}"; do
      start "$server" 7801 7802
      rate="$(xadd "$keys" || true)"
      stop "$server"
      runs["$server@xadd-$keys"]+=" ${rate:-0}"
      echo "round $round: XADD to $keys streams, $server: ${rate:-failed}/s" >&2
    done
  done
  for queues in 1 1000; do
    for server in "${amqp_servers[@]}"; do
      start "$server" 7801 7802
      rate="$(amqp "$queues" || true)"
      stop "$server"
      runs["$server@amqp-$queues"]+=" ${rate:-0}"
      echo "round $round: AMQP confirmed publish to $queues queues, $server: ${rate:-failed}/s" >&2
    done
  done
done

report() { # case reference servers...
  local case="$1" reference="$2"; shift 2
  local base; base="$(echo "${runs[$reference@$case]}" | median)"
  for server in "$@"; do
    local m; m="$(echo "${runs[$server@$case]}" | median)"
    printf '| %s | %s | %s | %.2fx | %s |\n' "$case" "$server" "$m" \
      "$(echo "$m / ($base + 0.0001)" | bc -l)" "$(echo "${runs[$server@$case]}" | sed 's/^ //')"
  done
}
echo "| case | server | median/s | vs reference | every run |"
echo "|---|---|---:|---:|---|"
for keys in 1 5000 100000; do report "xadd-$keys" redis "${resp_servers[@]}"; done
for queues in 1 1000; do report "amqp-$queues" rabbitmq "${amqp_servers[@]}"; done
