"""Appliance hosts for the conformance suite, cloud-init style: a Guest reached over SSH
(`execute`, `restart`, `power_cycle`, `reconfigure`) and the libvirt platform that boots images
into Instances (`launch`, `booted`, `destroy`)."""

from .guest import Guest, GuestError
from .instance import Instance, LibvirtPlatform

__all__ = ["Guest", "GuestError", "Instance", "LibvirtPlatform"]
