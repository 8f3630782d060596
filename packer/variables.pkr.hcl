# What differs between the production and the offline build; everything else is shared.

variable "base_image" {
  type        = string
  description = "Base QCOW2 (file:// or https://): Ubuntu 24.04 cloud image, or the debootstrap base"
}

variable "base_checksum" {
  type        = string
  description = "Checksum of base_image (sha256:..., or file:URL-of-SHA256SUMS)"
}

variable "accelerator" {
  type        = string
  default     = "kvm"
  description = "kvm on a build host; tcg where KVM does not work (software emulation)"
}

variable "cpu_model" {
  type        = string
  default     = "host"
  description = "QEMU -cpu for the build VM: host with KVM, max with TCG"
}

variable "context_agent" {
  type        = string
  default     = "one-context"
  description = "one-context (production) or offline (the image carries slm-context)"
}

variable "stage_dir" {
  type        = string
  description = "Host folder with the verified engine, model, model.env and SHA256SUMS (nox -s artifacts)"
}

variable "model_id" {
  type        = string
  description = "Model served, recorded in the manifest"
}

variable "seed_iso" {
  type        = string
  default     = ""
  description = "Optional cloud-init seed ISO giving the build's SSH key to a cloud base image"
}

variable "ssh_username" {
  type    = string
  default = "root"
}

variable "ssh_private_key_file" {
  type = string
}

variable "disk_size" {
  type    = string
  default = "40960M"
}

variable "memory" {
  type    = number
  default = 4096
}

variable "cpus" {
  type    = number
  default = 2
}

variable "output_dir" {
  type = string
}
