"""The ECS task definitions in infra/modules/airflow-tasks/taskdefs/: generated from one source, accepted by the ECS
RegisterTaskDefinition input model that ships with botocore, rendered by the Terraform
module from the same files, and wired the way the sidecars need."""
import copy
import functools
import re
import subprocess
import sys

import botocore.session
import pytest
from botocore.validate import ParamValidator

from infra_lib import (
    MODULES,
    ROOT,
    SIDECARS,
    TASKDEFS,
    TASKS,
    airflow_containers,
    containers,
    env_of,
    locals_of,
    parse,
    placeholders,
    render,
    resources,
    taskdef,
)

SAMPLE = {
    "family_prefix": "airflow-test",
    "environment": "test",
    "region": "eu-west-1",
    "log_group": "/ecs/airflow-test",
    "execution_role_arn": "arn:aws:iam::${account_id}:role/airflow-test-exec",
    "task_role_arn": "arn:aws:iam::${account_id}:role/airflow-test-task",
    "cpu": "1024",
    "memory": "2048",
    "airflow_image": "apache/airflow:3.1.0",
    "dagsync_image": "registry.example/dagsync:1",
    "logship_image": "registry.example/logship:1",
    "metricship_image": "registry.example/metricship:1",
    "workerguard_image": "registry.example/workerguard:1",
    "dag_source": "s3://dags/test/",
    "dagsync_max_delete": "25%",
    "efs_file_system_id": "fs-0123abcd",
    "efs_access_point_id": "fsap-0123abcd",
    "firehose_stream": "airflow-test-task-logs",
    "remote_log_folder": "airflow-test-logs/airflow-task-logs/test",
    "worker_concurrency": "16",
    "min_workers": "0",
    "max_workers": "10",
    "execution_api_server_url": "http://web.internal:8080/execution/",
    "sql_alchemy_conn_secret_arn": "arn:aws:secretsmanager:eu-west-1:${account_id}:secret:db",
    "celery_broker_url_secret_arn": "arn:aws:secretsmanager:eu-west-1:${account_id}:secret:broker",
}


@pytest.fixture(scope="module")
def register_input_shape():
    model = botocore.session.get_session().get_service_model("ecs")
    return model.operation_model("RegisterTaskDefinition").input_shape


def validate(td, shape):
    return ParamValidator().validate(td, shape)


def test_taskdefs_are_what_the_generator_writes():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-taskdefs"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("kind", TASKS)
def test_validates_against_register_task_definition(kind, register_input_shape):
    for td in (taskdef(kind), render(kind, SAMPLE)):
        report = validate(td, register_input_shape)
        assert not report.has_errors(), report.generate_report()


def test_the_validator_rejects_a_broken_taskdef(register_input_shape):
    # Proves the check above has teeth: wrong types and unknown keys are reported.
    td = copy.deepcopy(taskdef("worker"))
    td["containerDefinitions"][0]["memory"] = "64"
    td["containerDefinitions"][0]["healthcheck"] = {}
    report = validate(td, register_input_shape).generate_report()
    assert "memory" in report and "healthcheck" in report


def test_terraform_supplies_exactly_the_templates_placeholders():
    tf = locals_of(MODULES / "airflow-tasks" / "main.tf")["template_vars"]
    supplied = set(re.findall(r"[{,]\s*(\w+)\s*=", tf.split("=>", 1)[1]))
    used = set().union(*(placeholders(k) for k in TASKS))
    assert used == supplied
    assert used == set(SAMPLE)


