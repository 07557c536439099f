variable "region" {
  type        = string
  description = "AWS region to deploy into."
}

variable "name" {
  type        = string
  description = "Name prefix of every resource, e.g. \"airflow-prod\"."
  default     = "airflow-prod"
}

variable "environment" {
  type        = string
  description = "Environment name: the DAG prefix is \"<environment>/\" and metricship's Environment dimension."
  default     = "prod"
}

variable "vpc_id" {
  type        = string
  description = "Existing VPC without a NAT gateway; the tasks reach AWS through the endpoints created here."
}

variable "private_subnet_ids" {
  type        = list(string)
  description = "Private subnets (one per Availability Zone) for the tasks, EFS mount targets and interface endpoints."
}

variable "private_route_table_ids" {
  type        = list(string)
  description = "Route tables of the private subnets, for the S3 gateway endpoint."
}

variable "dag_bucket_name" {
  type        = string
  description = "Existing S3 bucket CI uploads DAGs to, one prefix per environment."
}

variable "dag_kms_key_arns" {
  type        = list(string)
  description = "KMS keys of the DAG bucket when it uses SSE-KMS (empty for SSE-S3)."
  default     = []
}

variable "log_bucket_name" {
  type        = string
  description = "Name of the S3 bucket created for the shipped task logs."
}

variable "images" {
  type = object({
    airflow     = string
    dagsync     = string
    logship     = string
    metricship  = string
    workerguard = string
  })
  description = "Image URIs, pinned by digest: Airflow 3 and the sidecars pushed from docker/ (see the README's deployment section)."
}

variable "ecr_repository_arns" {
  type        = list(string)
  description = "ECR repositories of the images above; the execution role may pull only from these."
}

variable "sql_alchemy_conn_secret_arn" {
  type        = string
  description = "Secrets Manager secret holding Airflow's metadata database URL."
}

variable "celery_broker_url_secret_arn" {
  type        = string
  description = "Secrets Manager secret holding the Celery broker URL."
}

variable "secrets_kms_key_arns" {
  type        = list(string)
  description = "Customer-managed KMS keys of the two secrets, if any."
  default     = []
}

variable "execution_api_server_url" {
  type        = string
  description = "URL under which workers reach the web task's execution API (e.g. through an internal load balancer or ECS Service Connect)."
}

variable "worker_concurrency" {
  type        = number
  description = "Celery worker concurrency; metricship divides the task demand by it."
  default     = 16
}

variable "worker_min_count" {
  type        = number
  description = "Fewest Celery worker tasks (0 = scale to zero when idle)."
  default     = 0
}

variable "worker_max_count" {
  type        = number
  description = "Most Celery worker tasks."
  default     = 10
}

variable "database_port" {
  type        = number
  description = "TCP port of the metadata database, reachable inside the VPC."
  default     = 5432
}

variable "broker_port" {
  type        = number
  description = "TCP port of the Celery broker (Redis/Valkey), reachable inside the VPC."
  default     = 6379
}

variable "web_client_security_group_ids" {
  type        = list(string)
  description = "Security groups (e.g. an internal load balancer's) allowed to reach the web task on 8080. The workers' group is always allowed, for the execution API."
  default     = []
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource through the provider's default_tags."
  default     = {}
}
