variable "cluster_name" {
  type        = string
  description = "ECS cluster of the worker service. Container Insights must be on: the alarms compare metricship's DesiredWorkers with the service's DesiredTaskCount."
}

variable "service_name" {
  type        = string
  description = "Name of the Celery worker ECS service."
}

variable "min_capacity" {
  type        = number
  description = "Fewest worker tasks; 0 lets the workers scale to zero when there is no work."
  default     = 0
}

variable "max_capacity" {
  type        = number
  description = "Most worker tasks (keep equal to metricship's --max-workers)."
  default     = 10

  validation {
    condition     = var.max_capacity >= 1 && var.max_capacity <= 100
    error_message = "max_capacity must be between 1 and 100."
  }
}

variable "namespace" {
  type        = string
  description = "CloudWatch namespace metricship publishes in."
  default     = "Airflow"
}

variable "metric_dimensions" {
  type        = map(string)
  description = "Dimensions metricship publishes DesiredWorkers with (its --dimension flags), e.g. { Environment = \"prod\" }. Aggregate over the environment, never per task."
  default     = {}
}

variable "scale_out_evaluation_periods" {
  type        = number
  description = "Consecutive 60 s periods with more desired than running workers before scaling out."
  default     = 2
}

variable "scale_in_evaluation_periods" {
  type        = number
  description = "Consecutive scale_in_period periods with more workers than desired before scaling in. Short because the worker task's workerguard protects busy workers from scale-in (see the README for what each setting costs)."
  default     = 1
}

variable "scale_in_period" {
  type        = number
  description = "Length in seconds of one scale-in evaluation period (a multiple of 60)."
  default     = 60
}

variable "scale_out_cooldown" {
  type        = number
  description = "Seconds after a scale-out before the next scale-out counts capacity afresh (tasks take about a minute to start)."
  default     = 120
}

variable "scale_in_cooldown" {
  type        = number
  description = "Seconds after a scale-in before the next scale-in (Container Insights reports the new desired count about a minute later)."
  default     = 60
}

variable "scale_in_max_step" {
  type        = number
  description = "Most workers one scale-in removes: the surplus that lasted the whole scale-in window, up to this many. Safe because the worker task's workerguard protects busy workers (ECS then stops idle ones only); without workerguard set 1 and a slow scale-in (5 x 300 s), which still kills tasks longer than stopTimeout."
  default     = 10

  validation {
    condition     = var.scale_in_max_step >= 1 && floor(var.scale_in_max_step) == var.scale_in_max_step
    error_message = "scale_in_max_step must be a whole number of at least 1."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
