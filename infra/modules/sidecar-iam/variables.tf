variable "name" {
  type        = string
  description = "Name prefix of the IAM policies, e.g. \"airflow-prod\"."
}

variable "dag_bucket_name" {
  type        = string
  description = "S3 bucket that holds the DAGs dagsync copies to EFS."
}

variable "dag_prefix" {
  type        = string
  description = "Key prefix of this environment's DAGs in dag_bucket_name, ending in \"/\" (e.g. \"prod/\"). dagsync may list and read only below it."

  validation {
    condition     = can(regex("^[^/*?].*/$", var.dag_prefix))
    error_message = "dag_prefix must be non-empty, must not start with \"/\" or a wildcard, and must end with \"/\"."
  }
}

variable "dag_kms_key_arns" {
  type        = list(string)
  description = "KMS keys the DAG objects are encrypted with (SSE-KMS); dagsync may decrypt with these keys only, and only through S3. Empty when the bucket uses SSE-S3."
  default     = []
}

variable "efs_file_system_arn" {
  type        = string
  description = "ARN of the EFS file system that holds the shared DAG folder."
}

variable "efs_access_point_arn" {
  type        = string
  description = "ARN of the EFS access point the task definitions mount; the mount and write permissions hold only through it."
}

variable "firehose_stream_arn" {
  type        = string
  description = "ARN of the Firehose delivery stream logship writes to."
}

variable "log_s3_output" {
  type = object({
    bucket_name = string
    prefix      = string
  })
  description = "Set when logship also writes straight to S3 (`--output s3://BUCKET/PREFIX`): the bucket and the key prefix (ending in \"/\") it may write under. null for Firehose only."
  default     = null
}

variable "remote_logs" {
  type = object({
    bucket_name = string
    prefix      = string
  })
  description = "Airflow's remote_base_log_folder as bucket and key prefix (ending in \"/\"): logship's airflow-s3 output puts and deletes task logs under it, and the API server (airflow_log_reader policy) lists and reads them there."
}

variable "log_kms_key_arns" {
  type        = list(string)
  description = "KMS keys of the buckets of log_s3_output and remote_logs (SSE-KMS); logship may generate data keys, and the API server decrypt, with these only, and only through S3."
  default     = []
}

variable "ecs_cluster_name" {
  type        = string
  description = "Name of the ECS cluster the Airflow tasks run in: workerguard may set and read the scale-in protection of this cluster's tasks only."

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,255}$", var.ecs_cluster_name))
    error_message = "ecs_cluster_name must be a cluster name (letters, digits, - and _), not an ARN."
  }
}

variable "metrics_namespace" {
  type        = string
  description = "CloudWatch namespace metricship publishes to; PutMetricData is allowed in this namespace only."
  default     = "Airflow"
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
