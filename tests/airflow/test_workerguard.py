"""workerguard beside real Airflow 3.3.2 task processes.

The scheduler (LocalExecutor: its task processes are the worker's) and workerguard run
together in a PID namespace of their own (`unshare --pid --fork --mount-proc`), as the
worker task's containers share one with `pidMode: "task"`: workerguard sees exactly
those processes, Airflow's real process titles among them (the LocalExecutor's pool
processes, `airflow worker -- LocalExecutor: <idle>`, included). Its ECS agent is the
test kit's stand-in (`ecs-agent-standin`), whose protection timeline the test reads.

A DAG runs two sleeping tasks side by side (12 s and 24 s): protection must be on within
5 s of the first task runner taking its title (watched in /proc by the test; the API's
start_date comes earlier, by seconds of Airflow's own start-up under load), stay on while
either runs, and go off one idle grace after the last runner was gone, not before;
workerguard must count exactly the tasks the API says run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from airflow_stack import AIRFLOW, ROOT, Stack, cleanup

GRACE_S = 5
DAG = "guarded_sleep"


def workerguard_binary() -> Path:
    path = Path(os.environ.get("WORKERGUARD_BIN", ROOT / "dist" / "workerguard"))
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run scripts/build-static (or set WORKERGUARD_BIN)")
    return path


def standin_binary() -> Path:
    subprocess.run(
        ["cargo", "build", "-q", "--locked", "-p", "airside-testkit", "--bin", "ecs-agent-standin"],
        cwd=ROOT, check=True,
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "debug" / "ecs-agent-standin"


class Agent:
    """The ECS agent stand-in as a process (ends when its stdin closes)."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [str(standin_binary())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline().strip()
        assert line.startswith("ECS_AGENT_URI="), line
        self.uri = line.split("=", 1)[1]
        self.base = self.uri.split("/api/")[0]

    def state(self) -> dict:
        """The stand-in's state, with `started` (its clock's zero, as Unix time) added."""
        before = time.time()
        with urllib.request.urlopen(f"{self.base}/_standin/state", timeout=10) as r:
            s = json.loads(r.read())
        s["started"] = before - s["now"]
        return s

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


class GuardedStack(Stack):
    """The stack with its scheduler and workerguard in one PID namespace."""

    def __init__(self, work: Path, agent_uri: str):
        super().__init__(work)
        self.agent_uri = agent_uri
        self.guard_log = work / "workerguard.log"

    def scheduler_argv(self) -> list[str]:
        script = (
            'ECS_AGENT_URI="$3" "$2" --log-format json --admin-addr 127.0.0.1:0 '
            f'--check-interval 500ms --idle-grace {GRACE_S}s >"$4" 2>&1 & '
            '"$1" scheduler --skip-serve-logs & wait'
        )
        return [
            "unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
            "bash", "-c", script, "bash",
            str(AIRFLOW), str(workerguard_binary()), self.agent_uri, str(self.guard_log),
        ]

    def guard_lines(self) -> list[dict]:
        out = []
        for line in self.guard_log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out

    def guard_metric(self, name: str) -> float | None:
        addr = next(l["addr"] for l in self.guard_lines() if l.get("message") == "admin server listening")
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.split(" ")[0] == name:
                    return float(line.split(" ")[1])
        return None


@pytest.fixture(scope="module")
def guarded():
    assert AIRFLOW.exists(), f"{AIRFLOW} is missing: run scripts/setup-venv-airflow (scripts/test does)"
    agent = Agent()
    work = Path(tempfile.mkdtemp(prefix="airside-workerguard-"))
    s = GuardedStack(work, agent.uri)
    try:
        s.start()
        yield s, agent
    finally:
        s.stop()
        agent.stop()
        cleanup(work)


