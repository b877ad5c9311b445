#!/usr/bin/env bash
# AMQP throughput: Potok beside RabbitMQ (Debian's rabbitmq-server, 3.10.8 here), same machine,
# same run, same load generator (examples/amqp_load.rs, raw frames): producers publish
# persistent messages with publisher confirms to a durable classic queue while consumers
# acknowledge them. Prints confirmed publishes/s, deliveries/s and confirm latency.
#
# Usage: benches/amqp-vs-rabbitmq.sh [SECONDS] [ROUNDS]
# A stream queue runs too (every consumer reads every message), and then Potok's stream again
# with producers capped at 3x the rate RabbitMQ confirmed in that round, to see whether its
# consumers keep up there.
# Needs: apt-get install rabbitmq-server. Each round starts both servers afresh on empty
# directories, one after the other; the machine is shared and noisy, so compare within a round.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
rounds="${2:-3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/potok-amqp-bench.XXXXXX")"
potok_pid=""
cleanup() {
  [ -n "$potok_pid" ] && kill "$potok_pid" 2>/dev/null || true
  rabbitmqctl -n "potokbench@localhost" stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
cargo build --release --quiet --bin potok --example amqp_load

wait_port() { for _ in $(seq 200); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

start_potok() {
  rm -rf "$work/potok"; mkdir -p "$work/potok"
  ./target/release/potok serve --data-dir "$work/potok" --resp-addr 127.0.0.1:0 \
    --amqp-addr 127.0.0.1:7672 >/dev/null 2>&1 &
  potok_pid=$!
  wait_port 7672
}
stop_potok() { kill "$potok_pid"; wait "$potok_pid" 2>/dev/null || true; potok_pid=""; }

start_rabbit() {
  rm -rf "$work/rabbit"; mkdir -p "$work/rabbit"
  # Debian's rabbitmq-server runs as the rabbitmq user.
  chmod 755 "$work"
  if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq:rabbitmq "$work/rabbit"; fi
  RABBITMQ_NODE_PORT=7673 RABBITMQ_DIST_PORT=27673 RABBITMQ_NODENAME=potokbench@localhost \
    RABBITMQ_MNESIA_BASE="$work/rabbit/mnesia" RABBITMQ_LOG_BASE="$work/rabbit/log" \
    rabbitmq-server >/dev/null 2>&1 &
  wait_port 7673
  sleep 2 # the port opens a moment before the broker accepts connections
}
stop_rabbit() { rabbitmqctl -n potokbench@localhost stop >/dev/null 2>&1 || true; sleep 2; }

load() { # port size [--stream]
  ./target/release/examples/amqp_load "127.0.0.1:$1" --seconds "$seconds" --size "$2" \
    --producers 4 --consumers 4 "${@:3}"
}

echo "4 producers + 4 consumers, persistent messages with confirms, durable queue, ${seconds}s per run"
for round in $(seq "$rounds"); do
  for size in 100 1024; do
    start_potok; echo "round $round Potok:    $(load 7672 "$size")"; stop_potok
    start_rabbit; echo "round $round RabbitMQ: $(load 7673 "$size")"; stop_rabbit
  done
  start_potok; echo "round $round Potok stream:    $(load 7672 100 --stream)"; stop_potok
  start_rabbit; rabbit="$(load 7673 100 --stream)"; stop_rabbit
  echo "round $round RabbitMQ stream: $rabbit"
  # Do stream consumers keep up when Potok takes 3x RabbitMQ's confirmed rate?
  rate="$(echo "$rabbit" | sed -E 's/.*confirmed ([0-9]+) msg.*/\1/')"
  start_potok
  echo "round $round Potok stream at 3x RabbitMQ's rate ($((rate * 3))/s): $(load 7672 100 --stream --rate $((rate * 3)))"
  stop_potok
done
