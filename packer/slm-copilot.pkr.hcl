# SLM-Copilot appliance image: one template, two builds (see *.pkrvars.hcl). Packer 1.6.6 reads
# this directory as it is; modern Packer also needs modern/plugins.pkr.hcl (packer/build.py).

packer {
  required_version = ">= 1.6.6"
}

source "qemu" "slm_copilot" {
  accelerator          = var.accelerator
  disk_image           = true
  iso_url              = var.base_image
  iso_checksum         = var.base_checksum
  format               = "qcow2"
  disk_size            = var.disk_size
  disk_interface       = "virtio"
  disk_discard         = "unmap"
  disk_detect_zeroes   = "unmap"
  skip_compaction      = true
  net_device           = "virtio-net"
  headless             = true
  memory               = var.memory
  cpus                 = var.cpus
  qemuargs             = concat([["-cpu", var.cpu_model], ["-serial", "file:${var.output_dir}.serial.log"]],
                                var.seed_iso == "" ? [] : [["-cdrom", var.seed_iso]])
  output_directory     = var.output_dir
  vm_name              = "slm-copilot.qcow2"
  communicator         = "ssh"
  ssh_username         = var.ssh_username
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "20m"
  shutdown_command     = "shutdown -P now"
}

build {
  sources = ["source.qemu.slm_copilot"]

  provisioner "shell" {
    inline = ["mkdir -p /var/tmp/slm-stage /var/tmp/slm-appliance/context"]
  }
  provisioner "file" {
    source      = "${path.root}/../appliance/"
    destination = "/var/tmp/slm-appliance"
  }
  provisioner "file" {
    source      = "${path.root}/context/"
    destination = "/var/tmp/slm-appliance/context"
  }
  provisioner "file" {
    source      = "${var.stage_dir}/"
    destination = "/var/tmp/slm-stage"
  }
  provisioner "shell" {
    script           = "${path.root}/provision.sh"
    environment_vars = ["CONTEXT_AGENT=${var.context_agent}", "SLM_MODEL_ID=${var.model_id}"]
  }
}