def wall(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


RUNNER = re.compile(rb"airflow worker -- [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\x00*")


class RunnerWatch(threading.Thread):
    """Watches the host's /proc (which shows the namespace's processes too) every 50 ms
    for Airflow 3 task runners: when each title first appeared and when it was last seen.
    The task instance's start_date is stamped by the API before its runner process takes
    its title (seconds earlier under load); workerguard's latency counts from the title."""

    def __init__(self):
        super().__init__(daemon=True)
        self.first: dict[bytes, float] = {}
        self.last: dict[bytes, float] = {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            now = time.time()
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        title = f.read(200)
                except OSError:
                    continue
                if RUNNER.fullmatch(title):
                    self.first.setdefault(title, now)
                    self.last[title] = now
            time.sleep(0.05)


def test_protection_follows_real_airflow_tasks(guarded):
    stack, agent = guarded
    # Idle: the state was read, nothing protected, the pool processes not counted.
    deadline = time.time() + 60
    while not any(l.get("message") == "protection state read" for l in stack.guard_lines()):
        assert time.time() < deadline, stack.guard_log.read_text()
        time.sleep(0.5)
    assert agent.state()["timeline"] == []
    assert stack.guard_metric("workerguard_running_tasks") == 0.0

    watch = RunnerWatch()
    watch.start()
    run_id = stack.trigger(DAG)
    seen_two = False
    ids = {}
    deadline = time.time() + 240
    while True:
        states = {t: stack.task_instance(DAG, run_id, t) for t in ("short", "long")}
        running = [t for t, ti in states.items() if ti.get("state") == "running"]
        for t in running:
            ids[t] = states[t]["id"]
        count = stack.guard_metric("workerguard_running_tasks")
        if len(running) == 2 and count == 2.0:
            seen_two = True
        if all(ti.get("state") in ("success", "failed") for ti in states.values()):
            break
        assert time.time() < deadline, stack.output("scheduler")[-3000:]
        time.sleep(0.5)
    assert all(ti["state"] == "success" for ti in states.values()), states
    assert seen_two, "workerguard never counted the two running tasks"

    # Off one grace after the last task ended (and the process is gone), not before.
    first_start = min(wall(ti["start_date"]) for ti in states.values())
    last_end = max(wall(ti["end_date"]) for ti in states.values())
    deadline = time.time() + GRACE_S + 20
    while len(agent.state()["timeline"]) < 2:
        assert time.time() < deadline, (agent.state(), stack.guard_log.read_text()[-3000:])
        time.sleep(0.5)
    watch.stop.set()
    watch.join()
    s = agent.state()
    timeline = [(s["started"] + t, on) for t, on in s["timeline"]]
    assert [on for _, on in timeline] == [True, False], timeline
    on_at, off_at = timeline[0][0], timeline[1][0]
    # Two runners, titled by the two task instance ids.
    assert len(watch.first) == 2, watch.first
    titled = min(watch.first.values())
    gone = max(watch.last.values())
    # On within 5 s of the first runner's title (a check is 0.5 s), never before the task.
    assert first_start - 0.5 <= on_at <= titled + 5, (first_start, titled, on_at)
    # Off one grace after the last runner was gone, not before: the watch last saw it
    # before it ended, and workerguard's grace counts from its first scan without it
    # (0.5 s: the stand-in's clock is read across one HTTP request).
    assert gone + GRACE_S - 0.5 <= off_at <= gone + GRACE_S + 5, (gone, off_at)
    assert off_at >= last_end + GRACE_S - 0.5, (last_end, off_at)

    # The log names exactly the task instances the API ran, by their ids.
    changed = [l for l in stack.guard_lines() if l.get("message") == "running tasks changed"]
    started = {i for l in changed for i in json.loads(l["started"].replace("'", '"'))}
    assert started == set(ids.values()), (started, ids)
    puts = [r for r in s["requests"] if r["method"] == "PUT"]
    assert all(r["status"] == 200 for r in puts), puts


# The SQLite form of the trace export in crates/airside-autoscale-sim/README.md (the
# PostgreSQL form reads the same columns of the same task_instance table).
EXPORT_SQLITE = """
SELECT (julianday(queued_dttm) - julianday((SELECT min(queued_dttm) FROM task_instance
         WHERE start_date IS NOT NULL AND end_date IS NOT NULL))) * 86400 AS queued_at_s,
       (julianday(end_date) - julianday(start_date)) * 86400 AS duration_s,
       coalesce(queue, 'default') AS queue,
       pool
FROM task_instance
WHERE queued_dttm IS NOT NULL AND start_date IS NOT NULL AND end_date IS NOT NULL
ORDER BY queued_dttm
"""


def test_the_metadata_export_is_a_trace_the_simulator_reads(guarded, tmp_path):
    """The simulator's trace export, run on real Airflow 3.3.2's metadata database after
    the DAG above ran, gives its two tasks with their run times, and the simulator takes
    the file."""
    import csv
    import sqlite3

    stack, _ = guarded
    with sqlite3.connect(stack.home / "airflow.db") as db:
        rows = db.execute(EXPORT_SQLITE).fetchall()
    by_duration = sorted(r[1] for r in rows)
    assert len(rows) >= 2, rows
    # The guarded DAG's tasks sleep 12 s and 24 s (its runner adds start-up time).
    assert any(12 <= d < 20 for d in by_duration) and any(24 <= d < 32 for d in by_duration), rows
    trace = tmp_path / "trace.csv"
    with open(trace, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["queued_at_s", "duration_s", "queue", "pool"])
        w.writerows(rows)
    subprocess.run(["cargo", "build", "-q", "--locked", "-p", "airside-autoscale-sim"], cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    done = subprocess.run([str(target / "debug" / "airside-autoscale-sim"), "--trace", str(trace),
                           "--policy", "deficit", "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)
    assert report["tasks"] == len(rows) and report["killed"] == 0, report
