"""Airflow's own uploader left on where tasks run, beside logship: the configuration the
task definitions do not ship, and what the README says of it. Airflow 3.3.2 uploads the
whole log to the attempt key when the task ends and empties the local file; logship then
deletes its own objects of that attempt, and the UI shows every line once."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from airflow_stack import AIRFLOW, Stack, cleanup


@pytest.fixture(scope="module")
def stack():
    assert AIRFLOW.exists(), f"{AIRFLOW} is missing: run scripts/setup-venv-airflow (scripts/test does)"
    work = Path(tempfile.mkdtemp(prefix="airside-airflow-upload-"))
    s = Stack(work, writers_upload=True)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        cleanup(work)


def test_every_line_once_when_airflow_uploads_too(stack):
    # The task runs for 8 s, longer than logship's 5 s flush interval (and its read
    # interval, which follows it when airflow-s3 is the only output), so that logship has
    # stored some of the log before Airflow uploads it: the case to show. A task shorter
    # than that may end before logship reads it; then Airflow's object is the only one,
    # which is right but shows nothing of logship (the first CI run after reads moved to
    # upload time failed on that race with the instant quick_lines task).
    run = stack.trigger("stream_lines", {"lines": 20, "interval": 0.4})
    stack.wait_state("stream_lines", run, "stream", {"success"})
    key = f"{stack.prefix}/dag_id=stream_lines/run_id={run}/task_id=stream/attempt=1.log"
    deadline = time.time() + 90
    while True:
        keys = stack.keys(key)
        log = stack.log_events("stream_lines", run, "stream", 1)
        body = [str(e.get("event", "")) for e in log]
        counts = Counter(e for e in body if e.startswith("stream line"))
        settled = [
            line
            for line in stack.logship_metrics().splitlines()
            if line.startswith("logship_airflow_compactions_total") and 'result="airflow_uploaded"' in line
        ]
        # logship saw the emptied file and deleted its own objects (which it may only
        # have uploaded after Airflow's upload, so this is waited for too); only
        # Airflow's object is left, and the view has each line once.
        if (
            settled
            and float(settled[0].rsplit(" ", 1)[1]) >= 1
            and keys == [key]
            and counts == Counter(f"stream line {i}" for i in range(20))
        ):
            break
        assert time.time() < deadline, f"{keys}\n{settled}\n{sorted(counts.items())[:5]}"
        time.sleep(1)
    # Airflow emptied the file after its upload: that is what logship saw.
    rel = f"dag_id=stream_lines/run_id={run}/task_id=stream/attempt=1.log"
    assert (stack.worker_logs / rel).stat().st_size == 0
