"""DAGs whose task logs the remote-log tests read back through Airflow's API."""

import time
from datetime import datetime, timedelta

from airflow.sdk import BaseOperator, dag, task
from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

START = datetime(2026, 1, 1)


@dag(schedule=None, start_date=START, catchup=False, max_active_runs=4)
def stream_lines():
    """Logs a numbered line every `interval` seconds, `lines` times (dag run conf)."""

    @task
    def stream(**context):
        conf = context["dag_run"].conf or {}
        for i in range(int(conf.get("lines", 120))):
            print(f"stream line {i}", flush=True)
            time.sleep(float(conf.get("interval", 0.5)))

    stream()


@dag(schedule=None, start_date=START, catchup=False)
def quick_lines():
    """A normal run: 50 lines, then success."""

    @task
    def quick():
        for i in range(50):
            print(f"quick line {i}", flush=True)

    quick()


@dag(schedule=None, start_date=START, catchup=False)
def mapped_lines():
    """A mapped task: one log per map index."""

    @task
    def one(n: int):
        print(f"mapped line for {n}", flush=True)

    one.expand(n=[0, 1, 2])


@dag(schedule=None, start_date=START, catchup=False)
def retried_lines():
    """Fails its first try, succeeds the second: two attempts."""

    @task(retries=1, retry_delay=timedelta(seconds=0))
    def flaky(**context):
        ti = context["ti"]
        print(f"retried line from try {ti.try_number}", flush=True)
        if ti.try_number == 1:
            raise RuntimeError("first try fails on purpose")

    flaky()


class WaitABit(BaseOperator):
    """Defers to the triggerer for two seconds: its trigger writes a log of its own."""

    def execute(self, context):
        print("deferred line before", flush=True)
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=2)), method_name="done")

    def done(self, context, event=None):
        print("deferred line after", flush=True)


@dag(schedule=None, start_date=START, catchup=False)
def deferred_lines():
    WaitABit(task_id="wait")


stream_lines()
quick_lines()
mapped_lines()
retried_lines()
deferred_lines()
