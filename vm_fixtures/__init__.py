"""Boot appliance images under libvirt for the conformance suite: a platform (`launch`) and
instances (`execute`, `restart`, `power_cycle`, `reconfigure`, `destroy`), cloud-init style."""

from .instance import Instance, LibvirtPlatform

__all__ = ["Instance", "LibvirtPlatform"]