def test_terraform_renders_the_same_files():
    main = MODULES / "airflow-tasks" / "main.tf"
    locals_ = locals_of(main)
    # The module reads its templates from its own folder: nothing outside it.
    assert locals_["taskdef_dir"] == '${coalesce(var.taskdef_dir, "${path.module}/taskdefs")}'
    assert (main.parent / "taskdefs").resolve() == TASKDEFS.resolve()
    for tf in main.parent.glob("*.tf"):
        assert "path.module}/.." not in tf.read_text(), f"{tf} reaches outside its module"
    assert 'templatefile("${local.taskdef_dir}/${task}.json", local.template_vars[task])' in locals_["rendered"]
    ((_, _, td),) = resources("aws_ecs_task_definition", main)
    assert td["container_definitions"] == "${jsonencode(local.rendered[each.key].containerDefinitions)}"
    assert td["family"] == "${var.name}-${each.key}"
    assert td["for_each"] == "${toset(local.tasks)}"
    assert td["network_mode"] == "${local.templates[each.key].networkMode}"
    for kind in TASKS:
        assert taskdef(kind)["family"] == "${family_prefix}-" + kind
    # The DAG volume is spelled out in HCL: it must match the templates' EFS volume.
    (efs_volume,) = [v for v in td["volume"] if v["name"] == "airflow-dags"]
    (efs,) = efs_volume["efs_volume_configuration"]
    for kind in TASKS:
        (json_volume,) = [v for v in taskdef(kind)["volumes"] if "efsVolumeConfiguration" in v]
        cfg = json_volume["efsVolumeConfiguration"]
        assert json_volume["name"] == "airflow-dags"
        assert cfg["transitEncryption"] == efs["transit_encryption"] == "ENABLED"
        assert cfg["authorizationConfig"]["iam"] == efs["authorization_config"][0]["iam"] == "ENABLED"
        assert cfg["authorizationConfig"]["accessPointId"] == "${efs_access_point_id}"
        assert "rootDirectory" not in cfg  # must be / (omitted) with an access point


EXPECTED_SIDECARS = {
    "web": {"dagsync"},
    "scheduler": {"dagsync", "logship", "metricship"},
    "worker": {"dagsync", "logship", "workerguard"},
}


@pytest.mark.parametrize("kind", TASKS)
def test_fargate_awsvpc(kind):
    td = taskdef(kind)
    assert td["networkMode"] == "awsvpc"
    assert td["requiresCompatibilities"] == ["FARGATE"]
    assert td["taskRoleArn"] == "${task_role_arn}" and td["executionRoleArn"] == "${execution_role_arn}"


@pytest.mark.parametrize("kind", TASKS)
def test_each_task_has_its_sidecars(kind):
    td = taskdef(kind)
    assert set(containers(td)) & set(SIDECARS) == EXPECTED_SIDECARS[kind]
    assert airflow_containers(td)


@pytest.mark.parametrize("kind", TASKS)
def test_airflow_waits_for_its_sidecars(kind):
    td = taskdef(kind)
    for airflow in airflow_containers(td):
        depends = {d["containerName"]: d["condition"] for d in airflow["dependsOn"]}
        assert depends.pop("dagsync") == "HEALTHY", "Airflow must not start on an empty DAG folder"
        if "logship" in EXPECTED_SIDECARS[kind]:
            assert depends.pop("logship") == "START", "logship must start first and stop last"
        if "metricship" in EXPECTED_SIDECARS[kind]:
            assert depends.pop("metricship") == "START"
        if "workerguard" in EXPECTED_SIDECARS[kind]:
            assert depends.pop("workerguard") == "START", "workerguard watches from the first task on"
        assert depends == {}
        # Time for dagsync's first sync before ECS gives up (Fargate allows up to 120 s).
        assert 60 <= airflow["startTimeout"] <= 120


@pytest.mark.parametrize("kind", TASKS)
def test_sidecar_container_hardening(kind):
    for name, c in containers(taskdef(kind)).items():
        if name not in SIDECARS:
            continue
        assert c["image"] == "${" + name + "_image}"
        # Sidecars never take Airflow down with them (an unhealthy essential container
        # gets the task replaced); crashes are restarted in place instead.
        assert c["essential"] is False
        assert c["restartPolicy"]["enabled"] is True
        assert c["readonlyRootFilesystem"] is True
        uid, gid = c["user"].split(":")
        assert uid.isdigit() and gid.isdigit() and int(uid) != 0, "numeric, non-root user"
        assert c["linuxParameters"]["capabilities"]["drop"] == ["ALL"]
        assert "privileged" not in c or c["privileged"] is False
        # Health check: the binary's own subcommand, exec form (the image has no shell).
        hc = c["healthCheck"]
        assert hc["command"] == ["CMD", f"/usr/local/bin/{name}", "healthcheck"]
        assert not any("CMD-SHELL" in part or "sh" == part for part in hc["command"])
        assert hc["timeout"] < hc["interval"]
        # Small: the sidecars leave the task's CPU and memory to Airflow.
        assert c["cpu"] <= 256 and c["memory"] <= 256 and c["memoryReservation"] <= c["memory"]
        # awslogs, one stream prefix per container.
        log = c["logConfiguration"]
        assert log["logDriver"] == "awslogs"
        assert log["options"] == {
            "awslogs-group": "${log_group}",
            "awslogs-region": "${region}",
            "awslogs-stream-prefix": name,
        }


