variable "name" {
  type        = string
  description = "Name prefix for the endpoints and their security group, e.g. \"airflow-prod\"."
}

variable "vpc_id" {
  type        = string
  description = "ID of the NAT-free VPC the Airflow tasks run in."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets that get an interface endpoint network interface (one per Availability Zone)."
}

variable "route_table_ids" {
  type        = list(string)
  description = "Route tables of the private subnets; the S3 gateway endpoint adds its prefix-list route to each."
}

variable "client_security_group_ids" {
  type        = list(string)
  description = "Security groups of the tasks that call AWS APIs; only they may reach the interface endpoints on TCP 443."
}

variable "interface_services" {
  type        = list(string)
  description = "Interface endpoints the sidecars and ECS itself need without a NAT gateway: CloudWatch (metricship), Firehose (logship), CloudWatch Logs (awslogs driver), STS, ECR API + registry (image pulls; layers come through the S3 gateway endpoint), and ECS (the agent's task scale-in protection calls for workerguard)."
  default     = ["monitoring", "kinesis-firehose", "logs", "sts", "ecr.api", "ecr.dkr", "ecs"]
}

variable "additional_interface_services" {
  type        = list(string)
  description = "Further interface endpoints the Airflow containers need, e.g. [\"secretsmanager\"] for secrets in the task definition."
  default     = []
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
