"""Appliance hosts for the conformance suite, cloud-init style: a Guest reached over SSH
(`execute`, `restart`, `power_cycle`, `reconfigure`) and the libvirt platform that boots images
into Instances (`launch`, `booted`, `destroy`). Imported lazily: the local target and the unit
tests use `vm_fixtures.util` without libvirt."""

from __future__ import annotations

__all__ = ["Guest", "GuestError", "Instance", "LibvirtPlatform"]


def __getattr__(name: str):
    if name in ("Guest", "GuestError"):
        from . import guest

        return getattr(guest, name)
    if name in ("Instance", "LibvirtPlatform"):
        from . import instance

        return getattr(instance, name)
    raise AttributeError(name)
