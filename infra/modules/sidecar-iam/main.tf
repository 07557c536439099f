# Least-privilege IAM policies for the airside sidecars. An ECS task has one task role
# shared by its containers, so each Airflow task role attaches the policies of the
# sidecars that run in it (see ../airflow-tasks).

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  partition     = data.aws_partition.current.partition
  dag_bucket    = "arn:${local.partition}:s3:::${var.dag_bucket_name}"
  remote_logs   = "arn:${local.partition}:s3:::${var.remote_logs.bucket_name}"
  s3_via_region = "s3.${data.aws_region.current.name}.amazonaws.com"
}

# dagsync: ListObjectsV2 + GetObject below its environment's prefix, and writing the DAG
# folder on EFS through the access point.
data "aws_iam_policy_document" "dagsync" {
  statement {
    sid       = "ListOwnDagPrefix"
    actions   = ["s3:ListBucket"]
    resources = [local.dag_bucket]

    # ListBucket is a bucket-level action: without this condition it would list every
    # environment's DAGs.
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.dag_prefix}*"]
    }
  }

  statement {
    sid       = "ReadOwnDags"
    actions   = ["s3:GetObject"]
    resources = ["${local.dag_bucket}/${var.dag_prefix}*"]
  }

  statement {
    sid       = "WriteDagFolderThroughAccessPoint"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [var.efs_file_system_arn]

    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [var.efs_access_point_arn]
    }
  }

  dynamic "statement" {
    for_each = length(var.dag_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "DecryptDagObjects"
      actions   = ["kms:Decrypt"]
      resources = var.dag_kms_key_arns

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = [local.s3_via_region]
      }
    }
  }
}

# logship: PutRecordBatch on its one stream (DescribeDeliveryStream is its start-up
# check), and optionally PutObject (+ multipart) below its S3 prefix, with GetObject
# there for HeadObject: a retried CompleteMultipartUpload whose first try succeeded
# answers NoSuchUpload, and logship asks HeadObject whether the object exists (HeadObject
# needs s3:GetObject; without it the answer is 403 and the retry turns into a failure).
data "aws_iam_policy_document" "logship" {
  statement {
    sid       = "PutLogRecords"
    actions   = ["firehose:PutRecordBatch", "firehose:DescribeDeliveryStream"]
    resources = [var.firehose_stream_arn]
  }

  # The airflow-s3 output: task logs in Airflow's remote-log layout, put while they grow
  # and deleted when folded into a later object. No listing and no reading: logship
  # remembers its own object names (its state directory).
  statement {
    sid       = "ShipTaskLogsForTheAirflowUI"
    actions   = ["s3:PutObject", "s3:DeleteObject"]
    resources = ["${local.remote_logs}/${var.remote_logs.prefix}*"]
  }

  dynamic "statement" {
    for_each = var.log_s3_output == null ? [] : [var.log_s3_output]
    content {
      sid = "WriteLogObjects"
      actions = [
        "s3:PutObject",
        "s3:GetObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
      ]
      resources = ["arn:${local.partition}:s3:::${statement.value.bucket_name}/${statement.value.prefix}*"]
    }
  }

  dynamic "statement" {
    for_each = var.log_s3_output == null ? [] : [var.log_s3_output]
    content {
      sid       = "CheckLogBucket"
      actions   = ["s3:ListBucket"]
      resources = ["arn:${local.partition}:s3:::${statement.value.bucket_name}"]

      # HeadBucket (the start-up check) sends no prefix, hence IfExists; a listing
      # with a prefix is allowed below logship's own prefix only.
      condition {
        test     = "StringLikeIfExists"
        variable = "s3:prefix"
        values   = ["${statement.value.prefix}*"]
      }
    }
  }

  dynamic "statement" {
    for_each = length(var.log_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "EncryptLogObjects"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = var.log_kms_key_arns

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = [local.s3_via_region]
      }
    }
  }
}

# metricship: PutMetricData in its namespace only. Neither action supports resource-level
# permissions (the resource must be "*"); the namespace condition is the restriction.
data "aws_iam_policy_document" "metricship" {
  statement {
    sid       = "PutAirflowMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [var.metrics_namespace]
    }
  }

  statement {
    # metricship's start-up check that CloudWatch is reachable and the credentials work.
    sid       = "CheckCloudWatch"
    actions   = ["cloudwatch:ListMetrics"]
    resources = ["*"]
  }
}

# The Airflow API server (the web task): reads the task logs logship put in the
# remote-log layout. ListObjectsV2 with the attempt's key as prefix, then GetObject of
# each key; listing is allowed below the prefix only.
data "aws_iam_policy_document" "airflow_log_reader" {
  statement {
    sid       = "ListTaskLogs"
    actions   = ["s3:ListBucket"]
    resources = [local.remote_logs]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.remote_logs.prefix}*"]
    }
  }

  statement {
    sid       = "ReadTaskLogs"
    actions   = ["s3:GetObject"]
    resources = ["${local.remote_logs}/${var.remote_logs.prefix}*"]
  }

  dynamic "statement" {
    for_each = length(var.log_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "DecryptTaskLogs"
      actions   = ["kms:Decrypt"]
      resources = var.log_kms_key_arns

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = [local.s3_via_region]
      }
    }
  }
}

# workerguard: sets and reads the scale-in protection of its own worker task, through the
# ECS agent, which calls UpdateTaskProtection and GetTaskProtection with the task role.
# Both take the task as resource: only the tasks of this cluster.
data "aws_iam_policy_document" "workerguard" {
  statement {
    sid       = "ProtectOwnClusterTasksFromScaleIn"
    actions   = ["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"]
    resources = ["arn:${local.partition}:ecs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:task/${var.ecs_cluster_name}/*"]
  }
}

resource "aws_iam_policy" "workerguard" {
  name_prefix = "${var.name}-workerguard-"
  description = "workerguard: scale-in protection of the tasks of cluster ${var.ecs_cluster_name}"
  policy      = data.aws_iam_policy_document.workerguard.json
  tags        = var.tags
}

resource "aws_iam_policy" "airflow_log_reader" {
  name_prefix = "${var.name}-airflow-log-reader-"
  description = "Airflow API server: list and read task logs under ${var.remote_logs.prefix} of ${var.remote_logs.bucket_name}"
  policy      = data.aws_iam_policy_document.airflow_log_reader.json
  tags        = var.tags
}

resource "aws_iam_policy" "dagsync" {
  name_prefix = "${var.name}-dagsync-"
  description = "dagsync: read ${var.dag_prefix} of ${var.dag_bucket_name} and write the DAG folder on EFS"
  policy      = data.aws_iam_policy_document.dagsync.json
  tags        = var.tags
}

resource "aws_iam_policy" "logship" {
  name_prefix = "${var.name}-logship-"
  description = "logship: put records to its Firehose stream (and objects under its S3 prefix)"
  policy      = data.aws_iam_policy_document.logship.json
  tags        = var.tags
}

resource "aws_iam_policy" "metricship" {
  name_prefix = "${var.name}-metricship-"
  description = "metricship: put metrics in the ${var.metrics_namespace} namespace"
  policy      = data.aws_iam_policy_document.metricship.json
  tags        = var.tags
}
