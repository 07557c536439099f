# logship as the task's FireLens log router: the ECS agent would write the router's
# configuration from the Airflow containers' awsfirelens options; the demo writes the
# same file. A stand-in for the scheduler container sends its stdout the way Docker's
# fluentd driver does (over the unix socket, with a traceback and a line split at
# 16 KiB), logship acknowledges from its disk buffer and ships to Firehose, and the
# records are read back from the stream's S3 destination.
fl_dir="$DEMO_DIR/firelens"
mkdir -p "$fl_dir"
cat > "$fl_dir/fluent-bit.conf" <<CONF
[INPUT]
    Name forward
    unix_path /var/run/fluent.sock

[FILTER]
    Name record_modifier
    Match *
    Record ecs_cluster airside-demo
    Record ecs_task_definition airside-demo-scheduler:1

[OUTPUT]
    Name null
    Match firelens-healthcheck

[OUTPUT]
    Name firehose
    Match airflow-scheduler-firelens*
    region $AWS_REGION
    delivery_stream $ls_stream
CONF
fl_admin=127.0.0.1:19411
"$AIRSIDE_BIN/logship" --forward true --path "" --firelens-config "$fl_dir/fluent-bit.conf" \
  --forward-socket "$fl_dir/fluent.sock" --forward-listen "" --forward-health "" \
  --buffer-dir "$fl_dir/buffer" --state-dir "$fl_dir/state" --admin-addr "$fl_admin" \
  --linger 300ms --log-format text --log-level warn &
fl_pid=$!
pids+=($fl_pid)
for _ in $(seq 100); do "$AIRSIDE_BIN/logship" healthcheck --admin-addr "$fl_admin" 2>/dev/null && break; sleep 0.1; done
"$AIRSIDE_BIN/logship" healthcheck --admin-addr "$fl_admin"
echo "logship is the FireLens router (socket $fl_dir/fluent.sock); the scheduler container writes to stdout:"
"$PY" - "$fl_dir/fluent.sock" <<'PYEOF'
import socket, sys, time, msgpack
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
tag = "airflow-scheduler-firelens-0123456789abcdef"
def send(log, **extra):
    record = {"container_id": "4e1f", "container_name": "/airflow-scheduler", "source": "stdout", "log": log, **extra}
    sock.sendall(msgpack.packb([tag, int(time.time()), record]))
lines = [
    "[2026-11-21T00:00:01.000+0000] {scheduler_job_runner.py:950} INFO - Starting the scheduler",
    "[2026-11-21T00:00:02.000+0000] {dagbag.py:588} ERROR - Failed to import: /opt/airflow/dags/broken.py",
    "Traceback (most recent call last):",
    '  File "/opt/airflow/dags/broken.py", line 3, in <module>',
    "    import pandas_that_is_not_installed",
    "ModuleNotFoundError: No module named 'pandas_that_is_not_installed'",
    "[2026-11-21T00:00:03.000+0000] {scheduler_job_runner.py:1200} INFO - 3 tasks up for execution",
]
for l in lines:
    send(l)
long = "x" * 40000
for n, i in enumerate(range(0, len(long), 16384), 1):
    send(long[i:i + 16384], partial_message="true", partial_id="p1", partial_ordinal=str(n),
         partial_last="true" if i + 16384 >= len(long) else "false")
# A frame that asks for an ack: answered once the disk buffer holds it.
sock.sendall(msgpack.packb([tag, [[int(time.time()), {"source": "stdout", "container_name": "/airflow-scheduler", "log": "[2026-11-21T00:00:04.000+0000] {scheduler_job_runner.py:1300} INFO - acked line"}]], {"chunk": "demo-1"}]))
print("  sent", len(lines) + 2, "lines; ack:", msgpack.unpackb(sock.recv(64)))
sock.close()
PYEOF
sleep 1.5
kill -TERM "$fl_pid"
wait "$fl_pid"
echo "logship stopped cleanly after SIGTERM (exit 0); its buffer is $fl_dir/buffer"
"$PY" - "$ls_bucket" <<'PYEOF'
import json, os, sys, boto3
bucket = sys.argv[1]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
records = []
for o in s3.list_objects_v2(Bucket=bucket, Prefix="task-logs/").get("Contents", []):
    body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read().decode()
    records += [r for r in map(json.loads, body.splitlines()) if r.get("container_name") == "airflow-scheduler"]
print(f"Firehose delivered {len(records)} records of the scheduler container's stdout:")
for r in records:
    first = r["message"].splitlines()[0]
    print(f"  {r['timestamp']} {r.get('level', '-'):5} {first[:70]}" + (f" ... ({len(r['message'])} chars)" if len(r["message"]) > 70 else ""))
tb = next(r for r in records if "Traceback" in r["message"])
print("  the traceback is one record of", len(tb["message"].splitlines()), "lines; fields:",
      json.dumps({k: tb[k] for k in ("tag", "container_name", "stream", "ecs_cluster", "ecs_task_definition")}))
assert len(records) == 5, records
assert any(len(r["message"]) == 40000 for r in records), "the split line is whole again"
PYEOF
