# The offline build (this kind of build machine): Debian bookworm base from debootstrap, TCG,
# the small model from build/artifacts, the offline context agent. base_image, base_checksum,
# stage_dir, ssh_private_key_file, output_dir and model_id are given by packer/build.py.
accelerator   = "tcg"
cpu_model     = "max"
context_agent = "offline"
disk_size     = "2048M"
memory        = 1536
