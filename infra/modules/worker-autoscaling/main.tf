# Celery worker autoscaling on metricship's signal, able to scale out from zero tasks.
#
# metricship publishes DesiredWorkers = ceil((queued + running tasks) / concurrency),
# clamped to [min, max], aggregated over the whole environment. A per-task metric (CPU,
# backlog per task) cannot do this job: with zero tasks there is nothing to measure.
# Target tracking needs a metric that falls as capacity grows, which DesiredWorkers is
# not; so two step-scaling policies on the difference between the workers wanted
# (DesiredWorkers) and the workers the service asks for (Container Insights'
# DesiredTaskCount, a service-level metric):
#   deficit > 0 for 2 x 60 s -> add `deficit` workers (from zero too);
#   surplus > 0 for 1 x 60 s -> remove `surplus` workers (fast, and safe because the
#                               worker task's workerguard protects every worker that runs
#                               a task from scale-in: ECS stops idle workers only).
# The defaults are the best setting the autoscaling simulator found that kills no task
# (crates/airside-autoscale-sim/README.md has the numbers).
# When metricship withholds the signal (the scheduler went silent) the expressions have
# no data, and missing data never scales in: notBreaching.

locals {
  resource_id = "service/${var.cluster_name}/${var.service_name}"

  desired_workers = {
    namespace   = var.namespace
    metric_name = "DesiredWorkers"
    dimensions  = var.metric_dimensions
  }
  service_tasks = {
    namespace   = "ECS/ContainerInsights"
    metric_name = "DesiredTaskCount"
    dimensions  = { ClusterName = var.cluster_name, ServiceName = var.service_name }
  }
}

resource "aws_appautoscaling_target" "workers" {
  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = local.resource_id
  min_capacity       = var.min_capacity
  max_capacity       = var.max_capacity
  tags               = var.tags
}

resource "aws_appautoscaling_policy" "scale_out" {
  name               = "${var.service_name}-scale-out"
  policy_type        = "StepScaling"
  service_namespace  = aws_appautoscaling_target.workers.service_namespace
  scalable_dimension = aws_appautoscaling_target.workers.scalable_dimension
  resource_id        = aws_appautoscaling_target.workers.resource_id

  step_scaling_policy_configuration {
    adjustment_type         = "ChangeInCapacity"
    cooldown                = var.scale_out_cooldown
    metric_aggregation_type = "Maximum"

    # The alarm fires when deficit > 0; deficit d (a whole number) adds d workers:
    # step k covers [k - 0.5, k + 0.5) above the threshold, the first starts at 0.
    dynamic "step_adjustment" {
      for_each = range(1, var.max_capacity + 1)
      content {
        metric_interval_lower_bound = step_adjustment.value == 1 ? 0 : step_adjustment.value - 0.5
        metric_interval_upper_bound = step_adjustment.value == var.max_capacity ? null : step_adjustment.value + 0.5
        scaling_adjustment          = step_adjustment.value
      }
    }
  }
}

resource "aws_appautoscaling_policy" "scale_in" {
  name               = "${var.service_name}-scale-in"
  policy_type        = "StepScaling"
  service_namespace  = aws_appautoscaling_target.workers.service_namespace
  scalable_dimension = aws_appautoscaling_target.workers.scalable_dimension
  resource_id        = aws_appautoscaling_target.workers.resource_id

  step_scaling_policy_configuration {
    adjustment_type         = "ChangeInCapacity"
    cooldown                = var.scale_in_cooldown
    metric_aggregation_type = "Minimum"

    # The alarm fires when surplus > 0 for the whole window; surplus s removes s workers,
    # at most scale_in_max_step: step k covers [k - 0.5, k + 0.5), the last is open above.
    # Minimum: only the surplus that lasted the whole window.
    dynamic "step_adjustment" {
      for_each = range(1, var.scale_in_max_step + 1)
      content {
        metric_interval_lower_bound = step_adjustment.value == 1 ? 0 : step_adjustment.value - 0.5
        metric_interval_upper_bound = step_adjustment.value == var.scale_in_max_step ? null : step_adjustment.value + 0.5
        scaling_adjustment          = -step_adjustment.value
      }
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "worker_deficit" {
  alarm_name          = "${var.service_name}-worker-deficit"
  alarm_description   = "More Celery workers wanted (metricship DesiredWorkers) than the worker service runs: scale out, from zero too."
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  evaluation_periods  = var.scale_out_evaluation_periods
  datapoints_to_alarm = var.scale_out_evaluation_periods
  # No signal means no decision: metricship withholds DesiredWorkers when its source is
  # stale, and guessing "more work" from silence would be as wrong as guessing "none".
  treat_missing_data = "missing"
  alarm_actions      = [aws_appautoscaling_policy.scale_out.arn]

  metric_query {
    id          = "deficit"
    expression  = "desired - FILL(running, 0)"
    label       = "Worker deficit"
    return_data = true
  }

  metric_query {
    id = "desired"
    metric {
      namespace   = local.desired_workers.namespace
      metric_name = local.desired_workers.metric_name
      dimensions  = local.desired_workers.dimensions
      period      = 60
      stat        = "Maximum"
    }
  }

  metric_query {
    id = "running"
    metric {
      namespace   = local.service_tasks.namespace
      metric_name = local.service_tasks.metric_name
      dimensions  = local.service_tasks.dimensions
      period      = 60
      stat        = "Maximum"
    }
  }

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "worker_surplus" {
  alarm_name          = "${var.service_name}-worker-surplus"
  alarm_description   = "More Celery workers than metricship's DesiredWorkers: remove the surplus (workerguard keeps busy workers protected). Missing data never scales in."
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  evaluation_periods  = var.scale_in_evaluation_periods
  datapoints_to_alarm = var.scale_in_evaluation_periods
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_appautoscaling_policy.scale_in.arn]

  metric_query {
    id          = "surplus"
    expression  = "FILL(running, 0) - desired"
    label       = "Worker surplus"
    return_data = true
  }

  metric_query {
    id = "desired"
    metric {
      namespace   = local.desired_workers.namespace
      metric_name = local.desired_workers.metric_name
      dimensions  = local.desired_workers.dimensions
      period      = var.scale_in_period
      stat        = "Minimum"
    }
  }

  metric_query {
    id = "running"
    metric {
      namespace   = local.service_tasks.namespace
      metric_name = local.service_tasks.metric_name
      dimensions  = local.service_tasks.dimensions
      period      = var.scale_in_period
      stat        = "Minimum"
    }
  }

  tags = var.tags
}