@pytest.mark.parametrize("kind", TASKS)
def test_sidecars_fit_the_smallest_fargate_task(kind):
    sidecars = [c for n, c in containers(taskdef(kind)).items() if n in SIDECARS]
    assert sum(c["cpu"] for c in sidecars) <= 256
    assert sum(c["memory"] for c in sidecars) <= 256


def _seconds(text):
    m = re.fullmatch(r"(\d+)s", text)
    assert m, text
    return int(m.group(1))


DRAIN_VARIABLES = {
    "dagsync": "DAGSYNC_DRAIN_TIMEOUT",
    "logship": "LOGSHIP_DRAIN_TIMEOUT",
    "metricship": "METRICSHIP_DRAIN_TIMEOUT",
    "workerguard": "WORKERGUARD_DRAIN_TIMEOUT",
}


@pytest.mark.parametrize("kind", TASKS)
def test_stop_timeouts_cover_the_drains(kind):
    cs = containers(taskdef(kind))
    for c in cs.values():
        assert 2 <= c["stopTimeout"] <= 120  # Fargate's range
    for name, variable in DRAIN_VARIABLES.items():
        if name in cs:
            # Set explicitly, so the daemon's own default cannot outgrow the stopTimeout.
            drain = _seconds(env_of(cs[name])[variable])
            assert cs[name]["stopTimeout"] >= drain + 5, f"{name}: SIGKILL before its drain ends"
    if "logship" in cs:
        assert cs["logship"]["stopTimeout"] >= 30


@pytest.mark.parametrize("kind", TASKS)
def test_sidecar_settings_are_the_daemons_own_variables(kind):
    """Every variable a sidecar gets is one its CLI reads (a typo would be ignored): asked
    of the built binary's own --help, which lists each flag's variable."""
    for name, c in containers(taskdef(kind)).items():
        if name not in SIDECARS:
            continue
        for variable in env_of(c):
            assert variable in _variables_read(name), f"{name} does not read {variable}"


@functools.cache
def _variables_read(daemon):
    binary = ROOT / "dist" / daemon
    assert binary.exists(), f"{binary} not found: run scripts/build-static first (scripts/test does)"
    names = set()
    for args in (["--help"], ["healthcheck", "--help"]):
        out = subprocess.run([binary, *args], capture_output=True, text=True, check=True).stdout
        names |= set(re.findall(r"\[env: ([A-Z0-9_]+)=", out))
    assert names, f"{daemon} --help lists no environment variables"
    return names


@pytest.mark.parametrize("kind", TASKS)
def test_volumes_and_mount_points(kind):
    td = taskdef(kind)
    volumes = {v["name"]: v for v in td["volumes"]}
    cs = containers(td)
    mounts = {n: {m["containerPath"]: m for m in c.get("mountPoints", [])} for n, c in cs.items()}
    for c in cs.values():
        for m in c.get("mountPoints", []):
            assert m["sourceVolume"] in volumes
    # dagsync is the only writer of the DAG folder; Airflow reads it.
    dags = mounts["dagsync"]["/opt/airflow/dags"]
    assert dags["sourceVolume"] == "airflow-dags" and dags["readOnly"] is False
    assert env_of(cs["dagsync"])["DAGSYNC_DEST"] == "/opt/airflow/dags"
    for airflow in airflow_containers(td):
        m = mounts[airflow["name"]]["/opt/airflow/dags"]
        assert m["sourceVolume"] == "airflow-dags" and m["readOnly"] is True
    if "logship" in cs:
        logs = mounts["logship"]["/opt/airflow/logs"]
        assert logs["sourceVolume"] == "airflow-logs" and logs["readOnly"] is True
        state_dir = env_of(cs["logship"])["LOGSHIP_STATE_DIR"]
        state = mounts["logship"][state_dir]
        assert state["readOnly"] is False
        # The state volume is task-scoped and shared with nothing else.
        assert "efsVolumeConfiguration" not in volumes[state["sourceVolume"]]
        users = [n for n, ms in mounts.items() if any(m["sourceVolume"] == state["sourceVolume"] for m in ms.values())]
        assert users == ["logship"]
        for airflow in airflow_containers(td):
            m = mounts[airflow["name"]]["/opt/airflow/logs"]
            assert m["sourceVolume"] == "airflow-logs" and m["readOnly"] is False
        assert env_of(cs["logship"])["LOGSHIP_PATH"] == "/opt/airflow/logs/**/*.log"
        assert env_of(cs["logship"])["LOGSHIP_OUTPUT"] == (
            "firehose:${firehose_stream},airflow-s3://${remote_log_folder}"
        )
        assert env_of(cs["logship"])["LOGSHIP_AIRFLOW_LOG_FOLDER"] == "/opt/airflow/logs"
    else:
        assert "airflow-logs" not in volumes


