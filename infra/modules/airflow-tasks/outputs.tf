output "task_definition_arns" {
  description = "Task definition ARNs (with revision), by task: web, scheduler, worker."
  value       = { for task, td in aws_ecs_task_definition.this : task => td.arn }
}

output "task_role_arns" {
  description = "Task role ARNs, by task."
  value       = { for task, role in aws_iam_role.task : task => role.arn }
}

output "task_role_names" {
  description = "Task role names, by task, for attaching further policies."
  value       = { for task, role in aws_iam_role.task : task => role.name }
}

output "execution_role_arn" {
  description = "ARN of the execution role shared by the three tasks."
  value       = aws_iam_role.execution.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the sidecars and the API server (stream prefix = container name); the scheduler and worker Airflow containers log through logship (FireLens) to Firehose."
  value       = aws_cloudwatch_log_group.containers.name
}

output "container_definitions" {
  description = "The rendered container definitions (JSON), by task, for review."
  value       = { for task, td in aws_ecs_task_definition.this : task => td.container_definitions }
}
