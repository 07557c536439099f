output "dagsync_policy_arn" {
  description = "ARN of the dagsync policy; attach it to every task role whose task runs dagsync."
  value       = aws_iam_policy.dagsync.arn
}

output "logship_policy_arn" {
  description = "ARN of the logship policy; attach it to the task roles of the scheduler and worker tasks."
  value       = aws_iam_policy.logship.arn
}

output "metricship_policy_arn" {
  description = "ARN of the metricship policy; attach it to the scheduler's task role."
  value       = aws_iam_policy.metricship.arn
}

output "workerguard_policy_arn" {
  description = "ARN of the workerguard policy; attach it to the worker task role."
  value       = aws_iam_policy.workerguard.arn
}

output "policy_documents" {
  description = "The rendered policy documents (JSON), by sidecar, for review."
  value = {
    dagsync    = data.aws_iam_policy_document.dagsync.json
    logship    = data.aws_iam_policy_document.logship.json
    metricship  = data.aws_iam_policy_document.metricship.json
    workerguard = data.aws_iam_policy_document.workerguard.json
  }
}

output "airflow_log_reader_policy_arn" {
  description = "Policy for the Airflow API server's task role: list and read the task logs logship puts under remote_logs (airflow-tasks attaches it to the web task)."
  value       = aws_iam_policy.airflow_log_reader.arn
}
