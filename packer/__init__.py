"""Image build helpers (the Packer template itself is the *.pkr.hcl files here)."""
