"""The hypervisor side: libvirt daemons, and whether KVM really works here."""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import subprocess
import tempfile
import time
from functools import cache
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


# A boot sector that prints "OK" on the serial port and halts: a guest that runs code under KVM.
_PROBE = bytes([0xBA, 0xF8, 0x03, 0xB0, 0x4F, 0xEE, 0xB0, 0x4B, 0xEE, 0xFA, 0xF4, 0xEB, 0xFD])


@cache
def kvm_works() -> bool:
    """/dev/kvm can exist and open while guests hang or fail (nested setups): run one and see."""
    override = os.environ.get("SLM_VM_ACCEL")
    if override in ("kvm", "tcg"):
        return override == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or not shutil.which("qemu-system-x86_64"):
        return False
    with tempfile.NamedTemporaryFile(suffix=".img") as img:
        img.write(_PROBE.ljust(510, b"\0") + b"\x55\xaa")
        img.flush()
        proc = subprocess.Popen(["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-display", "none",
                                 "-monitor", "none", "-serial", "stdio", "-no-reboot", "-drive",
                                 f"file={img.name},format=raw"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        os.set_blocking(proc.stdout.fileno(), False)
        seen, deadline = b"", time.monotonic() + 10
        while b"OK" not in seen and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            seen += proc.stdout.read() or b""
        proc.kill()
        proc.wait()
        return b"OK" in seen
