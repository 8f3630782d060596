# Read by modern Packer only (packer/build.py adds this folder for production builds); Packer
# 1.6.6, whose qemu builder is built in, rejects this block.
packer {
  required_plugins {
    qemu = {
      version = ">= 1.1.0"
      source  = "github.com/hashicorp/qemu"
    }
  }
}
