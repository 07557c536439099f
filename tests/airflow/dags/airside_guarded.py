"""A DAG for workerguard's test: two tasks that sleep side by side, one longer."""

import time
from datetime import datetime

from airflow.sdk import dag, task


@dag(schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def guarded_sleep():
    """`short` and `long` run at once; `long` ends well after `short`."""

    @task
    def short():
        time.sleep(12)

    @task
    def long():
        time.sleep(24)

    short()
    long()


guarded_sleep()
