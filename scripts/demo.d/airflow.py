"""`scripts/demo --airflow`: real Apache Airflow 3.3.2 beside the emulator, with the sidecars.

dagsync keeps Airflow's DAG folder in step with an S3 prefix, logship ships the task logs
into Airflow's remote-log layout (the API server reads them from S3 only, as on ECS), and
metricship receives Airflow's StatsD. A DAG that logs a line every second is started, and
the script prints where to watch its log grow in the Airflow UI. It runs until Ctrl-C (or
for DEMO_AIRFLOW_SECONDS).

Run by scripts/demo, which starts moto and exports AWS_ENDPOINT_URL, AIRSIDE_BIN, DEMO_DIR.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "support"))

import boto3  # noqa: E402  (from .venv, with moto)
from airflow_stack import Stack  # noqa: E402

bin_dir = Path(os.environ["AIRSIDE_BIN"])
work = Path(os.environ["DEMO_DIR"]) / "airflow"
endpoint = os.environ["AWS_ENDPOINT_URL"]
port = int(os.environ.get("DEMO_AIRFLOW_PORT", "8080"))
statsd_port = 8125 + 10000

# The DAGs: the examples and a task that logs a line a second, in an S3 prefix.
s3 = boto3.client("s3", endpoint_url=endpoint)
s3.create_bucket(Bucket="airside-demo-airflow-dags")
sources = [*Path(ROOT / "examples" / "dags").rglob("*.py"), ROOT / "tests" / "airflow" / "dags" / "airside_logs.py"]
for path in sources:
    key = "dev/" + (path.name if path.name == "airside_logs.py" else str(path.relative_to(ROOT / "examples" / "dags")))
    s3.upload_file(str(path), "airside-demo-airflow-dags", key)
dags = work / "dags"
dags.mkdir(parents=True)

stack = Stack(
    work,
    dags=dags,
    api_port=port,
    writer_extra_env={
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(statsd_port),
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
    },
)
os.environ["LOGSHIP_BIN"] = str(bin_dir / "logship")
sidecar_env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSYNC_", "METRICSHIP_"))}
stack._spawn(
    "dagsync",
    [str(bin_dir / "dagsync"), "--source", "s3://airside-demo-airflow-dags/dev/", "--dest", str(dags),
     "--interval", "10s", "--jitter", "0s", "--admin-addr", "127.0.0.1:0"],
    sidecar_env,
)
stack._spawn(
    "metricship",
    [str(bin_dir / "metricship"), "--statsd-addr", f"127.0.0.1:{statsd_port}", "--admin-addr", "127.0.0.1:0",
     "--flush-interval", "10s", "--dimension", "Environment=demo"],
    sidecar_env,
)
deadline = time.time() + 60
while not (dags / "airside_logs.py").exists():
    if time.time() > deadline:
        sys.exit("dagsync did not sync the DAGs:\n" + stack.output("dagsync")[-2000:])
    time.sleep(0.5)
print(f"dagsync synced s3://airside-demo-airflow-dags/dev/ into {dags}", flush=True)

try:
    print("starting Airflow 3.3.2 (API server, scheduler, dag-processor, triggerer) and logship...", flush=True)
    stack.start(moto_endpoint=endpoint)
    run = stack.trigger("stream_lines", {"lines": 600, "interval": 1})
    stack.wait_state("stream_lines", run, "stream", {"running"})
    ui = f"http://127.0.0.1:{port}"
    print(
        f"""
Airflow UI: {ui}  (login: none; every user is an admin in this demo)
A task is logging a line a second for ten minutes. Watch its log grow:
  {ui}/dags/stream_lines/runs/{run}/tasks/stream
The API server reads task logs only from S3 (s3://{stack.bucket}/{stack.prefix}/, in the
emulator), where logship puts them every 5 s; its own log folder stays empty.
Trigger any DAG in the UI to see more. Ctrl-C stops everything.
Process logs: {work}/*.log""",
        flush=True,
    )
    limit = float(os.environ.get("DEMO_AIRFLOW_SECONDS", "0"))
    started = time.time()
    while not limit or time.time() - started < limit:
        time.sleep(1)
        dead = [n for n, p in stack.procs.items() if p.poll() is not None]
        if dead:
            sys.exit(f"stopped: {', '.join(dead)} exited (see {work}/<name>.log)")
    log = stack.log_events("stream_lines", run, "stream", 1)
    shown = [e for e in log if str(e.get("event", "")).startswith("stream line")]
    print(f"the API server shows {len(shown)} lines of the running task, read from S3", flush=True)
    if not shown:
        sys.exit("no line of the running task reached the UI")
except KeyboardInterrupt:
    pass
finally:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stack.stop()
