"""The hypervisor side: libvirt daemons (the accelerator is chosen in accel.py)."""

from __future__ import annotations

import contextlib
import grp
import os
import subprocess
import time
from pathlib import Path

import libvirt

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
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(libvirt.libvirtError):
            libvirt.open(URI).close()
            return
        time.sleep(0.5)
    raise RuntimeError("libvirtd did not answer on qemu:///system")
