"""The hypervisor side: libvirt daemons (the accelerator is chosen in accel.py)."""

from __future__ import annotations

import contextlib
import grp
import os
import subprocess
from pathlib import Path

import libvirt

from .util import wait_until

URI = "qemu:///system"


def ensure_daemons() -> None:
    """Start virtlogd and libvirtd when no init system runs them (containers, CI sandboxes)."""
    with contextlib.suppress(libvirt.libvirtError):
        libvirt.open(URI).close()
        return
    kvm = Path("/dev/kvm")
    if kvm.exists():  # what udev would do; without it libvirt re-probes QEMU on every call
        with contextlib.suppress(KeyError, PermissionError):
            os.chown(kvm, 0, grp.getgrnam("kvm").gr_gid)
            kvm.chmod(0o660)
    for daemon in ("virtlogd", "libvirtd"):
        if subprocess.run(["pgrep", "-x", daemon], capture_output=True).returncode != 0:
            subprocess.run([daemon, "-d"], check=True)

    def answers() -> bool:
        with contextlib.suppress(libvirt.libvirtError):
            libvirt.open(URI).close()
            return True
        return False

    wait_until(answers, 30, interval=0.5, what="libvirtd on qemu:///system")
