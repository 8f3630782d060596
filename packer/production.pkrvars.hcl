# The production build: Ubuntu 24.04 cloud image, KVM, Devstral Small 2 24B Q4_K_M, one-context.
# packer/build.py --production stages the model named in artifacts/pins.toml (production_model;
# it refuses a placeholder sha256) and one-context's .deb, and makes the cloud-init seed ISO.
base_image    = "https://cloud-images.ubuntu.com/releases/24.04/release/ubuntu-24.04-server-cloudimg-amd64.img"
base_checksum = "file:https://cloud-images.ubuntu.com/releases/24.04/release/SHA256SUMS"
accelerator   = "kvm"
cpu_model     = "host"
context_agent = "one-context"
disk_size     = "40960M"
memory        = 32768
cpus          = 8
