variable "name" {
  type        = string
  description = "Name of the ECS cluster and prefix of the services: <name>-web, <name>-scheduler, <name>-worker."
}

variable "task_definition_arns" {
  type        = map(string)
  description = "Task definition ARNs by task (web, scheduler, worker): airflow-tasks' task_definition_arns."

  validation {
    condition     = alltrue([for task in ["web", "scheduler", "worker"] : contains(keys(var.task_definition_arns), task)])
    error_message = "task_definition_arns needs the keys web, scheduler and worker."
  }
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets the tasks run in (no public IPs are assigned)."
}

variable "security_group_ids" {
  type        = list(string)
  description = "Security groups of the tasks."
}

variable "web_count" {
  type        = number
  description = "Tasks of the web (API server) service."
  default     = 1
}

variable "scheduler_count" {
  type        = number
  description = "Tasks of the scheduler service."
  default     = 1
}

variable "worker_min_count" {
  type        = number
  description = "Worker tasks at creation; afterwards worker-autoscaling sets the count (keep equal to its min_capacity)."
  default     = 0
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
