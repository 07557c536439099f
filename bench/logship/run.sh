#!/usr/bin/env bash
# logship benchmark: tail → Firehose API on loopback, 200-byte Airflow 2 text lines.
#
#   bench/logship/run.sh                 # 1 GiB backlog (about a minute)
#   MIB=256 bench/logship/run.sh
#
# logship (dist/logship, the static release build) is pinned to CPU 0 and the sink
# (crates/logship/examples/firehose_sink.rs, a Rust stand-in that accepts PutRecordBatch, built as the logship
# crate's `firehose_sink` example) to CPU 1, so "one core" is literal. A backlog file is written first; the clock runs from logship's start
# until the sink has counted every line. Also measured: CPU seconds used by logship,
# peak RSS under that load (VmHWM), RSS when idle, and the size of dist/logship.
# The end of a backlog waits by design: the last line for --multiline-timeout (it may
# be the start of a traceback), then the last, partial batch for --linger; 2 s with the
# defaults, whatever the backlog. Both are set to 50 ms here so the clock measures
# throughput, not that fixed wait; every other setting is the default.
# Prints Markdown rows; RESULTS.md holds a run.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=bench/logship
mib=${MIB:-1024}
port=${PORT:-18443}
admin=127.0.0.1:19401
ends=(--multiline-timeout 50ms --linger 50ms)
bin=${LOGSHIP_BIN:-dist/logship}
[[ -x $bin ]] || DAEMONS=logship scripts/build-static >/dev/null
sink=${SINK_BIN:-target/release/examples/firehose_sink}
[[ -n ${SINK_BIN:-} ]] || cargo build --quiet --release -p logship --example firehose_sink

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# A sleep without a process: `read` with a timeout on a pipe nobody writes to.
exec {nap_fd}<> <(:)
nap() { read -rt "$1" -u "$nap_fd" || :; }
rss_kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
cpu_secs() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"; }

# The backlog: one Airflow task log of 200-byte lines (199 characters + newline).
dir="$work/logs/dag_id=bench/run_id=r/task_id=t"
mkdir -p "$dir"
python3 - "$dir/attempt=1.log" "$mib" <<'PY'
import sys
path, mib = sys.argv[1], int(sys.argv[2])
head = "[2026-11-22T06:00:00.123+0000] {taskinstance.py:1165} INFO - "
with open(path, "w") as f:
    block = []
    for i in range(10000):
        line = f"{head}task output {i:08d} "
        line += "abcdefghijklmnopqrstuvwxyz0123456789"[i % 36] * (199 - len(line))
        block.append(line + "\n")
    block = "".join(block)
    for _ in range(mib * 1024 * 1024 // len(block)):
        f.write(block)
PY
bytes=$(stat -c %s "$dir/attempt=1.log")
lines=$(wc -l < "$dir/attempt=1.log")
# The sink exits once it has accepted every line; the waits below poll with shell
# builtins only, so nothing but logship runs on CPU 0 and nothing but the sink on CPU 1.
taskset -c 1 "$sink" "$port" "$lines" >/dev/null & sinkpid=$!; pids+=($sinkpid)
sleep 0.5

export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
start=$(date +%s.%N)
taskset -c 0 "$bin" --path "$work/logs/**/*.log" --output firehose:bench \
  --state-dir "$work/state" --admin-addr "$admin" --log-format json "${ends[@]}" 2>"$work/logship.log" &
pid=$!; pids+=($pid)
while kill -0 "$sinkpid" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { cat "$work/logship.log"; exit 1; }
  nap 0.02
done
end=$(date +%s.%N)
# A sink that stays up, for the idle measurements (a fresh logship checks its stream).
taskset -c 1 "$sink" "$port" >/dev/null & pids+=($!)
cpu=$(cpu_secs "$pid")
peak=$(rss_kib "$pid" VmHWM)
secs=$(python3 -c "print($end - $start)")
sleep 10  # idle = steady state: logship hands memory back after 5 s without new data
idle_loaded=$(rss_kib "$pid" VmRSS)
kill -TERM "$pid"; wait "$pid" || true

# The same backlog to stdout (→ /dev/null): tailing, parsing and encoding without the
# Firehose client (base64, JSON, SigV4 hashing, HTTP), to show where the CPU goes.
# The reader on CPU 1 marks the moment it has seen every line, then keeps draining.
s0=$(date +%s.%N)
taskset -c 0 "$bin" --path "$work/logs/**/*.log" --output stdout \
  --state-dir "$work/state3" --admin-addr "$admin" --log-format json "${ends[@]}" 2>/dev/null \
  > >(taskset -c 1 sh -c "head -n $lines >/dev/null; : > '$work/stdout-done'; exec cat >/dev/null") &
pid=$!; pids+=($pid)
while [[ ! -e $work/stdout-done ]]; do
  kill -0 "$pid" 2>/dev/null || { echo "logship (stdout) exited early" >&2; exit 1; }
  nap 0.02
done
s1=$(date +%s.%N)
stdout_cpu=$(cpu_secs "$pid")
stdout_secs=$(python3 -c "print($s1 - $s0)")
kill -TERM "$pid"; wait "$pid" || true

# Idle: a fresh process with nothing to ship.
mkdir -p "$work/empty"
taskset -c 0 "$bin" --path "$work/empty/**/*.log" --output firehose:bench \
  --state-dir "$work/state2" --admin-addr "$admin" --log-format json 2>/dev/null &
pid=$!; pids+=($pid)
sleep 10  # idle = steady state: logship hands memory back after 5 s without new data
idle=$(rss_kib "$pid" VmRSS)
kill -TERM "$pid"; wait "$pid" || true

python3 - "$bytes" "$lines" "$secs" "$cpu" "$peak" "$idle" "$idle_loaded" "$(stat -c %s "$bin")" "$stdout_secs" "$stdout_cpu" "$(cat /proc/loadavg)" <<'PY'
import sys
b, l, s, cpu, peak, idle, idle_after, size, ss, scpu, load = sys.argv[1:]
b, l, s, cpu, ss, scpu = int(b), int(l), float(s), float(cpu), float(ss), float(scpu)
print(f"| input | {b / 2**20:.0f} MiB, {l:,} lines of 200 bytes |")
print(f"| wall time, tail → sink acknowledged | {s:.2f} s |")
print(f"| throughput | **{b / 2**20 / s:.1f} MiB/s**, **{l / s:,.0f} lines/s** |")
print(f"| logship CPU | {cpu:.2f} s ({b / 2**20 / cpu:.1f} MiB per CPU-second) |")
print(f"| peak RSS under load (VmHWM) | **{int(peak) / 1024:.1f} MiB** |")
print(f"| RSS idle (fresh, nothing to ship) | **{int(idle) / 1024:.1f} MiB** |")
print(f"| RSS idle after the load | {int(idle_after) / 1024:.1f} MiB |")
print(f"| dist/logship size | **{int(size) / 2**20:.1f} MiB** |")
print(f"| same backlog to stdout (no Firehose client): wall, CPU | {ss:.2f} s ({b / 2**20 / ss:.1f} MiB/s), {scpu:.2f} s ({b / 2**20 / scpu:.1f} MiB per CPU-second) |")
print(f"| load average at the end (other work on the machine) | {load.split()[0]} |")
PY
