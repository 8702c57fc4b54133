#!/usr/bin/env bash
# Measures workload runtimes on this machine and prints a Markdown table:
#   - container start latency through edgefleet (from invoking `edgefleet apply` to the
#     start time the agent reports) against `docker run -d` of the same image on the same
#     engine (from invoking it to the container's StartedAt), in the same run (the ratio)
#   - WebAssembly module start latency through edgefleet (the same way)
#   - agent RSS idle, with 10 containers and with 10 WebAssembly modules
#   - lean `edgefleet-agent` release binary size without and with the `wasm` feature
# Usage: bench/workloads.sh [runs]   (default 7; medians are printed)
# Needs root, dockerd (docker.io) and busybox-static. A private dockerd is started on a
# socket in a temporary directory (no bridge, no iptables) and stopped by pid at the end;
# the server listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-7}

for tool in dockerd docker busybox; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install docker.io busybox-static" >&2; exit 1; }
done

# The lean agent alone (built together with `edgefleet`, cargo would unify features and
# give it wasm), then with the feature, then the operator binary.
cargo build --release -p edgefleet-agent >&2
size_plain=$(stat -c %s target/release/edgefleet-agent)
cargo build --release -p edgefleet-agent --features wasm >&2
size_wasm=$(stat -c %s target/release/edgefleet-agent)
cargo build --release -p edgefleet --bin edgefleet --example wat2wasm >&2
bin=target/release/edgefleet

work=$(mktemp -d /tmp/ef-wl.XXXXXX)
pids=()
cleanup() {
  docker -H "unix://$work/d.sock" rm -f $(docker -H "unix://$work/d.sock" ps -aq 2>/dev/null) >/dev/null 2>&1 || true
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  # dockerd leaves its network namespace mounted under its exec root.
  grep -o "$work[^ ]*" /proc/mounts | sort -r | while read -r m; do umount "$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k/1024}'; }
size_mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b/1048576}'; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.0f\n", (a[NR/2]+a[NR/2+1])/2}'; }
now_ms() { date +%s%3N; }

# A private dockerd and the test image: static busybox from scratch.
dockerd --host "unix://$work/d.sock" --data-root "$work/d-data" --exec-root "$work/x" \
  --pidfile "$work/d.pid" --bridge=none --iptables=false --ip6tables=false \
  --ip-forward=false --ip-masq=false >"$work/dockerd.log" 2>&1 &
pids+=("$!")
docker_() { docker -H "unix://$work/d.sock" "$@"; }
for _ in $(seq 100); do docker_ version >/dev/null 2>&1 && break; sleep 0.1; done
mkdir -p "$work/rootfs/bin"
cp "$(command -v busybox)" "$work/rootfs/bin/busybox"
for cmd in sh sleep cat echo; do ln -s busybox "$work/rootfs/bin/$cmd"; done
tar -C "$work/rootfs" -c . | docker_ import - bench/busybox:1 >/dev/null

# The module.
target/release/examples/wat2wasm bench/wasm/sleeper.wat "$work/sleeper.wasm"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export HOME="$work/home" EDGEFLEET_CONFIG="$work/server/cli-config.yaml"
"$bin" server --data-dir "$work/server" --listen "127.0.0.1:$port" >"$work/server.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do [ -f "$work/server/cli-config.yaml" ] && "$bin" get nodes >/dev/null 2>&1 && break; sleep 0.1; done
join=$("$bin" token create --ttl 1h)
"$bin" agent --data-dir "$work/agent" --join "$join" --name bench-1 \
  --container-socket "$work/d.sock" --heartbeat-interval 10s >"$work/agent.log" 2>&1 &
agent=$!; pids+=("$agent")
for _ in $(seq 200); do "$bin" get nodes -o json | grep -q '"Ready"' && break; sleep 0.1; done
module=$("$bin" artifact push "$work/sleeper.wasm" --name sleeper.wasm | grep -oE 'sleeper\.wasm@sha256:[0-9a-f]{64}' | head -1)

