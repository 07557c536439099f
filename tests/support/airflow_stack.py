"""Real Airflow 3.3.2 (from .venv-airflow) beside moto, with logship shipping its task logs.

The layout is the one the task definitions ship: the writers (scheduler with the
LocalExecutor, dag-processor, triggerer) have remote logging off and write their task
logs to one folder that logship follows; the reader (the API server) has remote logging
on, pointed at moto's S3, and a log folder of its own that stays empty. The workers' log
server is not started (`--skip-serve-logs`) and the port the API server would call is
closed, so what the API shows of a task's log can only come from S3.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = ROOT / ".venv-airflow" / "bin" / "airflow"
MOTO_SERVER = ROOT / "tests" / "support" / "moto_server.py"
DAGS = ROOT / "tests" / "airflow" / "dags"

# A log_filename_template of a team's own: nothing in logship knows it.
CUSTOM_TEMPLATE = (
    "{{ ti.dag_id }}/{{ ti.run_id }}/{{ ti.task_id }}/"
    "{% if ti.map_index >= 0 %}{{ ti.map_index }}/{% endif %}"
    "try-{{ try_number|default(ti.try_number) }}.log"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logship_binary() -> Path:
    """dist/logship (what the image ships), or $LOGSHIP_BIN."""
    path = Path(os.environ.get("LOGSHIP_BIN", ROOT / "dist" / "logship"))
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run scripts/build-static (or set LOGSHIP_BIN)")
    return path


class Stack:
    """moto, Airflow's four processes and logship, in `work` (a temporary folder)."""

    def __init__(
        self,
        work: Path,
        template: str | None = None,
        dags: Path = DAGS,
        writer_extra_env: dict[str, str] | None = None,
        api_port: int | None = None,
        writers_upload: bool = False,
    ):
        self.work = work
        self.dags = dags
        self.writer_extra_env = writer_extra_env or {}
        # Airflow's own uploader on where tasks run too (a configuration the task
        # definitions do not ship; tested to show it still gives every line once).
        self.writers_upload = writers_upload
        self.procs: dict[str, subprocess.Popen] = {}
        self.home = work / "airflow"
        self.worker_logs = work / "worker-logs"
        self.api_logs = work / "api-logs"
        self.state = work / "logship-state"
        for d in (self.home, self.worker_logs, self.api_logs, self.state):
            d.mkdir(parents=True)
        self.template = template
        self.api_port = api_port or free_port()
        self.closed_port = free_port()  # nothing listens here: the workers' log server
        self.bucket = "airflow-logs"
        self.prefix = "remote"
        self._moto = None
        self.moto_endpoint = ""
        self._token = None

    # -- processes -----------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "wb")
        p = subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs[name] = p
        return p

    def output(self, name: str) -> str:
        path = self.work / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def base_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "AWS_", "LOGSHIP_"))
        }
        conn = {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": self.moto_endpoint, "region_name": "us-east-1"},
        }
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__PARALLELISM": "8",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home}/airflow.db",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.api_port}",
                "AIRFLOW__API_AUTH__JWT_SECRET": "airside-test-secret-not-for-production",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.closed_port),
                "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(conn),
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "NO_PROXY": "*",
            }
        )
        if self.template:
            env["AIRFLOW__LOGGING__LOG_FILENAME_TEMPLATE"] = self.template
        return env

    def writer_env(self) -> dict[str, str]:
        env = self.base_env()
        env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = str(self.worker_logs)
        env["AIRFLOW__LOGGING__REMOTE_LOGGING"] = "False"
        if self.writers_upload:
            env["AIRFLOW__LOGGING__REMOTE_LOGGING"] = "True"
            env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"] = f"s3://{self.bucket}/{self.prefix}"
            env["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"] = "aws_default"
        env.update(self.writer_extra_env)
        return env

    def reader_env(self) -> dict[str, str]:
        env = self.base_env()
        env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = str(self.api_logs)
        env["AIRFLOW__LOGGING__REMOTE_LOGGING"] = "True"
        env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"] = f"s3://{self.bucket}/{self.prefix}"
        env["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"] = "aws_default"
        return env

    def start(self, moto_endpoint: str | None = None) -> None:
        """Starts everything; with `moto_endpoint`, uses that emulator instead of its own."""
        if moto_endpoint:
            self.moto_endpoint = moto_endpoint
        else:
            self._start_moto()
        self._create_bucket()
        subprocess.run(
            [str(AIRFLOW), "db", "migrate"],
            env=self.writer_env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._spawn("api-server", [str(AIRFLOW), "api-server", "--port", str(self.api_port), "--host", "127.0.0.1"], self.reader_env())
        self._spawn("dag-processor", [str(AIRFLOW), "dag-processor"], self.writer_env())
        self._spawn("scheduler", self.scheduler_argv(), self.writer_env())
        self._spawn("triggerer", [str(AIRFLOW), "triggerer", "--skip-serve-logs"], self.writer_env())
        self.start_logship()
        self.wait_api()

    def scheduler_argv(self) -> list[str]:
        """How the scheduler (with the LocalExecutor, so its task processes) is started."""
        return [str(AIRFLOW), "scheduler", "--skip-serve-logs"]

    def start_logship(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LOGSHIP_"))}
        env.update(
            {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": self.moto_endpoint,
                "LOGSHIP_PATH": f"{self.worker_logs}/**/*.log",
                "LOGSHIP_AIRFLOW_LOG_FOLDER": str(self.worker_logs),
                "LOGSHIP_OUTPUT": f"airflow-s3://{self.bucket}/{self.prefix}",
                "LOGSHIP_STATE_DIR": str(self.state),
                "LOGSHIP_ADMIN_ADDR": "127.0.0.1:0",
                "LOGSHIP_LOG_FORMAT": "json",
                # Short enough that the tests see a finished attempt compacted.
                "LOGSHIP_AIRFLOW_COMPACT_AFTER": "10s",
            }
        )
        self._spawn("logship", [str(logship_binary())], env)

    def _start_moto(self) -> None:
        self._moto = subprocess.Popen(
            [sys.executable, str(MOTO_SERVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        port = int(self._moto.stdout.readline())
        self.moto_endpoint = f"http://127.0.0.1:{port}"

    def s3(self):
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.moto_endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def _create_bucket(self) -> None:
        self.s3().create_bucket(Bucket=self.bucket)

    def keys(self, prefix: str) -> list[str]:
        out = []
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def stop(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 20
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        if self._moto:
            self._moto.stdin.close()
            self._moto.wait(timeout=10)

    def logship_metrics(self) -> str:
        """logship's /metrics (its admin address is in its JSON log)."""
        for line in self.output("logship").splitlines():
            if '"admin server listening"' in line:
                addr = json.loads(line)["addr"]
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
            return r.read().decode()

    def restart_writers(self) -> None:
        """Starts the scheduler and logship again (after a kill)."""
        self._spawn("scheduler", self.scheduler_argv(), self.writer_env())
        self.start_logship()

    def kill(self, name: str) -> None:
        p = self.procs[name]
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()

    # -- the API -------------------------------------------------------------------
    def api(self, method: str, path: str, body=None, timeout: float = 30) -> dict:
        url = f"http://127.0.0.1:{self.api_port}{path}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"{}")

    def wait_api(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                self._token = self.api("GET", "/auth/token")["access_token"]
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.time() > deadline or self.procs["api-server"].poll() is not None:
                    raise RuntimeError("the API server did not start:\n" + self.output("api-server")[-4000:])
                time.sleep(1)

    def wait_dag(self, dag_id: str, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                self.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
                return
            except urllib.error.HTTPError as e:
                if e.code != 404 or time.time() > deadline:
                    raise
            time.sleep(1)

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        self.wait_dag(dag_id)
        run = self.api(
            "POST",
            f"/api/v2/dags/{dag_id}/dagRuns",
            {"logical_date": None, "conf": conf or {}},
        )
        return run["dag_run_id"]

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        if map_index >= 0:
            path += f"/{map_index}"
        return self.api("GET", path)

    def wait_state(self, dag_id, run_id, task_id, states, map_index=-1, timeout=180) -> dict:
        deadline = time.time() + timeout
        while True:
            try:
                ti = self.task_instance(dag_id, run_id, task_id, map_index)
                if ti.get("state") in states:
                    return ti
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
            if time.time() > deadline:
                raise AssertionError(
                    f"{dag_id}/{task_id} not in {states} after {timeout}s\n"
                    + self.output("scheduler")[-3000:]
                )
            time.sleep(0.5)

    def log_events(self, dag_id, run_id, task_id, try_number, map_index=-1) -> list[dict]:
        """The task log as the UI gets it: the API server's log endpoint, all pages."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}?full_content=true"
        if map_index >= 0:
            path += f"&map_index={map_index}"
        body = self.api("GET", path)
        return body.get("content", [])


def events(log: list[dict], prefix: str) -> list[str]:
    """The `event` texts of a log that start with `prefix`."""
    return [e.get("event", "") for e in log if str(e.get("event", "")).startswith(prefix)]


def cleanup(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
