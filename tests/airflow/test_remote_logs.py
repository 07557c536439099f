"""Task logs in the Airflow UI from logship's airflow-s3 output, read by real Airflow.

Airflow 3.3.2 and apache-airflow-providers-amazon 9.39.0 (requirements-airflow.txt, in
.venv-airflow) run as the task definitions run them (airflow_stack.py): only the API
server has remote logging on, its own log folder stays empty and the workers' log server
is closed, so every log line the API returns came from S3, where logship put it. The
whole environment uses a log_filename_template of its own (CUSTOM_TEMPLATE); logship is
started with no flag about it.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
from collections import Counter
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pytest

from airflow_stack import AIRFLOW, CUSTOM_TEMPLATE, Stack, cleanup, events

@pytest.fixture(scope="module")
def stack():
    assert AIRFLOW.exists(), f"{AIRFLOW} is missing: run scripts/setup-venv-airflow (scripts/test does)"
    work = Path(tempfile.mkdtemp(prefix="airside-airflow-"))
    s = Stack(work, CUSTOM_TEMPLATE)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        api_files = [p for p in s.api_logs.rglob("*") if p.is_file()]
        cleanup(work)
    # Blind as on ECS: the API server never wrote a task log of its own.
    assert api_files == [], api_files


def ts(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def sources(log: list[dict]) -> list[str]:
    """The "Log message source details" the API lists first."""
    out, inside = [], False
    for e in log:
        ev = str(e.get("event", ""))
        if ev == "::group::Log message source details":
            inside = True
        elif ev == "::endgroup::" and inside:
            return out
        elif inside:
            out.append(ev)
    return out


def local_events(stack: Stack, rel: str) -> list[str]:
    """The events of a task log file the workers wrote (Airflow 3 JSON lines)."""
    text = (stack.worker_logs / rel).read_text()
    return [json.loads(line).get("event", "") for line in text.splitlines() if line.strip()]


def wait_for(what: str, check, timeout: float = 60, every: float = 1.0):
    deadline = time.time() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def test_a_finished_task_shows_exactly_its_file_from_s3_in_at_most_two_objects(stack):
    run = stack.trigger("quick_lines")
    stack.wait_state("quick_lines", run, "quick", {"success"})
    rel = f"quick_lines/{run}/quick/try-1.log"
    key = f"{stack.prefix}/{rel}"
    file_events = local_events(stack, rel)
    assert [e for e in file_events if e.startswith("quick line")] == [
        f"quick line {i}" for i in range(50)
    ]

    last = {}

    def shown():
        log = stack.log_events("quick_lines", run, "quick", 1)
        # What the file has, each line once, nothing else but the source details. The
        # UI orders lines by their timestamps (Airflow's _interleave_logs), and the
        # task's stdout is stamped when the supervisor reads it, so a line or two of the
        # task runner's own may come before it: the same as for Airflow's own upload.
        body = [str(e.get("event", "")) for e in log]
        start = body.index("::endgroup::") + 1 if "::endgroup::" in body else 0
        last["body"] = body[start:]
        same = Counter(body[start:]) == Counter(file_events)
        ordered = [e for e in body[start:] if e.startswith("quick line")] == [
            f"quick line {i}" for i in range(50)
        ]
        return log if same and ordered else None

    try:
        log = wait_for("the API to show the file exactly", shown, timeout=60)
    except AssertionError:
        import difflib

        diff = "\n".join(difflib.unified_diff(file_events, last.get("body", []), "file", "api", lineterm=""))
        raise AssertionError(f"the API does not show the file as it is:\n{diff}") from None
    srcs = sources(log)
    assert any(s.startswith(f"s3://{stack.bucket}/{key}") for s in srcs), srcs
    assert not any(str(stack.api_logs) in s for s in srcs), srcs
    # The custom template's path is the key: logship was told nothing of it.
    keys = wait_for(
        "compaction to at most two objects",
        lambda: (k := stack.keys(key)) and len(k) <= 2 and k,
        timeout=60,
    )
    assert all(k.startswith(key) for k in keys), keys


def test_mapped_retried_and_deferred_attempts_land_under_their_own_keys(stack):
    mapped = stack.trigger("mapped_lines")
    retried = stack.trigger("retried_lines")
    deferred = stack.trigger("deferred_lines")
    for n in range(3):
        stack.wait_state("mapped_lines", mapped, "one", {"success"}, map_index=n)
    stack.wait_state("retried_lines", retried, "flaky", {"success"})
    stack.wait_state("deferred_lines", deferred, "wait", {"success"})

    for n in range(3):
        got = wait_for(
            f"map index {n}",
            lambda: events(stack.log_events("mapped_lines", mapped, "one", 1, map_index=n), "mapped line"),
        )
        assert got == [f"mapped line for {n}"]
        assert stack.keys(f"{stack.prefix}/mapped_lines/{mapped}/one/{n}/try-1.log")

    for try_number in (1, 2):
        got = wait_for(
            f"attempt {try_number}",
            lambda: events(stack.log_events("retried_lines", retried, "flaky", try_number), "retried line"),
        )
        assert got == [f"retried line from try {try_number}"]

    # The trigger's log is a file of its own, `<attempt>.trigger.<id>.log`, which Airflow's
    # reader lists with the attempt's key.
    attempt = f"deferred_lines/{deferred}/wait/try-1.log"
    trigger_files = list((stack.worker_logs / attempt).parent.glob("try-1.log.trigger.*.log"))
    assert trigger_files, "the triggerer wrote no trigger log"
    trigger_rel = str(trigger_files[0].relative_to(stack.worker_logs))
    trigger_events = [e for e in local_events(stack, trigger_rel) if e]
    assert trigger_events

    def complete():
        log = stack.log_events("deferred_lines", deferred, "wait", 1)
        shown = [str(e.get("event", "")) for e in log]
        want = ["deferred line before", "deferred line after", *trigger_events]
        return all(w in shown for w in want) and log

    wait_for("the attempt with its trigger log", complete)
    assert any(".trigger." in k for k in stack.keys(f"{stack.prefix}/{attempt}"))


def test_a_running_task_is_live_and_survives_sigkill_of_its_worker(stack):
    run = stack.trigger("stream_lines", {"lines": 160, "interval": 0.5})
    stack.wait_state("stream_lines", run, "stream", {"running"})
    # Live: poll the API as the UI does and measure how old the newest line shown is.
    lags = []
    # What each poll showed besides the lines (Airflow's own messages: the keys it read,
    # "Could not read logs" for an object deleted between its listing and its read), to
    # tell a slow upload from a torn read if the lag check fails.
    polls = []
    started = time.time()
    while time.time() - started < 30:
        log = stack.log_events("stream_lines", run, "stream", 1)
        lines = [e for e in log if str(e.get("event", "")).startswith("stream line")]
        if lines:
            lags.append(time.time() - ts(lines[-1]))
            others = [str(e.get("event", ""))[:200] for e in log if e not in lines]
            polls.append((round(lags[-1], 1), len(lines), others[-3:]))
        time.sleep(1)
    assert len(lags) >= 20, lags
    steady = lags[5:]  # the first polls include the task's start-up
    print(
        f"\nlive view lag over {len(steady)} polls: p50 {statistics.median(steady):.1f}s, "
        f"max {max(steady):.1f}s (flush interval 5s)"
    )
    if max(steady) > 10:
        warnings = [l for l in stack.output("logship").splitlines() if '"WARN' in l or '"ERROR' in l]
        raise AssertionError(f"lag over 10 s: {steady}\npolls: {polls}\nlogship warnings: {warnings[-10:]}")

    # SIGKILL the whole worker at once: scheduler, its LocalExecutor workers and the task
    # (one process group here), and logship.
    ti = stack.task_instance("stream_lines", run, "stream")
    killed_at = time.time()
    stack.kill("scheduler")
    stack.kill("logship")
    if ti.get("pid"):
        try:
            os.kill(ti["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    log = stack.log_events("stream_lines", run, "stream", 1)
    shown = [e for e in log if str(e.get("event", "")).startswith("stream line")]
    numbers = [int(str(e["event"]).split()[-1]) for e in shown]
    assert numbers == list(range(len(numbers))), f"not in order or not once: {numbers}"
    assert numbers, "nothing shown after the kill"
    # Every line the task wrote at least 10 s before the kill (its file, which outlives
    # the processes here, says when) is shown.
    rel = f"stream_lines/{run}/stream/try-1.log"
    written = [
        json.loads(line)
        for line in (stack.worker_logs / rel).read_text().splitlines()
        if line.strip()
    ]
    due = [e["event"] for e in written if str(e.get("event", "")).startswith("stream line") and ts(e) <= killed_at - 10]
    assert due, "the task wrote nothing 10 s before the kill"
    assert [str(e["event"]) for e in shown[: len(due)]] == due
    print(f"after SIGKILL: {len(numbers)} lines shown, {len(due)} were due (written 10 s before the kill)")

    # The rest of the module's tests need a worker again.
    stack.restart_writers()