# started_ms NAME: when the agent reports workload NAME started, in ms since the epoch.
started_ms() {
  "$bin" describe node bench-1 -o json | python3 -c "
import json, sys, datetime
d = json.load(sys.stdin)
w = [w for w in (d.get('reported') or {}).get('workloads', []) if w['name'] == '$1'][0]
t = datetime.datetime.fromisoformat(w['started_at'].replace('Z', '+00:00'))
print(round(t.timestamp() * 1000))"
}
# iso_ms TIME: an RFC 3339 time (as docker prints it) in ms since the epoch.
iso_ms() {
  python3 -c "
import datetime, re, sys
s = re.sub(r'(\.\d{6})\d*', r'\1', sys.argv[1].strip().replace('Z', '+00:00'))
print(round(datetime.datetime.fromisoformat(s).timestamp() * 1000))" "$1"
}
# running NAME N: waits until N workloads whose name starts with NAME are running.
running() {
  for _ in $(seq 3000); do
    n=$("$bin" describe node bench-1 -o json \
      | python3 -c "import json,sys; d=json.load(sys.stdin); print(sum(1 for w in (d.get('reported') or {}).get('workloads',[]) if w['name'].startswith('$1') and w['state']=='running'))")
    [ "$n" -ge "$2" ] && return 0
    sleep 0.02
  done
  echo "timed out waiting for $2 $1 workloads" >&2; exit 1
}
# gone NAME: waits until no workload whose name starts with NAME is reported.
gone() {
  for _ in $(seq 3000); do
    "$bin" describe node bench-1 -o json | grep -q "\"name\": *\"$1" || return 0
    sleep 0.05
  done
}
deployment() { # name, workloads text
  printf 'apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata:\n  name: %s\nspec:\n  workloads:\n%s' "$1" "$2" >"$work/$1.yaml"
}
container_workload() { printf '    - name: %s\n      runtime: container\n      image: bench/busybox:1\n      imagePullPolicy: never\n      command: /bin/sleep\n      args: ["100000"]\n      stopGracePeriod: 1s\n' "$1"; }
wasm_workload() { printf '    - name: %s\n      runtime: wasm\n      module: %s\n' "$1" "$module"; }

sleep 3
idle=$(rss_kib "$agent")

ef_container=(); docker_run=(); ef_wasm=()
for r in $(seq "$runs"); do
  deployment "c$r" "$(container_workload "c$r")"
  t0=$(now_ms); "$bin" apply -f "$work/c$r.yaml" >/dev/null; running "c$r" 1
  ef_container+=($(($(started_ms "c$r") - t0)))
  "$bin" delete deployment "c$r" >/dev/null; gone "c$r"

  t0=$(now_ms)
  docker_ run -d --init --network host --name "d$r" bench/busybox:1 /bin/sleep 100000 >/dev/null
  docker_run+=($(($(iso_ms "$(docker_ inspect -f '{{.State.StartedAt}}' "d$r")") - t0)))
  docker_ rm -f "d$r" >/dev/null

  deployment "m$r" "$(wasm_workload "m$r")"
  t0=$(now_ms); "$bin" apply -f "$work/m$r.yaml" >/dev/null; running "m$r" 1
  ef_wasm+=($(($(started_ms "m$r") - t0)))
  "$bin" delete deployment "m$r" >/dev/null; gone "m$r"
done

ten=""; for i in $(seq 10); do ten+=$(container_workload "tc$i"); ten+=$'\n'; done
deployment tenc "$ten"; "$bin" apply -f "$work/tenc.yaml" >/dev/null; running tc 10; sleep 5
rss_containers=$(rss_kib "$agent")
"$bin" delete deployment tenc >/dev/null; gone tc

ten=""; for i in $(seq 10); do ten+=$(wasm_workload "tm$i"); ten+=$'\n'; done
deployment tenm "$ten"; "$bin" apply -f "$work/tenm.yaml" >/dev/null; running tm 10; sleep 5
rss_wasm=$(rss_kib "$agent")

c_med=$(printf '%s\n' "${ef_container[@]}" | median)
d_med=$(printf '%s\n' "${docker_run[@]}" | median)
w_med=$(printf '%s\n' "${ef_wasm[@]}" | median)
ratio=$(awk -v a="$c_med" -v b="$d_med" 'BEGIN {printf "%.2f", a/b}')

echo "| measure (medians of $runs) | value |"
echo "|---|---|"
echo "| container: \`edgefleet apply\` to started | ${c_med} ms (runs: ${ef_container[*]}) |"
echo "| container: \`docker run -d\` of the same image, same engine, to started | ${d_med} ms (runs: ${docker_run[*]}) |"
echo "| ratio edgefleet / docker run | ${ratio} |"
echo "| WebAssembly module: \`edgefleet apply\` to started | ${w_med} ms (runs: ${ef_wasm[*]}) |"
echo "| agent (\`edgefleet agent\`) RSS, idle | $(mib "$idle") |"
echo "| agent RSS, 10 containers | $(mib "$rss_containers") |"
echo "| agent RSS, 10 WebAssembly modules | $(mib "$rss_wasm") |"
echo "| lean \`edgefleet-agent\` binary, without / with \`wasm\` | $(size_mib "$size_plain") / $(size_mib "$size_wasm") |"
