output "stream_name" {
  description = "Name of the delivery stream (logship's `--output firehose:NAME`)."
  value       = aws_kinesis_firehose_delivery_stream.logs.name
}

output "stream_arn" {
  description = "ARN of the delivery stream, for the logship policy."
  value       = aws_kinesis_firehose_delivery_stream.logs.arn
}

output "role_arn" {
  description = "ARN of the role Firehose assumes to write to the bucket."
  value       = aws_iam_role.firehose.arn
}

output "error_log_group_name" {
  description = "CloudWatch log group where Firehose reports delivery errors."
  value       = aws_cloudwatch_log_group.firehose.name
}
