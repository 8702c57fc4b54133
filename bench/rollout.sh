#!/usr/bin/env bash
# Rollout benchmark: a real server and N simulated nodes (edgefleet-sim) on this machine.
#
#   bench/rollout.sh N            e.g. bench/rollout.sh 1000, bench/rollout.sh 10000
#
# Builds the release binaries, starts a fresh server on a free loopback port in a temporary
# data directory, enrolls N simulated nodes (labels site=site-{i%10}), waits until the
# server lists all of them Ready, then applies a deployment with
# `rollout: {batchSize: "10%", bakeTime: 0s}` and measures, and prints as a Markdown table:
#   - wall time from apply until GET /v1/deployments/bench/rollout reports phase
#     `succeeded` with counts.healthy == N
#   - server CPU seconds (utime+stime from /proc/PID/stat) during the rollout
#   - server peak RSS (VmHWM) and simulator RSS per node
#   - enrollment time and rate
# When the server has no rollout endpoint (404), convergence is measured on GET /v1/nodes
# instead (every node applied its desired generation and runs its workloads), and the table
# says so.
#
# Environment: BENCH_HEARTBEAT (simulated heartbeat interval, default 10s),
# BENCH_TIMEOUT (seconds to wait for enrollment and for the rollout, each; default 1800),
# BENCH_KEEP=1 keeps the working directory (logs) and prints its path.
# Everything listens on 127.0.0.1 only; every process started here is stopped by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:-}
if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: bench/rollout.sh N   (the number of simulated nodes, e.g. 1000)" >&2
  exit 2
fi
heartbeat=${BENCH_HEARTBEAT:-10s}
timeout=${BENCH_TIMEOUT:-1800}

cargo build --release -p edgefleet -p edgefleet-sim >&2
bin=$PWD/target/release/edgefleet
sim_bin=$PWD/target/release/edgefleet-sim

work=$(mktemp -d /tmp/edgefleet-rollout.XXXXXX)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "${BENCH_KEEP:-}" = 1 ]; then
    echo "kept $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
  echo "error: $*" >&2
  for log in "$work"/*.log; do
    [ -f "$log" ] && { echo "--- last lines of $log" >&2; tail -n 15 "$log" >&2; }
  done
  exit 1
}

# One socket per simulated node on each side: raise the open-files limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((n + n / 8 + 512)) ]; then
  die "$n nodes need about $((n + n / 8 + 512)) open files per process; the limit is $(ulimit -n)"
fi

clk_tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
status_kib() { awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"; }
alive() { kill -0 "$1" 2>/dev/null; }
# How a child that is gone ended, into $ended: "exit status N" or "killed by signal NAME".
# (No command substitution: `wait` works only in the shell that started the child.)
ended=""
how_it_ended() {
  local code=0
  wait "$1" 2>/dev/null || code=$?
  if [ "$code" -gt 128 ]; then ended="killed by signal $(kill -l $((code - 128)))"; else ended="exit status $code"; fi
}
check_alive() {
  if ! alive "$server"; then how_it_ended "$server"; die "the server is gone ($ended)"; fi
  if ! alive "$sim"; then how_it_ended "$sim"; die "the simulator is gone ($ended)"; fi
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="https://127.0.0.1:$port"
export HOME="$work/home" EDGEFLEET_CONFIG="$work/server/cli-config.yaml"
mkdir -p "$HOME"

echo "starting the server on $url" >&2
"$bin" server --data-dir "$work/server" --listen "127.0.0.1:$port" >"$work/server.log" 2>&1 &
server=$!
pids+=("$server")
for _ in $(seq 300); do
  alive "$server" || die "the server exited while starting"
  [ -f "$EDGEFLEET_CONFIG" ] && "$bin" get nodes >/dev/null 2>&1 && break
  sleep 0.1
done
"$bin" get nodes >/dev/null 2>&1 || die "the server did not come up within 30s"
token=$(cat "$work/server/admin.token")
ca="$work/server/ca.crt"
api() { curl -sS --cacert "$ca" -H "Authorization: Bearer $token" -o "$2" -w '%{http_code}' "$url$1"; }

join=$("$bin" token create --ttl 24h --description "rollout benchmark")
echo "enrolling $n simulated nodes" >&2
"$sim_bin" --join "$join" --nodes "$n" --label 'site=site-{i%10}' --heartbeat "$heartbeat" \
  --report-every 10s >"$work/sim.log" 2>&1 &
sim=$!
pids+=("$sim")
enrolled_line=""
deadline=$((SECONDS + timeout))
while [ -z "$enrolled_line" ]; do
  check_alive
  [ $SECONDS -lt $deadline ] || die "enrollment did not finish within ${timeout}s"
  enrolled_line=$(grep -m1 "nodes enrolled in" "$work/sim.log" || true)
  sleep 0.5
done
echo "$enrolled_line" >&2
enroll_seconds=$(sed -E 's/.* enrolled in ([0-9.]+)s.*/\1/' <<<"$enrolled_line")
enroll_rate=$(sed -E 's/.*s \(([0-9.]+) nodes\/s\).*/\1/' <<<"$enrolled_line")

