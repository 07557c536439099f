# The ECS cluster and the three Airflow services (web, scheduler, worker) on Fargate in
# private subnets. The worker count belongs to worker-autoscaling once the service exists.

resource "aws_ecs_cluster" "airflow" {
  name = var.name
  tags = var.tags

  # The worker autoscaling alarms read the service's DesiredTaskCount from here.
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

locals {
  services = {
    web       = { desired_count = var.web_count }
    scheduler = { desired_count = var.scheduler_count }
    worker    = { desired_count = var.worker_min_count }
  }
}

resource "aws_ecs_service" "airflow" {
  for_each = local.services

  name             = "${var.name}-${each.key}"
  cluster          = aws_ecs_cluster.airflow.id
  task_definition  = var.task_definition_arns[each.key]
  desired_count    = each.value.desired_count
  launch_type      = "FARGATE"
  platform_version = "LATEST"
  tags             = var.tags

  # Workers drain running tasks (Celery warm shutdown) before they stop.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = var.security_group_ids
    assign_public_ip = false
  }

  lifecycle {
    # The worker count belongs to the autoscaling policies once created.
    ignore_changes = [desired_count]
  }
}
