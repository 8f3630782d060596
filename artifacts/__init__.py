"""Pinned, verified, cached inputs of the appliance: the llama-server build and the model."""
