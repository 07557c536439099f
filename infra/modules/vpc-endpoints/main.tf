# VPC endpoints for Airflow on Fargate in a VPC without a NAT gateway.
#
# Every AWS API the sidecars and the ECS agent call must have an endpoint here, or the
# call times out: dagsync -> S3 (gateway), logship -> Firehose, metricship -> CloudWatch
# (`monitoring`), the awslogs driver -> CloudWatch Logs, image pulls -> ECR API, ECR
# registry and S3 (layers), credential and web-identity calls -> STS, and the ECS agent's
# task scale-in protection calls for workerguard -> ECS (the ECS guide: "If a RequestError
# or RequestTimeout error appears, ... Try using VPC endpoints for Amazon ECS").

data "aws_region" "current" {}

locals {
  interface_services = toset(concat(var.interface_services, var.additional_interface_services))
}

resource "aws_vpc_endpoint" "s3" {
  vpc_id            = var.vpc_id
  service_name      = "com.amazonaws.${data.aws_region.current.name}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = var.route_table_ids

  tags = merge(var.tags, { Name = "${var.name}-s3" })
}

resource "aws_security_group" "endpoints" {
  name_prefix = "${var.name}-endpoints-"
  description = "Interface VPC endpoints of ${var.name}: HTTPS from the Airflow tasks only"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-endpoints" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "https_from_clients" {
  # count, not for_each: the IDs are usually those of security groups created in the same
  # apply, unknown at plan time, while their number is known.
  count = length(var.client_security_group_ids)

  security_group_id            = aws_security_group.endpoints.id
  description                  = "HTTPS from the Airflow tasks to the interface endpoints"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = var.client_security_group_ids[count.index]
}

resource "aws_vpc_endpoint" "interface" {
  for_each = local.interface_services

  vpc_id              = var.vpc_id
  service_name        = "com.amazonaws.${data.aws_region.current.name}.${each.value}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = var.subnet_ids
  security_group_ids  = [aws_security_group.endpoints.id]
  private_dns_enabled = true

  tags = merge(var.tags, { Name = "${var.name}-${each.value}" })
}
