#!/usr/bin/env bash
# Measures edgefleet's footprint on this machine and prints a Markdown table:
#   - stripped release binary sizes (lean agent, full edgefleet binary)
#   - agent idle RSS with no workloads and with 10 process workloads
#   - server RSS with 3 agents enrolled and converged
#   - time from `apply` to all nodes converged in the quickstart (median of N runs)
# Usage: bench/footprint.sh [runs]   (default 5 quickstart runs)
# Everything listens on 127.0.0.1 only and is stopped by pid at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}

# Separately: built together, cargo would unify features and give the lean agent the
# WebAssembly runtime that `edgefleet agent` has.
cargo build --release -p edgefleet >&2
cargo build --release -p edgefleet-agent >&2
bin=target/release/edgefleet
lean=target/release/edgefleet-agent

work=$(mktemp -d /tmp/edgefleet-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k/1024}'; }
size_mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN {printf "%.1f MiB", b/1048576}'; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export HOME="$work/home" EDGEFLEET_CONFIG="$work/server/cli-config.yaml"
"$bin" server --data-dir "$work/server" --listen "127.0.0.1:$port" >"$work/server.log" 2>&1 &
server=$!; pids+=("$server")
for _ in $(seq 100); do [ -f "$work/server/cli-config.yaml" ] && "$bin" get nodes >/dev/null 2>&1 && break; sleep 0.1; done

join=$("$bin" token create --ttl 1h)
for n in 1 2 3; do
  "$lean" --data-dir "$work/agent-$n" --join "$join" --name "bench-$n" --labels "n=$n" >"$work/agent-$n.log" 2>&1 &
  pids+=("$!"); eval "agent$n=$!"
done
for _ in $(seq 200); do [ "$("$bin" get nodes -o json | grep -c '"Ready"' || true)" = 3 ] && break; sleep 0.1; done
sleep 10
idle=$(rss_kib "$agent1")

workloads=""
for i in $(seq 10); do
  workloads+="    - name: w$i
      command: /bin/sh
      args: [\"-c\", \"exec sleep 100000\"]
"
done
printf 'apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata:\n  name: ten\nspec:\n  selector:\n    matchLabels: {n: "1"}\n  workloads:\n%s' "$workloads" >"$work/ten.yaml"
"$bin" apply -f "$work/ten.yaml" >/dev/null
for _ in $(seq 300); do
  running=$("$bin" describe node bench-1 -o json | { grep -o '"state": *"running"' || true; } | wc -l)
  [ "$running" -ge 10 ] && break; sleep 0.1
done
sleep 5
ten=$(rss_kib "$agent1")
server_rss=$(rss_kib "$server")

times=()
for r in $(seq "$runs"); do
  out=$("$bin" quickstart --dir "$work/qs-$r" --listen 127.0.0.1:0 --exit-when-converged 2>&1)
  t=$(printf '%s\n' "$out" | grep -oE 'converged in [0-9.]+ ?m?s' | head -1 | grep -oE '[0-9.]+ ?m?s' | tr -d ' ')
  case "$t" in *ms) t=$(awk -v v="${t%ms}" 'BEGIN {printf "%.3f", v/1000}');; *s) t=${t%s};; esac
  times+=("$t")
done
qs=$(printf '%s\n' "${times[@]}" | median)

echo "| measure | value |"
echo "|---|---|"
echo "| \`edgefleet-agent\` release binary, stripped | $(size_mib "$lean") |"
echo "| \`edgefleet\` release binary, stripped | $(size_mib "$bin") |"
echo "| agent idle RSS, no workloads | $(mib "$idle") |"
echo "| agent RSS, 10 process workloads | $(mib "$ten") |"
echo "| server RSS, 3 agents, 11 workloads | $(mib "$server_rss") |"
echo "| quickstart: apply to 3 nodes converged (median of $runs) | ${qs} s (runs: ${times[*]}) |"
