#!/usr/bin/env bash
# logship benchmark, forward input: 8 connections on the unix socket → disk buffer →
# Firehose API on loopback. Each connection sends Forward-mode frames of 2,000 Docker
# fluentd driver records (a 200-byte Airflow text line each) and waits for every ack,
# as Fluent Bit's forward output does with Require_ack_response
# (crates/logship/examples/forward_load.rs).
#
#   bench/logship/run-forward.sh              # 4,000,000 events
#   EVENTS=1000000 bench/logship/run-forward.sh
#
# logship (dist/logship) is pinned to CPU 0; the Firehose stand-in and the load generator
# share CPU 1, so "one core" is literal for logship. The clock runs from the first frame
# until the sink has counted every event. Also: logship's CPU seconds, peak RSS under
# load (VmHWM), RSS idle. --linger and --multiline-timeout are 50 ms so the end of the
# run measures throughput, not those fixed waits. Prints Markdown rows.
set -euo pipefail
cd "$(dirname "$0")/../.."
events=${EVENTS:-4000000}
conns=8
port=${PORT:-18444}
admin=127.0.0.1:19421
bin=${LOGSHIP_BIN:-dist/logship}
[[ -x $bin ]] || DAEMONS=logship scripts/build-static >/dev/null
cargo build --quiet --release -p logship --example firehose_sink --example forward_load
sink=target/release/examples/firehose_sink
load=target/release/examples/forward_load

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
exec {nap_fd}<> <(:)
nap() { read -rt "$1" -u "$nap_fd" || :; }
rss_kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
cpu_secs() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"; }

total=$((events / conns * conns))
taskset -c 1 "$sink" "$port" "$total" >/dev/null & sinkpid=$!; pids+=($sinkpid)
sleep 0.5
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
run() {
  taskset -c 0 "$bin" --forward true --path "" --output firehose:bench \
    --forward-socket "$work/fluent.sock" --forward-listen "" --forward-health "" \
    --firelens-config "$work/none.conf" --buffer-dir "$work/buffer-$1" \
    --state-dir "$work/state-$1" --admin-addr "$admin" --log-format json \
    --linger 50ms --multiline-timeout 50ms 2>"$work/logship-$1.log" &
}
run load
pid=$!; pids+=($pid)
while [[ ! -S $work/fluent.sock ]]; do nap 0.02; done
start=$(date +%s.%N)
taskset -c 1 "$load" "$work/fluent.sock" "$conns" "$((events / conns))" > "$work/load.out"
while kill -0 "$sinkpid" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { cat "$work/logship-load.log"; exit 1; }
  nap 0.02
done
end=$(date +%s.%N)
cpu=$(cpu_secs "$pid")
peak=$(rss_kib "$pid" VmHWM)
bytes=$(sed -n 's/^bytes=//p' "$work/load.out")
kill -TERM "$pid"; wait "$pid" || true

# Idle: a fresh router with nothing to ship.
taskset -c 1 "$sink" "$port" >/dev/null & pids+=($!)
sleep 0.3
run idle
pid=$!; pids+=($pid)
sleep 10
idle=$(rss_kib "$pid" VmRSS)
kill -TERM "$pid"; wait "$pid" || true

python3 - "$total" "$bytes" "$start" "$end" "$cpu" "$peak" "$idle" "$(cat /proc/loadavg)" <<'PY'
import sys
n, b, t0, t1, cpu, peak, idle, load = sys.argv[1:]
n, b, secs, cpu = int(n), int(b), float(t1) - float(t0), float(cpu)
print(f"| input | {n:,} events from 8 connections, {b / 2**20:.0f} MiB of forward frames (200-byte lines in Docker driver records) |")
print(f"| wall time, first frame → sink acknowledged | {secs:.2f} s |")
print(f"| throughput | **{b / 2**20 / secs:.1f} MiB/s** of frames, **{n / secs:,.0f} events/s** |")
print(f"| logship CPU | {cpu:.2f} s ({cpu / secs * 100:.0f} % of the wall time; {n / cpu:,.0f} events per CPU-second) |")
print(f"| peak RSS under load (VmHWM) | **{int(peak) / 1024:.1f} MiB** |")
print(f"| RSS idle (fresh router, nothing to ship) | **{int(idle) / 1024:.1f} MiB** |")
print(f"| load average at the end (other work on the machine) | {load.split()[0]} |")
PY
