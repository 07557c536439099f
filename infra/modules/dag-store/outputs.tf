output "file_system_id" {
  description = "EFS file system ID (airflow-tasks' efs_file_system_id)."
  value       = aws_efs_file_system.dags.id
}

output "file_system_arn" {
  description = "EFS file system ARN (sidecar-iam's efs_file_system_arn)."
  value       = aws_efs_file_system.dags.arn
}

output "access_point_id" {
  description = "Access point ID (airflow-tasks' efs_access_point_id)."
  value       = aws_efs_access_point.dags.id
}

output "access_point_arn" {
  description = "Access point ARN (sidecar-iam's efs_access_point_arn)."
  value       = aws_efs_access_point.dags.arn
}

output "security_group_id" {
  description = "Security group of the mount targets; the tasks' group needs egress to it on TCP 2049."
  value       = aws_security_group.efs.id
}

output "mount_target_ids" {
  description = "Mount target IDs, in the order of subnet_ids; a service should depend on them so tasks do not start before the folder can be mounted."
  value       = aws_efs_mount_target.dags[*].id
}