@pytest.mark.parametrize("kind", TASKS)
def test_logship_is_the_only_uploader_of_task_logs_and_the_api_server_reads_them(kind):
    """Airflow's own uploader is off wherever task logs are written (workers, scheduler,
    dag-processor, triggerer), and on only for the API server, which reads the layout
    logship writes at the same place."""
    for airflow in airflow_containers(taskdef(kind)):
        env = env_of(airflow)
        if airflow["command"] == ["api-server"]:
            assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "True"
            assert env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"] == "s3://${remote_log_folder}"
            assert env["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"]
        else:
            assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "False", airflow["name"]
    commands = {tuple(a["command"]) for a in airflow_containers(taskdef(kind))}
    if kind == "scheduler":
        assert ("triggerer",) in commands


def test_scheduler_sends_statsd_to_metricship():
    cs = containers(taskdef("scheduler"))
    listen = env_of(cs["metricship"])["METRICSHIP_STATSD_ADDR"]
    host, port = listen.rsplit(":", 1)
    for airflow in airflow_containers(taskdef("scheduler")):
        env = env_of(airflow)
        assert env["AIRFLOW__METRICS__STATSD_ON"] == "True"
        assert env["AIRFLOW__METRICS__STATSD_HOST"] == host
        assert env["AIRFLOW__METRICS__STATSD_PORT"] == port
        assert env["AIRFLOW__METRICS__STATSD_PREFIX"] == "airflow"
    scheduler = cs["airflow-scheduler"]
    assert scheduler["command"] == ["scheduler"]


def test_metricship_and_workers_agree_on_concurrency_and_bounds():
    metricship = env_of(containers(taskdef("scheduler"))["metricship"])
    worker = env_of(containers(taskdef("worker"))["airflow-worker"])
    assert metricship["METRICSHIP_WORKER_CONCURRENCY"] == worker["AIRFLOW__CELERY__WORKER_CONCURRENCY"]
    assert metricship["METRICSHIP_NAMESPACE"] == "Airflow"
    assert (metricship["METRICSHIP_MIN_WORKERS"], metricship["METRICSHIP_MAX_WORKERS"]) == ("${min_workers}", "${max_workers}")
    # The example passes the autoscaling bounds to both sides.
    example = parse(ROOT / "infra" / "examples" / "prod" / "main.tf")["module"]
    calls = {k: v for m in example for k, v in m.items()}
    assert calls["airflow_tasks"]["max_workers"] == calls["worker_autoscaling"]["max_capacity"] == "${var.worker_max_count}"
    assert calls["airflow_tasks"]["min_workers"] == calls["worker_autoscaling"]["min_capacity"] == "${var.worker_min_count}"
    # The alarms select on the dimension metricship is told to publish.
    assert metricship["METRICSHIP_DIMENSIONS"] == "Environment=${environment}"
    assert calls["worker_autoscaling"]["metric_dimensions"] == {"Environment": "${var.environment}"}


@pytest.mark.parametrize("kind", TASKS)
def test_admin_addresses_are_loopback_and_distinct(kind):
    cs = containers(taskdef(kind))
    addrs = [v for n in SIDECARS if n in cs for k, v in env_of(cs[n]).items() if k.endswith("_ADMIN_ADDR")]
    assert len(addrs) == len(set(addrs)) == len(EXPECTED_SIDECARS[kind])
    assert all(a.startswith("127.0.0.1:") for a in addrs)


@pytest.mark.parametrize("kind", TASKS)
def test_dagsync_settings(kind):
    env = env_of(containers(taskdef(kind))["dagsync"])
    assert env["DAGSYNC_SOURCE"] == "${dag_source}"
    interval, jitter, staleness = (_seconds(env[k]) for k in ("DAGSYNC_INTERVAL", "DAGSYNC_JITTER", "DAGSYNC_MAX_STALENESS"))
    assert interval + jitter <= staleness


