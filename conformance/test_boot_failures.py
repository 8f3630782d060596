"""A boot that goes nowhere ends the wait within a minute, with its cause: the negative controls of
the VM harness's fail-fast (a kernel that cannot start; a domain that pauses, as under kvm_pvm).

Without them a broken image or host costs a whole run: the suite used to wait up to 30 minutes per
check on a paused domain."""

from __future__ import annotations

import mmap
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vm_fixtures import GuestError
from vm_fixtures.instance import NAME_PREFIX, WORK_ROOT

from .support import REPO

pytestmark = pytest.mark.target("vm")
FAIL_FAST_S = 60
# The image's GRUB entry, as packer/base/build-base.sh writes it, and the same bytes broken: an
# initramfs `init` that does not exist makes the kernel fall back to mounting root=UUID=... itself,
# which it cannot, and panic.
KERNEL_ARGS = b" ro console=tty0 console=ttyS0,115200n8 net.ifnames=0\n"
PANICKING_ARGS = b" ro console=tty0 console=ttyS0,115200n8 rdinit=/nope0\n"


@pytest.fixture(scope="module")
def panicking_image(settings) -> Iterator[Path]:
    """The image under test, unchanged but for its kernel command line (an overlay: same length,
    written in place, so the filesystem stays consistent)."""
    image = REPO / settings.image
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{NAME_PREFIX}broken-", dir=WORK_ROOT))  # reaped if we crash
    work.chmod(0o755)  # QEMU runs as libvirt-qemu, which must reach the overlay's folder
    raw = work / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", image, raw], check=True)
    with open(raw, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as disk:
        offset = disk.find(KERNEL_ARGS)
        assert offset >= 0 and disk.find(KERNEL_ARGS, offset + 1) < 0, "the GRUB entry is not where it was"
    raw.unlink()
    assert len(PANICKING_ARGS) == len(KERNEL_ARGS)
    (work / "patch").write_bytes(PANICKING_ARGS)
    broken = work / "panicking.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image.resolve(), broken],
                   check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -s {work / 'patch'} {offset} {len(PANICKING_ARGS)}",
                    broken], check=True, capture_output=True)
    broken.chmod(0o644)
    yield broken
    shutil.rmtree(work, ignore_errors=True)


def boot_failure_within(instance) -> tuple[str, float]:
    started = time.monotonic()
    try:
        with pytest.raises(GuestError) as failure:
            instance.wait_ready(timeout=600)
    finally:
        instance.destroy()
    return str(failure.value), round(time.monotonic() - started, 1)


def test_a_kernel_that_cannot_start_fails_fast(platform, panicking_image, record):
    instance = platform.launch(panicking_image, "qemu64", {})
    cause, seconds = boot_failure_within(instance)
    record({"failed_after_s": seconds, "cause": cause.splitlines()[0][:160]})
    assert "kernel panic" in cause and "console tail" in cause and "Kernel panic" in cause, cause
    assert seconds < FAIL_FAST_S, f"the broken boot was reported after {seconds} s: {cause.splitlines()[0]}"


def test_a_paused_domain_fails_fast(platform, settings, record):
    """What kvm_pvm does to a Linux guest, done on purpose: the domain stops running mid-boot."""
    instance = platform.launch(REPO / settings.image, "qemu64", {})
    time.sleep(3)
    instance.dom.suspend()
    cause, seconds = boot_failure_within(instance)
    record({"failed_after_s": seconds, "cause": cause.splitlines()[0][:160]})
    assert "domain paused (user)" in cause and "console tail" in cause, cause
    assert seconds < FAIL_FAST_S, f"the paused domain was reported after {seconds} s"
