output "cluster_name" {
  description = "ECS cluster of the Airflow services."
  value       = aws_ecs_cluster.airflow.name
}

output "cluster_arn" {
  description = "ARN of the ECS cluster."
  value       = aws_ecs_cluster.airflow.arn
}

output "service_names" {
  description = "ECS service names, by task: web, scheduler, worker (worker-autoscaling's service_name is the worker's)."
  value       = { for task, service in aws_ecs_service.airflow : task => service.name }
}