@pytest.mark.parametrize("kind", TASKS)
def test_secrets_come_from_arns_not_values(kind):
    for airflow in airflow_containers(taskdef(kind)):
        names = {s["name"] for s in airflow["secrets"]}
        assert names == {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL"}
        env = env_of(airflow)
        assert not names & set(env)


def test_render_taskdef_fills_every_placeholder_or_refuses(tmp_path, register_input_shape):
    import json

    script = str(ROOT / "scripts" / "render-taskdef")
    values = tmp_path / "values.json"
    partial = dict(SAMPLE)
    del partial["firehose_stream"]
    values.write_text(json.dumps(partial))
    refused = subprocess.run([sys.executable, script, "worker", str(values)], capture_output=True, text=True)
    assert refused.returncode == 2 and "firehose_stream" in refused.stderr and refused.stdout == ""
    values.write_text(json.dumps(SAMPLE))
    for kind in TASKS:
        done = subprocess.run([sys.executable, script, kind, str(values)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        td = json.loads(done.stdout)
        assert td == render(kind, SAMPLE)
        assert not validate(td, register_input_shape).has_errors()


def _daemon_binary(name):
    for directory in (ROOT / "dist", ROOT / "target" / "debug", ROOT / "target" / "x86_64-unknown-linux-gnu" / "release"):
        if (directory / name).is_file():
            return directory / name
    pytest.fail(f"no {name} binary: run `DAEMONS={name} scripts/build-static` (scripts/test does)")


@pytest.mark.parametrize("kind", TASKS)
def test_the_daemons_accept_their_task_definition_environment(kind):
    """Runs each sidecar's health check command with the rendered container environment,
    as ECS does: clap parses the daemon's whole environment there too, so a value the
    daemon would reject (exit 2, usage) fails here instead of in a crash-looping task."""
    for name, c in containers(render(kind, SAMPLE)).items():
        if name not in SIDECARS:
            continue
        binary = _daemon_binary(name)
        command = c["healthCheck"]["command"][1:]
        assert command[0] == f"/usr/local/bin/{name}"
        env = {"PATH": "/usr/bin:/bin", **env_of(c)}
        result = subprocess.run([str(binary), *command[1:]], env=env, capture_output=True, text=True, timeout=30)
        assert "invalid value" not in result.stderr and result.returncode != 2, f"{name}: {result.stderr}"
        # Nothing listens on the admin port here (1: not ready); 0 only if something does.
        assert result.returncode in (0, 1), f"{name}: exit {result.returncode}: {result.stderr}"


def test_the_worker_shares_its_pid_namespace_and_shuts_celery_down_warm():
    """workerguard sees the worker's task processes (one PID namespace per task, Fargate
    1.4.0+), Celery alone gets the SIGTERM (dumb-init without setsid) so its warm shutdown
    runs, for the longest time Fargate allows."""
    td = taskdef("worker")
    assert td["pidMode"] == "task"
    assert "pidMode" not in taskdef("web") and "pidMode" not in taskdef("scheduler")
    cs = containers(td)
    worker = cs["airflow-worker"]
    assert env_of(worker)["DUMB_INIT_SETSID"] == "0"
    assert worker["stopTimeout"] == 120
    guard = cs["workerguard"]
    # ECS sets ECS_AGENT_URI itself; a value here would point workerguard elsewhere.
    assert "ECS_AGENT_URI" not in env_of(guard)
    assert guard["mountPoints"] == [] and guard["memoryReservation"] <= 16


@pytest.mark.parametrize("kind", TASKS)
def test_logship_is_the_firelens_router_where_it_runs(kind):
    cs = containers(taskdef(kind))
    routed = "logship" in cs
    if routed:
        router = cs["logship"]
        assert router["firelensConfiguration"]["type"] == "fluentbit"
        env = {e["name"]: e["value"] for e in router["environment"]}
        assert env["LOGSHIP_FORWARD"] == "true"
        # The buffer lives on the task-scoped state volume, as the checkpoints do.
        assert env["LOGSHIP_BUFFER_DIR"].startswith(env["LOGSHIP_STATE_DIR"] + "/")
    for name, c in cs.items():
        if name in SIDECARS:
            continue
        log = c["logConfiguration"]
        if routed:
            assert log["logDriver"] == "awsfirelens", name
            assert log["options"]["Name"] == "firehose"
            assert log["options"]["delivery_stream"] == "${firehose_stream}"
            # The router starts first and stops last.
            assert {"containerName": "logship", "condition": "START"} in c["dependsOn"]
        else:
            assert log["logDriver"] == "awslogs", name