count_ready() {
  api "/v1/nodes" "$work/nodes.json" >/dev/null || true
  python3 -c 'import json,sys; print(sum(1 for n in json.load(open(sys.argv[1])) if n["status"] == "Ready"))' \
    "$work/nodes.json" 2>/dev/null || echo 0
}
echo "waiting until the server lists all $n nodes Ready" >&2
while [ "$(count_ready)" -lt "$n" ]; do
  check_alive
  [ $SECONDS -lt $deadline ] || die "not all nodes Ready within ${timeout}s"
  sleep 1
done

cat >"$work/bench.yaml" <<'EOF'
apiVersion: edgefleet.io/v1
kind: Deployment
metadata:
  name: bench
spec:
  rollout:
    batchSize: "10%"
    bakeTime: 0s
  workloads:
    - name: bench
      command: /bin/sleep
      args: ["100000"]
EOF

# Prints "done" when the rollout succeeded with every node healthy, "failed PHASE" when it
# ended otherwise, "absent" without a rollout endpoint, or the progress so far.
rollout_state() {
  local code
  code=$(api "/v1/deployments/bench/rollout?nodes=false" "$work/rollout.json" || echo 000)
  case "$code" in
    200) python3 - "$work/rollout.json" "$n" <<'EOF'
import json, sys
status = json.load(open(sys.argv[1]))
phase, counts = status["phase"], status["counts"]
if phase == "succeeded" and counts["healthy"] == int(sys.argv[2]):
    print("done")
elif phase in ("aborted", "rolled-back", "superseded"):
    print("failed", phase, status.get("abort_reason") or "")
else:
    print("progress", phase, "step", status["current_step"], "healthy", counts["healthy"])
EOF
    ;;
    404) echo absent ;;
    *) echo "progress (rollout endpoint answered $code)" ;;
  esac
}

# Convergence without a rollout endpoint: every node applied its desired generation and
# runs every workload it should.
nodes_converged() {
  api "/v1/nodes" "$work/nodes.json" >/dev/null || true
  python3 - "$work/nodes.json" "$n" <<'EOF' 2>/dev/null || echo 0
import json, sys
nodes = json.load(open(sys.argv[1]))
done = sum(1 for n in nodes
           if n["desired_generation"] > 0 and n["applied_generation"] == n["desired_generation"]
           and n["workloads_total"] > 0 and n["workloads_running"] == n["workloads_total"])
print("done" if done == int(sys.argv[2]) else done)
EOF
}

# The idle cost of the fleet: server CPU over 20 s of heartbeats and long polls.
idle_before=$(cpu_ticks "$server")
sleep 20
idle_after=$(cpu_ticks "$server")
idle_cpu=$(awk -v a="$idle_before" -v b="$idle_after" -v t="$clk_tck" 'BEGIN { printf "%.0f", 100 * (b - a) / t / 20 }')

cpu_before=$(cpu_ticks "$server")
start=$(now)
"$bin" apply -f "$work/bench.yaml" >&2
measured_by="rollout phase succeeded, counts.healthy = $n"
deadline=$((SECONDS + timeout))
last_report=$SECONDS
while :; do
  check_alive
  state=$(rollout_state)
  if [ "$state" = absent ]; then
    measured_by="GET /v1/nodes: all $n nodes applied and running (no rollout endpoint)"
    state=$(nodes_converged)
    [ "$state" = done ] || state="progress: $state nodes converged"
  fi
  case "$state" in
    done) break ;;
    failed*) die "the rollout ended without succeeding: $state" ;;
  esac
  [ $SECONDS -lt $deadline ] || die "the rollout did not finish within ${timeout}s ($state)"
  if [ $((SECONDS - last_report)) -ge 10 ]; then
    echo "  $(since "$start")s: $state" >&2
    last_report=$SECONDS
  fi
  sleep 0.5
done
wall=$(since "$start")
cpu_after=$(cpu_ticks "$server")
server_cpu=$(awk -v a="$cpu_before" -v b="$cpu_after" -v t="$clk_tck" 'BEGIN { printf "%.1f", (b - a) / t }')
server_hwm=$(status_kib "$server" VmHWM)
sim_rss=$(status_kib "$sim" VmRSS)

mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
echo
echo "| measure ($n simulated nodes, heartbeat $heartbeat, $(nproc) CPUs) | value |"
echo "|---|---|"
echo "| enrollment | ${enroll_seconds} s (${enroll_rate} nodes/s) |"
echo "| apply → rollout done (batchSize 10%, bakeTime 0s) | ${wall} s |"
echo "| server CPU during the rollout (utime+stime) | ${server_cpu} s |"
echo "| server CPU with the fleet idle (heartbeats, long polls) | ${idle_cpu}% of one core |"
echo "| server peak RSS (VmHWM) | $(mib "$server_hwm") |"
echo "| simulator RSS | $(mib "$sim_rss") ($(awk -v k="$sim_rss" -v n="$n" 'BEGIN { printf "%.1f", k / n }') KiB per node) |"
echo "| measured by | ${measured_by} |"
