#!/usr/bin/env python3
"""workerguard's cost beside a busy worker: dist/workerguard in a PID namespace of its
own with PROCS processes (a Celery worker's table; TASKS of them titled as Airflow 3's
task runner), the ECS agent stand-in outside it. Prints idle RSS (no task yet), CPU over
SECONDS while the tasks run (protection on and renewed), peak RSS, and the binary size.

Usage: bench/workerguard/run.py [PROCS=400] [TASKS=16] [SECONDS=60]
Needs root (unshare --pid --mount-proc) and `cargo build -p airside-testkit` (the stand-in).
"""
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROCS, TASKS, SECONDS = (int(a) for a in (sys.argv[1:] + ["400", "16", "60"][len(sys.argv) - 1:])[:3])
BIN = ROOT / "dist" / "workerguard"
TICK = os.sysconf("SC_CLK_TCK")


def stat(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024


subprocess.run(["cargo", "build", "-q", "-p", "airside-testkit", "--bin", "ecs-agent-standin"], cwd=ROOT, check=True)
agent = subprocess.Popen([str(ROOT / "target/debug/ecs-agent-standin")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
uri = agent.stdout.readline().strip().split("=", 1)[1]
go = "/tmp/workerguard-bench-go"
Path(go).unlink(missing_ok=True)
script = f"""
for i in $(seq {PROCS - TASKS}); do (exec -a '[celeryd: celery@bench:ForkPoolWorker-'$i']' sleep 100000) & done
ECS_AGENT_URI={uri} {BIN} --log-format json --admin-addr 127.0.0.1:0 2>/tmp/workerguard-bench.log &
while [ ! -e {go} ]; do sleep 0.2; done
for i in $(seq {TASKS}); do (exec -a "airflow worker -- 0199a3f2-7c4e-7d1a-9b2e-$(printf %012x $i)" sleep 100000) & done
wait
"""
ns = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "bash", "-c", script])
try:
    pid = None
    for _ in range(100):
        # The process whose executable is the binary (bash's command line names it too).
        for p in Path("/proc").iterdir():
            try:
                if p.name.isdigit() and os.readlink(p / "exe") == str(BIN):
                    pid = int(p.name)
            except OSError:
                pass
        if pid:
            break
        time.sleep(0.1)
    assert pid, "workerguard did not start"
    time.sleep(15)
    idle_rss = status(pid, "VmRSS")
    idle_cpu0, t0 = stat(pid), time.time()
    time.sleep(15)
    idle_cpu = (stat(pid) - idle_cpu0) / (time.time() - t0) * 100
    Path(go).touch()
    time.sleep(3)
    cpu0, t0 = stat(pid), time.time()
    time.sleep(SECONDS)
    busy_cpu = (stat(pid) - cpu0) / (time.time() - t0) * 100
    state = json.loads(urllib.request.urlopen(uri.split("/api/")[0] + "/_standin/state").read())
    print(json.dumps({
        "procs": PROCS, "tasks": TASKS, "seconds": SECONDS,
        "idle_rss_mib": round(idle_rss, 2),
        "idle_cpu_percent": round(idle_cpu, 3),
        "busy_cpu_percent": round(busy_cpu, 3),
        "busy_rss_mib": round(status(pid, "VmRSS"), 2),
        "peak_rss_mib": round(status(pid, "VmHWM"), 2),
        "protected": state["protected"],
        "binary_mib": round(BIN.stat().st_size / 1048576, 2),
    }))
finally:
    ns.kill()
    ns.wait()
    agent.stdin.close()
    agent.wait()
    Path(go).unlink(missing_ok=True)
