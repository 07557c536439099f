output "scalable_target_resource_id" {
  description = "Application Auto Scaling resource ID of the worker service."
  value       = aws_appautoscaling_target.workers.resource_id
}

output "scale_out_policy_arn" {
  description = "ARN of the step-scaling policy that adds workers."
  value       = aws_appautoscaling_policy.scale_out.arn
}

output "scale_in_policy_arn" {
  description = "ARN of the step-scaling policy that removes workers."
  value       = aws_appautoscaling_policy.scale_in.arn
}

output "alarm_names" {
  description = "Names of the deficit (scale-out) and surplus (scale-in) alarms."
  value = {
    scale_out = aws_cloudwatch_metric_alarm.worker_deficit.alarm_name
    scale_in  = aws_cloudwatch_metric_alarm.worker_surplus.alarm_name
  }
}
