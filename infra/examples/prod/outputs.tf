output "cluster_name" {
  description = "ECS cluster of the Airflow services."
  value       = module.services.cluster_name
}

output "service_names" {
  description = "ECS services, by task: web, scheduler, worker."
  value       = module.services.service_names
}

output "task_definition_arns" {
  description = "Registered task definitions, by task."
  value       = module.airflow_tasks.task_definition_arns
}

output "dag_source" {
  description = "Where to upload this environment's DAGs (dagsync mirrors it to EFS)."
  value       = "s3://${var.dag_bucket_name}/${local.dag_prefix}"
}

output "firehose_stream_name" {
  description = "Firehose stream logship writes to."
  value       = module.log_delivery.stream_name
}

output "log_bucket_name" {
  description = "Bucket the task logs land in, under airflow-logs/yyyy/MM/dd/HH/."
  value       = aws_s3_bucket.logs.bucket
}

output "interface_endpoint_ids" {
  description = "Interface endpoints created in the VPC, by service."
  value       = module.endpoints.interface_endpoint_ids
}
