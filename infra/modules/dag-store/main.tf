# The shared DAG folder: an EFS file system that dagsync writes through an access point
# as Airflow's uid (50000, gid 0 by default) and every Airflow task reads, mounted with
# TLS and IAM authorisation only (the file system policy refuses anything else).

resource "aws_efs_file_system" "dags" {
  creation_token = "${var.name}-dags"
  encrypted      = true
  kms_key_id     = var.kms_key_arn

  tags = merge(var.tags, { Name = "${var.name}-dags" })
}

resource "aws_efs_backup_policy" "dags" {
  file_system_id = aws_efs_file_system.dags.id

  backup_policy {
    # The DAGs' source of truth is the S3 bucket; dagsync rebuilds the folder from it.
    status = "DISABLED"
  }
}

resource "aws_security_group" "efs" {
  name_prefix = "${var.name}-efs-"
  description = "DAG file system of ${var.name}: NFS from the Airflow tasks only"
  vpc_id      = var.vpc_id
  tags        = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "efs_from_clients" {
  # count over the list's length: the caller usually creates these groups in the same
  # apply, and for_each keys must be known at plan time.
  count = length(var.client_security_group_ids)

  security_group_id            = aws_security_group.efs.id
  description                  = "NFS from the Airflow tasks"
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
  referenced_security_group_id = var.client_security_group_ids[count.index]
}

resource "aws_efs_mount_target" "dags" {
  count = length(var.subnet_ids)

  file_system_id  = aws_efs_file_system.dags.id
  subnet_id       = var.subnet_ids[count.index]
  security_groups = [aws_security_group.efs.id]
}

resource "aws_efs_access_point" "dags" {
  file_system_id = aws_efs_file_system.dags.id

  posix_user {
    uid = var.uid
    gid = var.gid
  }

  root_directory {
    path = var.root_directory

    creation_info {
      owner_uid   = var.uid
      owner_gid   = var.gid
      permissions = "0755"
    }
  }

  tags = merge(var.tags, { Name = "${var.name}-dags" })
}

data "aws_iam_policy_document" "efs" {
  statement {
    sid       = "DenyUnencryptedTransport"
    effect    = "Deny"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess"]
    resources = [aws_efs_file_system.dags.arn]

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

  statement {
    sid       = "DenyMountsOutsideTheAccessPoint"
    effect    = "Deny"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess"]
    resources = [aws_efs_file_system.dags.arn]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "StringNotEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.dags.arn]
    }
  }
}

resource "aws_efs_file_system_policy" "dags" {
  file_system_id = aws_efs_file_system.dags.id
  policy         = data.aws_iam_policy_document.efs.json
}
