#!/usr/bin/env bash
# logship's airflow-s3 output under a busy worker: TASKS task logs (default 200) running
# at once, each writing LINES_PER_S Airflow 3 JSON lines a second (default 20), for
# SECONDS_ (default 300), shipped to Airflow's remote-log layout with the defaults
# (5 s flush interval).
#
#   bench/logship/run-airflow.sh
#   TASKS=50 SECONDS_=60 bench/logship/run-airflow.sh     # a quick look
#
# logship (dist/logship) is pinned to CPU 0; the writer (Python) and the S3 stand-in
# (crates/logship/examples/s3_sink.rs, which logs every request with its arrival time)
# to CPU 1. Measured: logship's CPU as a share of one core and its peak RSS; S3 requests
# per task-hour; and the visibility lag of every line: from its write to the arrival
# of the first PutObject whose object holds its last byte (what Airflow's reader could
# then list and read). Prints Markdown rows; RESULTS.md holds a run.
set -euo pipefail
cd "$(dirname "$0")/../.."
tasks=${TASKS:-200}
rate=${LINES_PER_S:-20}
secs=${SECONDS_:-300}
port=${PORT:-18444}
admin=127.0.0.1:19402
bin=${LOGSHIP_BIN:-dist/logship}
[[ -x $bin ]] || DAEMONS=logship scripts/build-static >/dev/null
sink=${SINK_BIN:-target/release/examples/s3_sink}
[[ -n ${SINK_BIN:-} ]] || cargo build --quiet --release -p logship --example s3_sink

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

taskset -c 1 "$sink" "$port" "$work/requests.csv" & pids+=($!)
sleep 0.5
mkdir -p "$work/logs" "$work/state"
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
taskset -c 0 "$bin" --path "$work/logs/**/*.log" --airflow-log-folder "$work/logs" \
  --output airflow-s3://bench/remote --state-dir "$work/state" --admin-addr "$admin" \
  --log-format json ${LOGSHIP_FLAGS:-} 2>"$work/logship.log" &
pid=$!; pids+=($pid)
sleep 2
kill -0 "$pid" 2>/dev/null || { cat "$work/logship.log"; exit 1; }
cpu0=$(awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$pid/stat")

taskset -c 1 python3 - "$work" "$tasks" "$rate" "$secs" "$pid" "$cpu0" "$(cat /proc/loadavg)" <<'PY'
import bisect, json, os, statistics, sys, time
work, tasks, rate, secs, pid, cpu0, load = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
tick = os.sysconf("SC_CLK_TCK")

def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick

rels = [f"dag_id=bench/run_id=r/task_id=t{i:03d}/attempt=1.log" for i in range(tasks)]
fds, offsets, written = [], [0] * tasks, [[] for _ in range(tasks)]
for rel in rels:
    path = os.path.join(work, "logs", rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
# Each task writes on its own phase of the period, so the writes spread evenly.
period = 1.0 / rate
start = time.time()
cpu_start = cpu()
n = 0
while True:
    now = time.time()
    if now - start >= secs:
        break
    step = int((now - start) / period)
    for i in range(tasks):
        due = step + (1 if (now - start) % period >= period * i / tasks else 0)
        while len(written[i]) < due:
            k = len(written[i])
            line = json.dumps({"timestamp": f"2026-12-03T10:00:00.{k % 1000000:06d}Z", "level": "info",
                               "event": f"task {i} line {k} " + "x" * 60, "logger": "airflow.task"}) + "\n"
            os.write(fds[i], line.encode())
            offsets[i] += len(line)
            written[i].append((time.time(), offsets[i]))
            n += 1
    time.sleep(0.005)
wall = time.time() - start
cpu_used = cpu() - cpu_start
hwm = int([l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM:")][0])
time.sleep(12)  # the last flush interval, then the requests log is whole

puts = {}  # attempt key -> [(arrival, covered end)]
counts = {"PUT": 0, "DELETE": 0, "DELETES": 0, "OTHER": 0}
deleted_keys = 0
for row in open(os.path.join(work, "requests.csv")):
    t, what, key, size = row.rstrip("\n").split(",", 3)
    counts[what] += 1
    if what == "DELETES":
        deleted_keys += int(size)
    if what != "PUT" or ".logship-write-check" in key:
        continue
    attempt, start_off = key.rsplit(".", 1)
    attempt = attempt.replace("%3D", "=").split("remote/", 1)[1]
    puts.setdefault(attempt, []).append((int(t) / 1e9, int(start_off) + int(size)))
lags = []
for i, rel in enumerate(rels):
    events = sorted(puts.get(rel, []))
    times, ends, best = [], [], 0
    for t, e in events:
        best = max(best, e)
        times.append(t)
        ends.append(best)
    for w, off in written[i]:
        j = bisect.bisect_left(ends, off)
        if j < len(ends):
            lags.append(max(0.0, times[j] - w))
lags.sort()
missing = n - len(lags)
q = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))]
task_hours = tasks * wall / 3600
print(f"| load | {tasks} task logs × {rate:g} lines/s of ~150 bytes for {wall:.0f} s ({n:,} lines) |")
print(f"| logship CPU | **{100 * cpu_used / wall:.2f} % of one core** ({cpu_used:.1f} s) |")
print(f"| logship peak RSS (VmHWM) | **{hwm / 1024:.1f} MiB** |")
print(f"| S3 requests per task-hour | **{counts['PUT'] / task_hours:.0f} PutObject + {counts['DELETES'] / task_hours:.1f} DeleteObjects** ({deleted_keys / task_hours:.0f} keys; {counts['DELETE'] / task_hours:.0f} DeleteObject) |")
print(f"| visibility lag p50 / p95 / max | **{q(0.5):.2f} / {q(0.95):.2f} / {lags[-1]:.2f} s** (flush interval 5 s) |")
print(f"| lines never uploaded | {missing} |")
print(f"| load average at the start (other work on the machine) | {load.split()[0]} |")
PY
kill -TERM "$pid"; wait "$pid" || true
