# logship: ship examples/logs (Airflow 3 JSON and Airflow 2 text task logs, a chained
# traceback, a mapped task, non-ASCII text) through a Firehose stream whose destination
# is an S3 bucket, both in the emulator; append to a running task's log; stop with
# SIGTERM; then read back what arrived in S3.
ls_bucket=airside-demo-logs
ls_stream=airside-demo-task-logs
ls_logs="$DEMO_DIR/airflow/logs"
mkdir -p "$ls_logs" && cp -R examples/logs/. "$ls_logs/"
"$PY" - "$ls_bucket" "$ls_stream" <<'PYEOF'
import os, sys, boto3
bucket, stream = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
fh = boto3.client("firehose", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
s3.create_bucket(Bucket=bucket)
fh.create_delivery_stream(
    DeliveryStreamName=stream,
    DeliveryStreamType="DirectPut",
    ExtendedS3DestinationConfiguration={
        "RoleARN": "arn:aws:iam::123456789012:role/firehose",
        "BucketARN": f"arn:aws:s3:::{bucket}",
        "Prefix": "task-logs/",
    },
)
print(f"created Firehose stream {stream} delivering to s3://{bucket}/task-logs/")
PYEOF
ls_admin=127.0.0.1:19401
"$AIRSIDE_BIN/logship" --path "$ls_logs/**/*.log" --output "firehose:$ls_stream" \
  --state-dir "$DEMO_DIR/logship-state" --admin-addr "$ls_admin" --linger 300ms \
  --poll-interval 500ms --log-format text --log-level warn &
ls_pid=$!
pids+=($ls_pid)
for _ in $(seq 100); do "$AIRSIDE_BIN/logship" healthcheck --admin-addr "$ls_admin" 2>/dev/null && break; sleep 0.1; done
"$AIRSIDE_BIN/logship" healthcheck --admin-addr "$ls_admin"
echo "logship is ready (healthcheck passed); a running task appends to its log:"
ls_live="$ls_logs/dag_id=etl_orders/run_id=scheduled__2026-11-21T00:00:00+00:00/task_id=load/map_index=0/attempt=1.log"
echo '{"timestamp":"2026-11-21T00:07:12.000Z","level":"info","event":"appended while logship runs — ça marche","logger":"task"}' >> "$ls_live"
sleep 1.5
kill -TERM "$ls_pid"
wait "$ls_pid"
echo "logship stopped cleanly after SIGTERM (exit 0); checkpoints in $DEMO_DIR/logship-state/checkpoints.json"
"$PY" - "$ls_bucket" "$ls_logs" <<'PYEOF'
import collections, json, os, sys, boto3
bucket, logs = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="task-logs/").get("Contents", [])]
records = []
for k in keys:
    body = s3.get_object(Bucket=bucket, Key=k)["Body"].read().decode()
    records += [json.loads(line) for line in body.splitlines()]
lines = sum(open(os.path.join(r, f), encoding="utf-8").read().count("\n") for r, _, fs in os.walk(logs) for f in fs)
ids = {r["id"] for r in records}
per_task = collections.Counter((r["dag_id"], r["task_id"], r.get("map_index"), r["try_number"]) for r in records)
print(f"S3 received {len(records)} records ({len(ids)} distinct ids) in {len(keys)} objects from {lines} log lines")
for (dag, task, mi, tn), n in sorted(per_task.items(), key=str):
    print(f"  {dag}.{task}" + (f"[{mi}]" if mi is not None else "") + f" try {tn}: {n} records")
tb = next(r for r in records if "During handling" in r["message"])
print("a chained traceback arrived as one record:")
print("  " + json.dumps({k: tb[k] for k in ("id", "timestamp", "level", "dag_id", "task_id", "try_number", "offset")}, ensure_ascii=False))
print("  message: " + tb["message"].splitlines()[0] + f" ... ({len(tb['message'].splitlines())} lines) ... " + tb["message"].splitlines()[-1])
live = [r for r in records if "appended while logship runs" in r["message"]]
print("the appended line: " + json.dumps(live[0], ensure_ascii=False))
assert len(ids) == len(records), "duplicate records"
assert live and tb["level"] == "ERROR"
PYEOF
