# An Airflow 3 environment on ECS Fargate in a NAT-free VPC, with the airside sidecars:
# dagsync (S3 -> EFS DAGs), logship (task logs -> Firehose -> S3) and metricship
# (StatsD -> CloudWatch, driving the worker autoscaling). The VPC, the DAG bucket, the
# metadata database, the Celery broker and their secrets exist already.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

data "aws_vpc" "this" {
  id = var.vpc_id
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  dag_prefix = "${var.environment}/"
  # Task logs for the Airflow UI (logship's airflow-s3 output), beside Firehose's
  # deliveries in the logs bucket.
  remote_logs = { bucket_name = aws_s3_bucket.logs.id, prefix = "airflow-task-logs/${var.environment}/" }
}

# ---------------------------------------------------------------------------------------
# Encryption: one customer-managed key for the logs bucket, the Firehose stream, the
# container log groups and EFS.

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111:A key policy's resource "*" means this key only; the account-root statement is AWS's default key policy, without which the key becomes unmanageable.
  #checkov:skip=CKV_AWS_356:In a key policy, resource "*" is the key the policy is attached to.
  #checkov:skip=CKV_AWS_109:Key administration by the account root is AWS's default key policy; IAM policies in the account then decide who administers the key.
  statement {
    sid       = "AccountAdministersKey"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsEncrypts"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"]
    }
  }

  statement {
    sid       = "FirehoseEncryptsStream"
    actions   = ["kms:GenerateDataKey*", "kms:Decrypt", "kms:CreateGrant", "kms:DescribeKey"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["firehose.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_kms_key" "airflow" {
  description             = "${var.name}: logs bucket, Firehose stream, log groups, EFS"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "airflow" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.airflow.key_id
}

# ---------------------------------------------------------------------------------------
# Logs bucket: Firehose delivers the task logs logship ships.

resource "aws_s3_bucket" "logs" {
  #checkov:skip=CKV_AWS_18:This bucket is itself the log archive; access logs of it would need yet another bucket.
  #checkov:skip=CKV_AWS_144:Cross-region replication is a per-organisation disaster-recovery decision, not part of the example.
  #checkov:skip=CKV2_AWS_62:Nothing consumes object-created events of the log archive.
  bucket = var.log_bucket_name
}

resource "aws_s3_bucket_versioning" "logs" {
  bucket = aws_s3_bucket.logs.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.airflow.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "logs" {
  bucket                  = aws_s3_bucket.logs.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "logs" {
  bucket = aws_s3_bucket.logs.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id

  rule {
    id     = "expire-task-logs"
    status = "Enabled"

    filter {}

    transition {
      days          = 30
      storage_class = "STANDARD_IA"
    }

    expiration {
      days = 365
    }

    noncurrent_version_expiration {
      noncurrent_days = 30
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

data "aws_iam_policy_document" "logs_bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.logs.arn, "${aws_s3_bucket.logs.arn}/*"]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "logs" {
  bucket = aws_s3_bucket.logs.id
  policy = data.aws_iam_policy_document.logs_bucket.json
}

module "log_delivery" {
  source = "../../modules/log-delivery"

  name        = "${var.name}-task-logs"
  bucket_arn  = aws_s3_bucket.logs.arn
  kms_key_arn = aws_kms_key.airflow.arn
}

# ---------------------------------------------------------------------------------------
# Network: the tasks talk only to AWS endpoints, EFS, the database and the broker.

resource "aws_security_group" "tasks" {
  #checkov:skip=CKV2_AWS_5:Attached to the ECS services through module.services' security_group_ids (modules/airflow-services); this graph check does not follow module inputs.
  name_prefix = "${var.name}-tasks-"
  description = "Airflow tasks of ${var.name}"
  vpc_id      = var.vpc_id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_egress_rule" "tasks_to_endpoints" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "HTTPS to the interface endpoints"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = module.endpoints.security_group_id
}

resource "aws_vpc_security_group_egress_rule" "tasks_to_s3" {
  security_group_id = aws_security_group.tasks.id
  description       = "HTTPS to S3 through the gateway endpoint (DAGs, ECR image layers)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  prefix_list_id    = module.endpoints.s3_prefix_list_id
}

resource "aws_vpc_security_group_egress_rule" "tasks_to_efs" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "NFS to the DAG file system"
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
  referenced_security_group_id = module.dag_store.security_group_id
}

resource "aws_vpc_security_group_egress_rule" "tasks_to_backends" {
  for_each = { database = var.database_port, broker = var.broker_port }

  security_group_id = aws_security_group.tasks.id
  description       = "Airflow ${each.key} inside the VPC"
  ip_protocol       = "tcp"
  from_port         = each.value
  to_port           = each.value
  cidr_ipv4         = data.aws_vpc.this.cidr_block
}

resource "aws_vpc_security_group_egress_rule" "workers_to_web" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "Workers to the execution API of the web task"
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
  referenced_security_group_id = aws_security_group.tasks.id
}

resource "aws_vpc_security_group_ingress_rule" "web_from_tasks" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "Execution API from the workers"
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
  referenced_security_group_id = aws_security_group.tasks.id
}

resource "aws_vpc_security_group_ingress_rule" "web_from_clients" {
  count = length(var.web_client_security_group_ids)

  security_group_id            = aws_security_group.tasks.id
  description                  = "Airflow UI and API from a client security group"
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
  referenced_security_group_id = var.web_client_security_group_ids[count.index]
}

module "endpoints" {
  source = "../../modules/vpc-endpoints"

  name                          = var.name
  vpc_id                        = var.vpc_id
  subnet_ids                    = var.private_subnet_ids
  route_table_ids               = var.private_route_table_ids
  client_security_group_ids     = [aws_security_group.tasks.id]
  additional_interface_services = ["secretsmanager"]
}

# ---------------------------------------------------------------------------------------
# The shared DAG folder: EFS, written by dagsync through an access point as Airflow's
# uid (50000, gid 0), mounted with TLS and IAM authorisation.

module "dag_store" {
  source = "../../modules/dag-store"

  name                      = var.name
  vpc_id                    = var.vpc_id
  subnet_ids                = var.private_subnet_ids
  client_security_group_ids = [aws_security_group.tasks.id]
  kms_key_arn               = aws_kms_key.airflow.arn
}

# ---------------------------------------------------------------------------------------
# Sidecar permissions, task definitions, cluster and services, autoscaling.

module "sidecar_iam" {
  source = "../../modules/sidecar-iam"

  name                 = var.name
  dag_bucket_name      = var.dag_bucket_name
  dag_prefix           = local.dag_prefix
  dag_kms_key_arns     = var.dag_kms_key_arns
  efs_file_system_arn  = module.dag_store.file_system_arn
  efs_access_point_arn = module.dag_store.access_point_arn
  firehose_stream_arn  = module.log_delivery.stream_arn
  remote_logs          = local.remote_logs
  log_kms_key_arns     = [aws_kms_key.airflow.arn]
  metrics_namespace    = "Airflow"
  # The cluster module.services creates is named var.name (its output would be a cycle:
  # the services need the task definitions, which need these policies).
  ecs_cluster_name = var.name
}

module "airflow_tasks" {
  source = "../../modules/airflow-tasks"

  name                          = var.name
  environment                   = var.environment
  images                        = var.images
  ecr_repository_arns           = var.ecr_repository_arns
  dag_bucket_name               = var.dag_bucket_name
  dag_prefix                    = local.dag_prefix
  efs_file_system_id            = module.dag_store.file_system_id
  efs_access_point_id           = module.dag_store.access_point_id
  firehose_stream_name          = module.log_delivery.stream_name
  worker_concurrency            = var.worker_concurrency
  min_workers                   = var.worker_min_count
  max_workers                   = var.worker_max_count
  execution_api_server_url      = var.execution_api_server_url
  sql_alchemy_conn_secret_arn   = var.sql_alchemy_conn_secret_arn
  celery_broker_url_secret_arn  = var.celery_broker_url_secret_arn
  secrets_kms_key_arns          = var.secrets_kms_key_arns
  dagsync_policy_arn            = module.sidecar_iam.dagsync_policy_arn
  logship_policy_arn            = module.sidecar_iam.logship_policy_arn
  metricship_policy_arn         = module.sidecar_iam.metricship_policy_arn
  workerguard_policy_arn        = module.sidecar_iam.workerguard_policy_arn
  airflow_log_reader_policy_arn = module.sidecar_iam.airflow_log_reader_policy_arn
  remote_logs                   = local.remote_logs
  log_kms_key_arn               = aws_kms_key.airflow.arn
}

module "services" {
  source = "../../modules/airflow-services"

  name                 = var.name
  task_definition_arns = module.airflow_tasks.task_definition_arns
  subnet_ids           = var.private_subnet_ids
  security_group_ids   = [aws_security_group.tasks.id]
  worker_min_count     = var.worker_min_count

  # Tasks start only once the DAG folder can be mounted and AWS can be reached.
  depends_on = [module.dag_store, module.endpoints]
}

module "worker_autoscaling" {
  source = "../../modules/worker-autoscaling"

  cluster_name      = module.services.cluster_name
  service_name      = module.services.service_names["worker"]
  min_capacity      = var.worker_min_count
  max_capacity      = var.worker_max_count
  namespace         = "Airflow"
  metric_dimensions = { Environment = var.environment }
}
