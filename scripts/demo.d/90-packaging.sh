# Packaging: render the three ECS task definitions from infra/modules/airflow-tasks/taskdefs/ (the same JSON the
# Terraform module renders) with scripts/render-taskdef, register them with the
# emulator's ECS API exactly as `aws ecs register-task-definition --cli-input-json`
# would, and read back the sidecar wiring ECS stored. Sourced by scripts/demo (set -e is
# on; $PY, $DEMO_DIR and AWS_* are set).

"$PY" - "$DEMO_DIR" <<'PY'
import json, os, subprocess, sys
import boto3

demo = sys.argv[1]
region = os.environ["AWS_REGION"]
account = boto3.client("sts", region_name=region).get_caller_identity()["Account"]  # the emulator's
values = {
    "family_prefix": "airflow-demo", "environment": "demo", "region": region,
    "log_group": "/ecs/airflow-demo",
    "execution_role_arn": f"arn:aws:iam::{account}:role/airflow-demo-exec",
    "task_role_arn": f"arn:aws:iam::{account}:role/airflow-demo-task",
    "cpu": "1024", "memory": "2048",
    "airflow_image": "apache/airflow:3.1.0",
    "dagsync_image": "airside/dagsync:demo", "logship_image": "airside/logship:demo",
    "metricship_image": "airside/metricship:demo",
    "workerguard_image": "airside/workerguard:demo",
    "dag_source": "s3://airflow-dags/demo/", "dagsync_max_delete": "25%",
    "efs_file_system_id": "fs-demo", "efs_access_point_id": "fsap-demo",
    "firehose_stream": "airflow-demo-task-logs",
    "remote_log_folder": "airflow-demo-logs/airflow-task-logs/dev",
    "worker_concurrency": "16", "min_workers": "0", "max_workers": "10",
    "execution_api_server_url": "http://airflow-web.demo.internal:8080/execution/",
    "sql_alchemy_conn_secret_arn": f"arn:aws:secretsmanager:{region}:{account}:secret:airflow-db",
    "celery_broker_url_secret_arn": f"arn:aws:secretsmanager:{region}:{account}:secret:airflow-broker",
}
with open(f"{demo}/taskdef-values.json", "w") as f:
    json.dump(values, f)

ecs = boto3.client("ecs", region_name=region)
for kind in ("web", "scheduler", "worker"):
    rendered = subprocess.run(
        ["scripts/render-taskdef", kind, f"{demo}/taskdef-values.json"],
        check=True, capture_output=True, text=True,
    ).stdout
    td = json.loads(rendered)
    # boto3 validates against the same RegisterTaskDefinition model the CLI uses.
    arn = ecs.register_task_definition(**td)["taskDefinition"]["taskDefinitionArn"]
    stored = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
    print(f"registered {arn.split('/')[-1]}  cpu={stored['cpu']} memory={stored['memory']}")
    for c in stored["containerDefinitions"]:
        waits = ", ".join(f"{d['containerName']} {d['condition']}" for d in c.get("dependsOn", []))
        health = " ".join(c["healthCheck"]["command"][1:]) if "healthCheck" in c else "-"
        root = "read-only root" if c.get("readonlyRootFilesystem") else "writable root"
        print(f"  {c['name']:22} user={c.get('user', '-'):12} {root:15} health: {health}")
        if waits:
            print(f"  {'':22} starts after: {waits}")
    dagsync_first = [d for c in stored["containerDefinitions"] for d in c.get("dependsOn", [])
                     if d == {"containerName": "dagsync", "condition": "HEALTHY"}]
    assert dagsync_first, f"{kind}: no container waits for dagsync HEALTHY"
PY
