# metricship: an Airflow-shaped StatsD stream in, the Celery autoscaling signal out.
# Sourced by scripts/demo (set -euo pipefail; AIRSIDE_BIN, PY, DEMO_DIR and the AWS_*
# variables pointing at the emulator are set; background pids go in `pids`).

ms_statsd=127.0.0.1:28125
ms_admin=127.0.0.1:29402
ms_log="$DEMO_DIR/metricship.log"

echo "starting metricship (StatsD on $ms_statsd, flush every 2s, namespace Airflow)"
"$AIRSIDE_BIN/metricship" \
  --statsd-addr "$ms_statsd" --admin-addr "$ms_admin" \
  --namespace Airflow --flush-interval 2s --freshness-window 10s \
  --worker-concurrency 16 --min-workers 0 --max-workers 10 \
  --log-format json 2>"$ms_log" &
ms_pid=$!
pids+=("$ms_pid")

for _ in $(seq 1 100); do
  "$AIRSIDE_BIN/metricship" healthcheck --admin-addr "$ms_admin" 2>/dev/null && break
  sleep 0.2
done
"$AIRSIDE_BIN/metricship" healthcheck --admin-addr "$ms_admin"
kill -0 "$ms_pid"   # ready, and it is this metricship that answered
echo "metricship is ready (CloudWatch checked with ListMetrics)"

echo "feeding an Airflow 3 scheduler's StatsD for 5s (legacy names on: the pool pair, both executor forms)"
"$PY" - "$ms_statsd" <<'EOF'
import random, socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
send = lambda line: s.sendto(line.encode(), (host, int(port)))
pools = {"default_pool": 30, "etl": 12}
end = time.time() + 5
while time.time() < end:
    send("airflow.scheduler_heartbeat:1|c")
    for pool, queued in pools.items():
        send(f"airflow.pool.queued_slots.{pool}:{queued}|g")
        send(f"airflow.pool.queued_slots:{queued}|g")   # tag-less Airflow 3 name, once per pool
        send(f"airflow.pool.open_slots.{pool}:{128 - queued}|g")
    for name, value in (("queued_tasks", 20), ("running_tasks", 50)):
        send(f"airflow.executor.{name}:{value}|g")
        send(f"airflow.executor.{name}.CeleryExecutor:{value}|g")
    for _ in range(20):
        send(f"airflow.dag.etl_daily.extract.duration:{random.randint(200, 4000)}|ms")
        send("airflow.ti_successes:1|c")
    send("airflow.dagbag_size:42|g")
    time.sleep(0.25)
EOF

sleep 3   # at least one 2s flush after the stream
echo "reading the autoscaling metrics back from the emulator's CloudWatch:"
"$PY" - <<'EOF'
import datetime, os, boto3
cw = boto3.client("cloudwatch", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
now = datetime.datetime.now(datetime.timezone.utc)
expected = {"QueueDepth": 42, "celery.queue_depth": 42, "TaskDemand": 70, "DesiredWorkers": 5}
queries = [
    {"Id": f"m{i}", "Label": name, "MetricStat": {"Metric": {"Namespace": "Airflow", "MetricName": name},
                                                  "Period": 60, "Stat": "Maximum"}}
    for i, name in enumerate(expected)
]
out = cw.get_metric_data(MetricDataQueries=queries, StartTime=now - datetime.timedelta(minutes=10),
                         EndTime=now + datetime.timedelta(minutes=1))
got = {r["Label"]: max(r["Values"]) if r["Values"] else None for r in out["MetricDataResults"]}
for name, want in expected.items():
    print(f"  Airflow/{name:<20} = {got[name]}   (expected {want})")
assert all(got[n] == w for n, w in expected.items()), f"unexpected values: {got}"
names = sorted({m["MetricName"] for m in cw.list_metrics(Namespace="Airflow")["Metrics"]})
print("  metric names in CloudWatch (allowlist only):", ", ".join(names))
assert "airflow_dagbag_size" not in names, "a metric outside the allowlist reached CloudWatch"
EOF

echo "the same signal on Prometheus (http://$ms_admin/metrics):"
"$PY" - "$ms_admin" <<'EOF'
import sys, urllib.request
body = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
keep = ("metricship_queue_depth", "metricship_task_demand", "metricship_desired_workers",
        "metricship_source_age_seconds", "metricship_lines_parsed_total", "metricship_lines_dropped_total",
        "airflow_pool_queued_slots{")
for line in body.splitlines():
    if line.startswith(keep):
        print("  " + line)
EOF

kill -TERM "$ms_pid"
wait "$ms_pid"
echo "metricship stopped cleanly after flushing its last interval (log: $ms_log)"
