variable "name" {
  type        = string
  description = "Name prefix of the file system, its security group and access point."
}

variable "vpc_id" {
  type        = string
  description = "VPC of the Airflow tasks."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets to put a mount target in, one per Availability Zone the tasks run in."
}

variable "client_security_group_ids" {
  type        = list(string)
  description = "Security groups of the tasks that mount the folder (NFS, TCP 2049, is allowed from these only)."
}

variable "kms_key_arn" {
  type        = string
  description = "Customer-managed KMS key that encrypts the file system at rest."
}

variable "uid" {
  type        = number
  description = "POSIX uid every access through the access point acts as: Airflow's (50000 in the official image), so Airflow can read what dagsync writes."
  default     = 50000
}

variable "gid" {
  type        = number
  description = "POSIX gid every access through the access point acts as (0 in the official Airflow image)."
  default     = 0
}

variable "root_directory" {
  type        = string
  description = "Folder on the file system that the access point exposes as the DAG folder's root."
  default     = "/dags"

  validation {
    condition     = startswith(var.root_directory, "/")
    error_message = "root_directory must be an absolute path."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}
