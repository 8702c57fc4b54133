#!/usr/bin/env bash
# Bytes on the wire per node per day, measured below TLS with a counting TCP proxy:
#   - an idle node: enrolled, no workloads, metrics collection off (interval 1d), so only
#     the control channel (heartbeats, status, desired-state long polls) talks
#   - a node at the default metrics settings (collection every 60 s, uploads batched by 60 s)
# Each node has a server of its own behind its own proxy, both measured over the same
# window after a warm-up; bytes/day = bytes in the window x 86400 / window.
# Usage: bench/wire.sh [window seconds]   (default 600)
set -euo pipefail
cd "$(dirname "$0")/.."
window=${1:-600}
warmup=45
# EDGEFLEET_BIN=path measures another build (skips the release build).
if [ -z "${EDGEFLEET_BIN:-}" ]; then
  cargo build --release -p edgefleet --bin edgefleet >&2
fi
bin=${EDGEFLEET_BIN:-target/release/edgefleet}

work=$(mktemp -d /tmp/ef-wire.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start NAME AGENT_FLAGS...: a server, its proxy and one agent enrolled through the proxy.
start() {
  local name=$1; shift
  local port proxy
  port=$(free_port); proxy=$(free_port)
  python3 bench/tools/count_proxy.py "$proxy" "127.0.0.1:$port" "$work/$name.counts" &
  pids+=("$!")
  HOME="$work/$name-home" "$bin" server --data-dir "$work/$name-server" --listen "127.0.0.1:$port" \
    --advertise-url "https://127.0.0.1:$proxy" >"$work/$name-server.log" 2>&1 &
  pids+=("$!")
  export EDGEFLEET_CONFIG="$work/$name-server/cli-config.yaml"
  for _ in $(seq 100); do [ -f "$EDGEFLEET_CONFIG" ] && HOME="$work/$name-home" "$bin" get nodes >/dev/null 2>&1 && break; sleep 0.1; done
  local join
  join=$(HOME="$work/$name-home" "$bin" token create --ttl 1h)
  "$bin" agent --data-dir "$work/$name-agent" --join "$join" --name "$name" "$@" >"$work/$name-agent.log" 2>&1 &
  pids+=("$!")
}
counts() { awk '{print $2, $3, $4}' "$work/$1.counts"; }

start idle --metrics-interval 1d
start metrics
sleep "$warmup"
read -r idle_up0 idle_down0 idle_conn0 < <(counts idle)
read -r met_up0 met_down0 met_conn0 < <(counts metrics)
sleep "$window"
read -r idle_up1 idle_down1 idle_conn1 < <(counts idle)
read -r met_up1 met_down1 met_conn1 < <(counts metrics)

per_day() { awk -v b="$1" -v w="$window" 'BEGIN {printf "%.2f MiB", b * 86400 / w / 1048576}'; }
idle_up=$((idle_up1 - idle_up0)); idle_down=$((idle_down1 - idle_down0))
met_up=$((met_up1 - met_up0)); met_down=$((met_down1 - met_down0))
echo "window: ${window}s after ${warmup}s of warm-up; bytes counted below TLS (TLS records and TCP payload, not TCP/IP headers)"
echo

echo "| node | up/day | down/day | total/day | new connections in the window | goal |"
echo "|---|---|---|---|---|---|"
echo "| idle (control channel only) | $(per_day $idle_up) | $(per_day $idle_down) | $(per_day $((idle_up + idle_down))) | $((idle_conn1 - idle_conn0)) | < 1 MiB |"
echo "| default metrics (60 s) | $(per_day $met_up) | $(per_day $met_down) | $(per_day $((met_up + met_down))) | $((met_conn1 - met_conn0)) | < 5 MiB |"
