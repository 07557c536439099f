"""Static checks of infra/: every file parses, the module layout, and the project's
rules (no NAT gateway, no ingress from the internet, no wildcard IAM action, the VPC
endpoints the sidecars need, least-privilege sidecar policies, Firehose delivery,
worker autoscaling). No terraform binary can run here, so the HCL is read with
python-hcl2 and the rules are checked on its parse."""
import re

import pytest

from infra_lib import (
    EXAMPLES,
    INFRA,
    MODULES,
    ROOT,
    as_list,
    blocks,
    containers,
    module_dirs,
    nested,
    parse,
    policy_statements,
    resources,
    root_dirs,
    taskdef,
    tf_files,
    variables,
)


def test_there_is_terraform_to_check():
    assert len(tf_files()) >= 20
    assert {p.name for p in module_dirs()} >= {
        "vpc-endpoints",
        "sidecar-iam",
        "log-delivery",
        "airflow-tasks",
        "worker-autoscaling",
    }
    assert (EXAMPLES / "prod" / "main.tf").exists()


@pytest.mark.parametrize("path", tf_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_tf_file_parses(path):
    parsed = parse(path)
    assert parsed, f"{path} parsed to nothing"


@pytest.mark.parametrize("directory", root_dirs(), ids=lambda p: str(p.relative_to(INFRA)))
def test_module_layout(directory):
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
        assert (directory / name).is_file(), f"{directory.relative_to(ROOT)} lacks {name}"
    versions = parse(directory / "versions.tf")["terraform"][0]
    assert "required_version" in versions
    aws = versions["required_providers"][0]["aws"]
    assert aws["source"] == "hashicorp/aws" and aws["version"]


@pytest.mark.parametrize("directory", root_dirs(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_variable_is_typed_and_described(directory):
    found = 0
    for path in sorted(directory.glob("*.tf")):
        for name, body in variables(path).items():
            found += 1
            assert path.name == "variables.tf", f"variable {name} declared in {path.name}"
            assert body.get("type"), f"{directory.name}: variable {name} has no type"
            description = body.get("description", "")
            assert len(description) >= 15, f"{directory.name}: variable {name} is not described"
    assert found > 0


@pytest.mark.parametrize("directory", root_dirs(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_output_is_described(directory):
    for entry in parse(directory / "outputs.tf").get("output", []):
        for name, body in entry.items():
            assert body.get("description"), f"{directory.name}: output {name} is not described"


def test_every_module_called_by_the_example_exists_and_gets_only_declared_inputs():
    example = EXAMPLES / "prod" / "main.tf"
    calls = {}
    for entry in parse(example).get("module", []):
        calls.update(entry)
    assert {c["source"] for c in calls.values()} == {f"../../modules/{p.name}" for p in module_dirs()}
    for name, call in calls.items():
        module = (example.parent / call["source"]).resolve()
        declared = variables(module / "variables.tf")
        passed = {k for k in call if k not in ("source", "version", "depends_on", "providers")}
        assert passed <= set(declared), f"module {name} gets undeclared inputs {passed - set(declared)}"
        required = {k for k, v in declared.items() if "default" not in v}
        assert required <= passed, f"module {name} misses required inputs {required - passed}"


# --- the rules --------------------------------------------------------------------------


def test_no_nat_gateway():
    kinds = {t for _, t, _, _ in blocks("resource")}
    assert "aws_nat_gateway" not in kinds
    assert "aws_internet_gateway" not in kinds
    for path in tf_files():
        assert "nat_gateway" not in path.read_text(), f"{path} mentions a NAT gateway"


OPEN_CIDRS = {"0.0.0.0/0", "::/0"}


def _cidrs(block):
    return {c for key in ("cidr_blocks", "ipv6_cidr_blocks", "cidr_ipv4", "cidr_ipv6") for c in as_list(block.get(key, []))}


def test_no_ingress_from_anywhere():
    checked = 0
    for _, _, body in resources("aws_security_group"):
        for rule in nested(body, "ingress"):
            checked += 1
            assert not _cidrs(rule) & OPEN_CIDRS
    for _, _, body in resources("aws_security_group_rule"):
        if body.get("type") == "ingress":
            checked += 1
            assert not _cidrs(body) & OPEN_CIDRS
    for _, name, body in resources("aws_vpc_security_group_ingress_rule"):
        checked += 1
        assert not _cidrs(body) & OPEN_CIDRS, name
        # Ingress is from named security groups only.
        assert body.get("referenced_security_group_id"), f"ingress rule {name} is not from a security group"
    assert checked >= 3
    for path in tf_files():
        for cidr in OPEN_CIDRS:
            assert cidr not in path.read_text(), f"{path} mentions {cidr}"


def test_no_wildcard_iam_action():
    statements = list(policy_statements())
    assert len(statements) >= 15
    for path, doc, st in statements:
        for action in as_list(st.get("actions", [])) + as_list(st.get("not_actions", [])):
            assert action != "*", f"{path.name}: {doc} allows every action"
            if st.get("effect", "Allow") == "Allow" and action.endswith(":*"):
                # The only service wildcard: the account root administering its own KMS key
                # (AWS's default key policy).
                assert (doc, action) == ("kms", "kms:*"), f"{doc} allows {action}"
    for path in tf_files():
        assert not re.search(r'"?Action"?\s*[:=]\s*"\*"', path.read_text())


# Actions that support no resource-level permission: "*" is the only valid resource.
NO_RESOURCE_LEVEL = {"cloudwatch:PutMetricData", "cloudwatch:ListMetrics", "ecr:GetAuthorizationToken"}


def test_modules_use_resource_star_only_where_iam_requires_it():
    for path, doc, st in policy_statements():
        if MODULES not in path.parents:
            continue
        if "*" in as_list(st.get("resources", [])):
            assert set(as_list(st["actions"])) <= NO_RESOURCE_LEVEL, f"{doc}/{st.get('sid')} on resource *"


def test_required_vpc_endpoints():
    module = MODULES / "vpc-endpoints"
    default = variables(module / "variables.tf")["interface_services"]["default"]
    assert set(default) >= {"monitoring", "kinesis-firehose", "logs", "sts", "ecr.api", "ecr.dkr", "ecs"}
    (_, _, s3), = resources("aws_vpc_endpoint", module / "main.tf")[:1]
    assert s3["vpc_endpoint_type"] == "Gateway" and s3["service_name"].endswith(".s3")
    assert s3["route_table_ids"] == "${var.route_table_ids}"
    interface = dict((n, b) for _, n, b in resources("aws_vpc_endpoint", module / "main.tf"))["interface"]
    assert interface["vpc_endpoint_type"] == "Interface"
    assert interface["private_dns_enabled"] is True
    assert "var.interface_services" in parse(module / "main.tf")["locals"][0]["interface_services"]
    # The example keeps the defaults (only adds to them) and uses the module.
    call = parse(EXAMPLES / "prod" / "main.tf")["module"]
    endpoints = next(m["endpoints"] for m in call if "endpoints" in m)
    assert "interface_services" not in endpoints


# --- sidecar IAM ------------------------------------------------------------------------

SIDECAR_IAM = MODULES / "sidecar-iam" / "main.tf"


def _statements(doc):
    return [st for _, d, st in policy_statements(SIDECAR_IAM) if d == doc]


def _with_action(doc, action):
    found = [st for st in _statements(doc) if action in as_list(st["actions"])]
    assert found, f"{doc} has no statement with {action}"
    return found


def _conditions(st):
    return {(c["test"], c["variable"]): as_list(c["values"]) for c in st.get("condition", [])}


def test_sidecar_policies_have_no_wildcards_at_all():
    for doc in ("dagsync", "logship", "metricship", "workerguard"):
        for st in _statements(doc):
            for action in as_list(st["actions"]):
                assert "*" not in action, f"{doc}: {action}"


def test_dagsync_lists_only_its_prefix():
    (st,) = _with_action("dagsync", "s3:ListBucket")
    assert as_list(st["resources"]) == ["${local.dag_bucket}"]
    assert _conditions(st) == {("StringLike", "s3:prefix"): ["${var.dag_prefix}*"]}


def test_dagsync_reads_only_below_its_prefix():
    (st,) = _with_action("dagsync", "s3:GetObject")
    assert as_list(st["actions"]) == ["s3:GetObject"]
    assert as_list(st["resources"]) == ["${local.dag_bucket}/${var.dag_prefix}*"]
    # An empty or rooted prefix would widen the grant to the whole bucket.
    validation = variables(SIDECAR_IAM.parent / "variables.tf")["dag_prefix"]["validation"][0]
    assert "regex" in validation["condition"]


def test_dagsync_writes_efs_only_through_the_access_point():
    (st,) = _with_action("dagsync", "elasticfilesystem:ClientWrite")
    assert _conditions(st) == {("StringEquals", "elasticfilesystem:AccessPointArn"): ["${var.efs_access_point_arn}"]}


def test_logship_puts_only_to_its_stream():
    (st,) = _with_action("logship", "firehose:PutRecordBatch")
    assert as_list(st["resources"]) == ["${var.firehose_stream_arn}"]
    puts = _with_action("logship", "s3:PutObject")
    (layout,) = [st for st in puts if "s3:DeleteObject" in as_list(st["actions"])]
    (records,) = [st for st in puts if st is not layout]
    assert as_list(records["resources"]) == ["arn:${local.partition}:s3:::${statement.value.bucket_name}/${statement.value.prefix}*"]
    # The airflow-s3 output: put and delete below the remote-log prefix, nothing else.
    assert as_list(layout["actions"]) == ["s3:PutObject", "s3:DeleteObject"]
    assert as_list(layout["resources"]) == ["${local.remote_logs}/${var.remote_logs.prefix}*"]
    (lst,) = _with_action("logship", "s3:ListBucket")
    assert ("StringLikeIfExists", "s3:prefix") in _conditions(lst)


# The IAM action each AWS SDK call of the daemons needs, from the Service Authorization
# Reference ("Actions, resources, and condition keys for Amazon S3": HeadObject is
# authorised by s3:GetObject, CreateMultipartUpload/UploadPart/CompleteMultipartUpload
# by s3:PutObject, HeadBucket and ListObjectsV2 by s3:ListBucket, DeleteObjects by
# s3:DeleteObject on each object it names (DeleteObjects API reference, Permissions:
# "To delete an object from a bucket, you must always specify the s3:DeleteObject
# permission"; there is no s3:DeleteObjects action); Firehose and
# CloudWatch actions are named as their API calls). The kind says which resource it
# applies to: an object below the prefix, the bucket, the stream, or "*" (CloudWatch
# has no resource-level permissions for these).
SDK_CALL_ACTIONS = {
    "head_object": ("s3:GetObject", "object"),
    "get_object": ("s3:GetObject", "object"),
    "put_object": ("s3:PutObject", "object"),
    "delete_object": ("s3:DeleteObject", "object"),
    "delete_objects": ("s3:DeleteObject", "object"),
    "create_multipart_upload": ("s3:PutObject", "object"),
    "upload_part": ("s3:PutObject", "object"),
    "complete_multipart_upload": ("s3:PutObject", "object"),
    "abort_multipart_upload": ("s3:AbortMultipartUpload", "object"),
    "list_parts": ("s3:ListMultipartUploadParts", "object"),
    "head_bucket": ("s3:ListBucket", "bucket"),
    "list_objects_v2": ("s3:ListBucket", "bucket"),
    "put_record_batch": ("firehose:PutRecordBatch", "stream"),
    "put_record": ("firehose:PutRecord", "stream"),
    "describe_delivery_stream": ("firehose:DescribeDeliveryStream", "stream"),
    "put_metric_data": ("cloudwatch:PutMetricData", "*"),
    "list_metrics": ("cloudwatch:ListMetrics", "*"),
}

# An SDK operation call: `client.<op>()` followed by its first setter (`.bucket(`,
# `.key(`, `.delivery_stream_name(`, `.namespace(`, ...) or `.send()`.
_SDK_CALL = re.compile(r"\.([a-z_0-9]+)\(\)\s*\.(bucket|key|delivery_stream_name|namespace|send|set_[a-z_]+|records|metric_data)\(")


def sdk_calls(daemon):
    calls = {}
    for path in sorted((ROOT / "crates" / daemon / "src").rglob("*.rs")):
        for m in _SDK_CALL.finditer(path.read_text()):
            if m.group(1) in ("into_paginator",):  # a paginator's builder step, not a call
                continue
            calls.setdefault(m.group(1), path.relative_to(ROOT))
    return calls


@pytest.mark.parametrize("daemon", ["dagsync", "logship", "metricship"])
def test_each_policy_allows_every_aws_call_its_daemon_makes(daemon):
    calls = sdk_calls(daemon)
    assert calls, f"no SDK call found in crates/{daemon}/src: is the pattern stale?"
    unknown = {c: str(p) for c, p in calls.items() if c not in SDK_CALL_ACTIONS}
    assert not unknown, f"{daemon} makes AWS calls this test does not know the IAM action of: {unknown}"
    for call, path in calls.items():
        action, kind = SDK_CALL_ACTIONS[call]
        granted = [st for st in _statements(daemon) if action in as_list(st["actions"])]
        assert granted, f"{daemon}'s policy lacks {action}, which {call} in {path} needs"
        resources_ = [r for st in granted for r in as_list(st["resources"])]
        if kind == "object":
            assert any(r.endswith("*") and "/" in r.split(":::")[-1] for r in resources_), (daemon, call, resources_)
        elif kind == "bucket":
            assert any("/" not in r.split(":::")[-1] for r in resources_), (daemon, call, resources_)
        elif kind == "stream":
            assert resources_ == ["${var.firehose_stream_arn}"], (daemon, call, resources_)


def test_logship_may_head_only_its_own_objects():
    (st,) = _with_action("logship", "s3:GetObject")
    assert as_list(st["resources"]) == ["arn:${local.partition}:s3:::${statement.value.bucket_name}/${statement.value.prefix}*"]


def test_metricship_puts_only_in_its_namespace():
    (st,) = _with_action("metricship", "cloudwatch:PutMetricData")
    assert _conditions(st) == {("StringEquals", "cloudwatch:namespace"): ["${var.metrics_namespace}"]}
    default = variables(SIDECAR_IAM.parent / "variables.tf")["metrics_namespace"]["default"]
    assert default == "Airflow"


def test_kms_only_on_named_keys():
    found = 0
    for path, doc, st in policy_statements():
        actions = as_list(st["actions"])
        if doc == "kms" or not any(a.startswith("kms:") for a in actions):
            continue  # the example's key policy: "*" there is the key itself
        found += 1
        resources_ = as_list(st["resources"])
        assert resources_ and all("var." in r for r in resources_), f"{path.name}: {doc} kms on {resources_}"
        assert "*" not in resources_
        assert ("StringEquals", "kms:ViaService") in _conditions(st), f"{doc}: kms not bound to a service"
    assert found >= 4


def test_the_api_server_may_only_list_and_read_the_task_logs():
    (lst,) = _with_action("airflow_log_reader", "s3:ListBucket")
    assert as_list(lst["resources"]) == ["${local.remote_logs}"]
    assert _conditions(lst) == {("StringLike", "s3:prefix"): ["${var.remote_logs.prefix}*"]}
    (get,) = _with_action("airflow_log_reader", "s3:GetObject")
    assert as_list(get["resources"]) == ["${local.remote_logs}/${var.remote_logs.prefix}*"]
    actions = {a for _, doc, st in policy_statements() if doc == "airflow_log_reader" for a in as_list(st["actions"])}
    assert actions == {"s3:ListBucket", "s3:GetObject", "kms:Decrypt"}


def test_task_roles_get_exactly_their_sidecars_policies():
    main = MODULES / "airflow-tasks" / "main.tf"
    policies = main.read_text()
    block = re.search(r"sidecar_policies = \{(.*?)\n  \}", policies, re.S).group(1)
    got = {
        task: set(re.findall(r"(\w+) = var\.\w+_policy_arn", body))
        for task, body in re.findall(r"(\w+)\s*=\s*\{([^}]*)\}", block)
    }
    assert got == {
        "web": {"dagsync", "log_reader"},
        "scheduler": {"dagsync", "logship", "metricship"},
        "worker": {"dagsync", "logship", "workerguard"},
    }


def test_workerguard_protects_only_its_clusters_tasks():
    """ecs:UpdateTaskProtection and ecs:GetTaskProtection (what the ECS agent calls with
    the task role for workerguard, and all it calls), on the cluster's tasks only."""
    (st,) = _statements("workerguard")
    assert sorted(as_list(st["actions"])) == ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"]
    (resource,) = as_list(st["resources"])
    assert resource.endswith(":task/${var.ecs_cluster_name}/*"), resource
    assert "${data.aws_caller_identity.current.account_id}" in resource
    # The agent is its only contact: no AWS SDK call in the crate.
    assert sdk_calls("workerguard") == {}


def test_roles_trust_only_this_accounts_service():
    for path, doc, st in policy_statements():
        if "sts:AssumeRole" in as_list(st["actions"]):
            assert ("StringEquals", "aws:SourceAccount") in _conditions(st), f"{path.name}: {doc}"


# --- Firehose ---------------------------------------------------------------------------


def test_firehose_delivery_stream():
    ((_, _, stream),) = resources("aws_kinesis_firehose_delivery_stream")
    assert stream["destination"] == "extended_s3"
    (sse,) = stream["server_side_encryption"]
    assert sse["enabled"] is True and sse["key_type"] == "CUSTOMER_MANAGED_CMK"
    (s3,) = stream["extended_s3_configuration"]
    assert s3["buffering_size"] == "${var.buffering_size}"
    assert s3["buffering_interval"] == "${var.buffering_interval}"
    assert s3["compression_format"] == "GZIP"
    assert s3["kms_key_arn"] == "${var.kms_key_arn}"
    assert s3["prefix"].startswith("${var.prefix}") and "local.time_partition" in s3["prefix"]
    assert s3["error_output_prefix"].startswith("${var.error_prefix}!{firehose:error-output-type}/")
    assert s3["cloudwatch_logging_options"][0]["enabled"] is True
    partition = parse(MODULES / "log-delivery" / "main.tf")["locals"][0]["time_partition"]
    for unit in ("yyyy", "MM", "dd", "HH"):
        assert f"!{{timestamp:{unit}}}" in partition
    defaults = variables(MODULES / "log-delivery" / "variables.tf")
    assert 1 <= defaults["buffering_size"]["default"] <= 128
    assert 0 <= defaults["buffering_interval"]["default"] <= 900


# --- worker autoscaling -----------------------------------------------------------------

AUTOSCALING = MODULES / "worker-autoscaling" / "main.tf"


def test_scalable_target_zero_to_ten_by_variable():
    ((_, _, target),) = resources("aws_appautoscaling_target", AUTOSCALING)
    assert target["min_capacity"] == "${var.min_capacity}"
    assert target["max_capacity"] == "${var.max_capacity}"
    assert target["scalable_dimension"] == "ecs:service:DesiredCount"
    defaults = variables(AUTOSCALING.parent / "variables.tf")
    assert defaults["min_capacity"]["default"] == 0
    assert defaults["max_capacity"]["default"] == 10


def _alarms():
    return {name: body for _, name, body in resources("aws_cloudwatch_metric_alarm", AUTOSCALING)}


def _policies():
    return {name: body for _, name, body in resources("aws_appautoscaling_policy", AUTOSCALING)}


def test_alarms_use_metricships_aggregate_signal_never_a_per_task_metric():
    locals_ = parse(AUTOSCALING)["locals"][0]
    assert locals_["desired_workers"]["metric_name"] == "DesiredWorkers"
    assert locals_["desired_workers"]["namespace"] == "${var.namespace}"
    assert locals_["desired_workers"]["dimensions"] == "${var.metric_dimensions}"
    # The service-level count, not a per-task metric.
    assert locals_["service_tasks"]["dimensions"] == {"ClusterName": "${var.cluster_name}", "ServiceName": "${var.service_name}"}
    text = AUTOSCALING.read_text()
    for per_task in ("TaskId", "TaskArn", "CPUUtilization", "MemoryUtilization", "TaskDefinitionFamily"):
        assert per_task not in text
    alarms = _alarms()
    assert set(alarms) == {"worker_deficit", "worker_surplus"}
    for name, alarm in alarms.items():
        metrics = [q["metric"][0] for q in alarm["metric_query"] if "metric" in q]
        assert {m["metric_name"] for m in metrics} == {"${local.desired_workers.metric_name}", "${local.service_tasks.metric_name}"}
        (expression,) = [q for q in alarm["metric_query"] if "expression" in q]
        assert expression["return_data"] is True
        assert "FILL(running, 0)" in expression["expression"], "no data for a service at zero tasks must count as 0"


def test_scale_out_works_from_zero_tasks():
    alarm = _alarms()["worker_deficit"]
    policy = _policies()["scale_out"]
    assert alarm["alarm_actions"] == ["${aws_appautoscaling_policy.scale_out.arn}"]
    assert alarm["comparison_operator"] == "GreaterThanThreshold" and alarm["threshold"] == 0
    (expression,) = [q for q in alarm["metric_query"] if "expression" in q]
    assert expression["expression"] == "desired - FILL(running, 0)"
    assert policy["policy_type"] == "StepScaling"
    (config,) = policy["step_scaling_policy_configuration"]
    assert config["adjustment_type"] == "ChangeInCapacity"
    (steps,) = [d["step_adjustment"] for d in config["dynamic"]]
    assert steps["for_each"] == "${range(1, var.max_capacity + 1)}"
    (content,) = steps["content"]
    # Evaluate the step table for max_capacity = 10 the way Terraform would.
    table = []
    for k in range(1, 11):
        lower = 0 if k == 1 else k - 0.5
        upper = None if k == 10 else k + 0.5
        table.append((lower, upper, k))
    assert content["metric_interval_lower_bound"] == "${step_adjustment.value == 1 ? 0 : step_adjustment.value - 0.5}"
    assert content["metric_interval_upper_bound"] == "${step_adjustment.value == var.max_capacity ? null : step_adjustment.value + 0.5}"
    assert content["scaling_adjustment"] == "${step_adjustment.value}"
    # Contiguous from the threshold, open-ended at the top, positive adjustments only:
    # a deficit of d workers (from zero tasks: d = DesiredWorkers) adds d.
    assert table[0][0] == 0 and table[-1][1] is None
    for (_, upper, _), (lower, _, _) in zip(table, table[1:]):
        assert upper == lower
    for deficit in range(1, 15):
        (adjust,) = [a for lo, up, a in table if lo <= deficit and (up is None or deficit < up)]
        assert adjust == min(deficit, 10)


def test_missing_data_never_scales_in():
    alarms = _alarms()
    assert alarms["worker_surplus"]["alarm_actions"] == ["${aws_appautoscaling_policy.scale_in.arn}"]
    assert alarms["worker_surplus"]["treat_missing_data"] == "notBreaching"
    for alarm in alarms.values():
        assert alarm["treat_missing_data"] in ("notBreaching", "missing")
    (config,) = _policies()["scale_in"]["step_scaling_policy_configuration"]
    # Only the surplus that lasted the whole window is removed.
    assert config["metric_aggregation_type"] == "Minimum"
    (steps,) = [d["step_adjustment"] for d in config["dynamic"]]
    assert steps["for_each"] == "${range(1, var.scale_in_max_step + 1)}"
    (content,) = steps["content"]
    assert content["scaling_adjustment"] == "${-step_adjustment.value}"
    assert content["metric_interval_upper_bound"] == "${step_adjustment.value == var.scale_in_max_step ? null : step_adjustment.value + 0.5}"


def test_scale_in_is_fast_only_because_busy_workers_are_protected():
    """The shipped scale-in (1 x 60 s, the whole surplus at once) is the simulator's best
    setting that kills no task, and it is safe only because the worker task runs
    workerguard in a shared PID namespace with a role allowed to protect the task."""
    defaults = variables(AUTOSCALING.parent / "variables.tf")
    scale_out = defaults["scale_out_evaluation_periods"]["default"] * 60
    scale_in = defaults["scale_in_evaluation_periods"]["default"] * defaults["scale_in_period"]["default"]
    assert (scale_out, scale_in) == (120, 60)
    assert defaults["scale_in_max_step"]["default"] == 10
    worker = taskdef("worker")
    assert worker["pidMode"] == "task" and "workerguard" in containers(worker)
    main = (MODULES / "airflow-tasks" / "main.tf").read_text()
    assert "workerguard = var.workerguard_policy_arn" in main


def test_example_enables_container_insights_for_the_service_count():
    ((_, _, cluster),) = resources("aws_ecs_cluster")
    assert {"name": "containerInsights", "value": "enabled"} in cluster["setting"]


# --- secrets and account IDs ------------------------------------------------------------


def _packaging_files():
    for base in (INFRA, ROOT / "docker"):
        yield from (p for p in base.rglob("*") if p.is_file())


def test_no_account_ids_or_secrets():
    for path in _packaging_files():
        text = path.read_text()
        assert not re.search(r"(?<![\d.])\d{12}(?![\d.])", text), f"{path} holds what looks like an account ID"
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), f"{path} holds an access key"
        assert "aws_secret_access_key" not in text.lower()


def test_for_each_keys_are_known_at_plan_time():
    """for_each over IDs or ARNs passed in by the caller fails to plan when the caller
    creates them in the same apply (unknown keys); count over their length does not.
    The example's own subnet list comes from variables, so it may key a for_each."""
    for path in tf_files():
        for _, rtype, name, body in blocks("resource", path):
            for_each = body.get("for_each", "")
            if MODULES in path.parents:
                assert not re.search(r"var\.\w*_(ids|arns)\b", str(for_each)), f"{path.name}: {rtype}.{name}"
            assert not re.search(r"\b(aws_|module\.)\w*\.\w+\.(id|arn)\b", str(for_each)), f"{path.name}: {rtype}.{name}"


def test_dagsync_decrypts_kms_encrypted_dags_with_the_named_keys_through_s3_only():
    """GetObject of an SSE-KMS object needs kms:Decrypt on its key (S3 user guide,
    "Specifying server-side encryption with AWS KMS": to download an object encrypted with
    a KMS key you need kms:Decrypt on that key). The grant names the DAG bucket's keys
    only, and only for use through S3."""
    (st,) = _with_action("dagsync", "kms:Decrypt")
    assert as_list(st["actions"]) == ["kms:Decrypt"]
    assert as_list(st["resources"]) == ["${var.dag_kms_key_arns}"]
    assert _conditions(st) == {("StringEquals", "kms:ViaService"): ["${local.s3_via_region}"]}
    assert "dag_kms_key_arns" in variables(SIDECAR_IAM.parent / "variables.tf")
