variable "name" {
  type        = string
  description = "Name prefix: task definition families become <name>-web, <name>-scheduler and <name>-worker."
}

variable "environment" {
  type        = string
  description = "Environment name, published by metricship as the `Environment` dimension that the worker autoscaling alarms select on."
}

variable "images" {
  type = object({
    airflow     = string
    dagsync     = string
    logship     = string
    metricship  = string
    workerguard = string
  })
  description = "Image URIs (preferably pinned by digest) of Airflow and of the four sidecars built from docker/."
}

variable "ecr_repository_arns" {
  type        = list(string)
  description = "ECR repositories the images are pulled from; the execution role may pull from these only."
}

variable "task_sizes" {
  type = map(object({
    cpu    = number
    memory = number
  }))
  description = "Fargate task size (CPU units, MiB) per task: keys web, scheduler, worker. The sidecars take 64-256 CPU units and 64-256 MiB of it; the Airflow containers share the rest."
  default = {
    web       = { cpu = 1024, memory = 2048 }
    scheduler = { cpu = 1024, memory = 2048 }
    worker    = { cpu = 2048, memory = 4096 }
  }

  validation {
    condition     = alltrue([for t in ["web", "scheduler", "worker"] : contains(keys(var.task_sizes), t)])
    error_message = "task_sizes needs the keys web, scheduler and worker."
  }
}

variable "dag_bucket_name" {
  type        = string
  description = "S3 bucket dagsync reads the DAGs from."
}

variable "dag_prefix" {
  type        = string
  description = "Key prefix of this environment's DAGs, ending in \"/\"; dagsync mirrors s3://<dag_bucket_name>/<dag_prefix> to /opt/airflow/dags."

  validation {
    condition     = can(regex("^[^/].*/$", var.dag_prefix))
    error_message = "dag_prefix must not start with \"/\" and must end with \"/\"."
  }
}

variable "dagsync_max_delete" {
  type        = string
  description = "dagsync's delete guard (DAGSYNC_MAX_DELETE): the most files one cycle may delete, as a count (\"50\") or a share of the tree (\"25%\")."
  default     = "25%"

  validation {
    condition     = can(regex("^[0-9]+%?$", var.dagsync_max_delete))
    error_message = "dagsync_max_delete is a number or a percentage, e.g. \"50\" or \"25%\"."
  }
}

variable "efs_file_system_id" {
  type        = string
  description = "EFS file system that holds the shared DAG folder (mounted with TLS and IAM authorisation)."
}

variable "efs_access_point_id" {
  type        = string
  description = "EFS access point of the DAG folder; it maps every writer to Airflow's uid so Airflow can read what dagsync writes."
}

variable "firehose_stream_name" {
  type        = string
  description = "Firehose delivery stream logship writes task logs to."
}

variable "worker_concurrency" {
  type        = number
  description = "Celery worker concurrency (tasks per worker). Used by the workers and by metricship to compute DesiredWorkers = ceil(demand / concurrency)."
  default     = 16
}

variable "min_workers" {
  type        = number
  description = "Lower clamp of metricship's DesiredWorkers; keep equal to the worker service's autoscaling minimum."
  default     = 0
}

variable "max_workers" {
  type        = number
  description = "Upper clamp of metricship's DesiredWorkers; keep equal to the worker service's autoscaling maximum."
  default     = 10
}

variable "execution_api_server_url" {
  type        = string
  description = "URL of the Airflow 3 API server's execution API, which the workers report to, e.g. \"http://airflow-web.internal:8080/execution/\"."
}

variable "sql_alchemy_conn_secret_arn" {
  type        = string
  description = "Secrets Manager secret (or SSM parameter) ARN holding AIRFLOW__DATABASE__SQL_ALCHEMY_CONN."
}

variable "celery_broker_url_secret_arn" {
  type        = string
  description = "Secrets Manager secret (or SSM parameter) ARN holding AIRFLOW__CELERY__BROKER_URL."
}

variable "secrets_kms_key_arns" {
  type        = list(string)
  description = "KMS keys the two secrets are encrypted with, when not the AWS-managed key; the execution role may decrypt with these only, via Secrets Manager."
  default     = []
}

variable "dagsync_policy_arn" {
  type        = string
  description = "dagsync policy from ../sidecar-iam; attached to all three task roles."
}

variable "logship_policy_arn" {
  type        = string
  description = "logship policy from ../sidecar-iam; attached to the scheduler and worker task roles."
}

variable "metricship_policy_arn" {
  type        = string
  description = "metricship policy from ../sidecar-iam; attached to the scheduler task role."
}

variable "workerguard_policy_arn" {
  type        = string
  description = "workerguard policy from ../sidecar-iam; attached to the worker task role (task scale-in protection of the worker's own task)."
}

variable "airflow_log_reader_policy_arn" {
  type        = string
  description = "airflow_log_reader policy from ../sidecar-iam; attached to the web task role (the API server reads task logs from remote_logs)."
}

variable "remote_logs" {
  type = object({
    bucket_name = string
    prefix      = string
  })
  description = "Airflow's remote_base_log_folder as bucket and key prefix (ending in \"/\"); the same value as sidecar-iam's remote_logs. The API server reads task logs there, logship writes them, Airflow's own uploader is off."

  validation {
    condition     = endswith(var.remote_logs.prefix, "/") && !startswith(var.remote_logs.prefix, "/")
    error_message = "remote_logs.prefix must end in \"/\" and not start with one (for example \"airflow-task-logs/\")."
  }
}

variable "airflow_policy_arns" {
  type        = list(string)
  description = "Further policies Airflow itself needs (its connections, remote logging, ...), attached to all three task roles."
  default     = []
}

variable "log_retention_days" {
  type        = number
  description = "Retention in days of the containers' CloudWatch log group."
  default     = 365
}

variable "log_kms_key_arn" {
  type        = string
  description = "KMS key that encrypts the containers' CloudWatch log group (its key policy must allow logs.<region>.amazonaws.com)."
}

variable "taskdef_dir" {
  type        = string
  description = "Directory of the task definition templates; null uses this module's taskdefs/ (written by scripts/gen-taskdefs), the same JSON `aws ecs register-task-definition` takes."
  default     = null
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
