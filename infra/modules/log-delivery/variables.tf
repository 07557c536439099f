variable "name" {
  type        = string
  description = "Name of the Firehose delivery stream (logship's `--output firehose:NAME`)."
}

variable "bucket_arn" {
  type        = string
  description = "ARN of the S3 bucket the logs are delivered to."
}

variable "prefix" {
  type        = string
  description = "Key prefix of delivered logs, ending in \"/\"; Firehose appends a yyyy/MM/dd/HH time partition."
  default     = "airflow-logs/"

  validation {
    condition     = can(regex("^[^/].*/$", var.prefix))
    error_message = "prefix must not start with \"/\" and must end with \"/\"."
  }
}

variable "error_prefix" {
  type        = string
  description = "Key prefix for records Firehose could not deliver, ending in \"/\"; the error type and a time partition are appended."
  default     = "airflow-logs-errors/"

  validation {
    condition     = can(regex("^[^/].*/$", var.error_prefix))
    error_message = "error_prefix must not start with \"/\" and must end with \"/\"."
  }
}

variable "kms_key_arn" {
  type        = string
  description = "Customer-managed KMS key for the stream's server-side encryption and for the delivered S3 objects (SSE-KMS)."
}

variable "buffering_size" {
  type        = number
  description = "Firehose buffer size in MiB before it writes an object (1-128). Larger means fewer, bigger objects."
  default     = 64
}

variable "buffering_interval" {
  type        = number
  description = "Longest time in seconds Firehose buffers before it writes an object (0-900): the delay before logs appear in S3."
  default     = 300
}

variable "log_retention_days" {
  type        = number
  description = "Retention in days of the CloudWatch log group where Firehose reports delivery errors."
  default     = 365
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
