"""KVM or TCG, decided by what matters: the image's own Linux boots under KVM with the CPU model asked for.

A /dev/kvm that opens proves little. Two host kinds seen so far: an AMD host where QEMU aborts at
once under KVM ("failed to set MSR 0x10a"), and hosts with nested KVM through `kvm_pvm`, which run
real-mode code (a boot sector, GRUB) and then stall the moment the kernel takes over, with the
domain `paused (unknown)`. So the probe boots the image itself (GRUB, then its kernel, on a
throw-away snapshot) and asks for the kernel to finish its own start-up on the serial console.

A named CPU model under KVM keeps the features the host can give and disables the rest: QEMU's
warnings in the probe name some ("host doesn't support requested feature"), libvirt's own CPU
comparison names the others. QEMU's qemu64 carries AMD's `svm`, which QEMU quietly drops under
KVM but libvirt checks: an Intel host refuses such a domain outright unless it is disabled.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path

from .util import wait_until

PROBE_SECONDS = 45  # a working KVM reaches init in 2-5 s from power-on; kvm_pvm never gets there
# Lines the kernel prints once its own start-up is done (and early boot code, where PVM stalls, is behind).
KERNEL_STARTED = ("Run /init as init process", "Freeing unused kernel image")
MISSING_FEATURE = re.compile(r"host doesn't support requested feature: \S+?\.([\w.-]+) \[bit")
# What a console shows when a boot will not reach SSH: the stage and the words that give it away.
BOOT_FAILURES = (
    ("kernel panic", re.compile(r"Kernel panic - not syncing")),
    ("initramfs shell", re.compile(r"^\(initramfs\)", re.M)),
    ("GRUB prompt", re.compile(r"^grub(?: rescue)?>", re.M)),
    ("systemd emergency mode", re.compile(r"You are in emergency mode|Give root password for maintenance")),
)


def console_failure(text: str) -> str | None:
    """The boot failure this console text shows, if any (e.g. 'kernel panic')."""
    return next((what for what, pattern in BOOT_FAILURES if pattern.search(text)), None)


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]")  # GRUB's and the kernel's terminal codes


def tail(text: str, lines: int = 25) -> str:
    """The last lines of a serial console, as a person would read them (no terminal codes)."""
    return "\n".join(ANSI.sub("", text).replace("\r", "").rstrip().splitlines()[-lines:])


@dataclass(frozen=True)
class BootProbe:
    """One boot of the image under KVM with one CPU model, watched on its serial console."""

    qemu_cpu: str
    booted: bool
    seconds: float
    console: str = ""  # its tail
    qemu_error: str = ""  # what QEMU said besides feature warnings (an abort, a refusal)
    missing_features: tuple[str, ...] = ()

    def summary(self) -> str:
        if self.booted:
            return f"the image's kernel started under KVM with -cpu {self.qemu_cpu} in {self.seconds:.1f} s"
        if self.qemu_error:
            return f"QEMU under KVM with -cpu {self.qemu_cpu} failed: {self.qemu_error}"
        last = tail(self.console, 1).strip() or "(nothing)"
        return (f"under KVM with -cpu {self.qemu_cpu} the image's kernel did not start within {self.seconds:.0f} s; "
                f"last console line: {last[:120]!r}")


def boot_probe(image: Path, qemu_cpu: str, seconds: float = PROBE_SECONDS) -> BootProbe:
    """Boot `image` on a snapshot (nothing written) under KVM until its kernel has started, or `seconds`."""
    cmd = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", qemu_cpu, "-m", "1024", "-smp", "1", "-snapshot",
           "-drive", f"file={image},if=virtio", "-nic", "none", "-display", "none", "-monitor", "none",
           "-serial", "stdio", "-no-reboot"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.set_blocking(proc.stdout.fileno(), False)
    console = b""

    def kernel_started_or_qemu_gone() -> bool:
        nonlocal console
        console += proc.stdout.read() or b""
        return any(line.encode() in console for line in KERNEL_STARTED) or proc.poll() is not None

    try:
        with contextlib.suppress(TimeoutError):
            wait_until(kernel_started_or_qemu_gone, seconds, interval=0.2)
    finally:
        proc.kill()
        os.set_blocking(proc.stdout.fileno(), True)
        rest, err = proc.communicate()
    console += rest or b""
    text, stderr = console.decode(errors="replace"), err.decode(errors="replace")
    missing = tuple(dict.fromkeys(MISSING_FEATURE.findall(stderr)))
    errors = [line for line in stderr.splitlines() if line.strip() and "requested feature" not in line
              and "terminating on signal" not in line]
    return BootProbe(qemu_cpu, any(line in text for line in KERNEL_STARTED), round(time.monotonic() - started, 1),
                     tail(text, 15), " ".join(errors)[:400], missing)


MODES = ("maximum", "host-model")  # libvirt CPU modes asked by name; any other name is a QEMU model


@dataclass(frozen=True)
class Decision:
    """How one CPU model is run here: the accelerator, the libvirt CPU definition, and why."""

    cpu_model: str  # as asked: host, qemu64, Nehalem...
    accel: str  # kvm | tcg
    reason: str
    disabled_features: tuple[str, ...] = ()  # named model under KVM: what the host cannot give
    host: dict = field(default_factory=dict, compare=False)

    @property
    def domain_type(self) -> str:
        return "kvm" if self.accel == "kvm" else "qemu"

    @property
    def cpu_mode(self) -> str:
        """`host` is the most a guest can have here: the host's own CPU with KVM, all QEMU emulates without."""
        if self.cpu_model == "host":
            return "host-passthrough" if self.accel == "kvm" else "maximum"
        return self.cpu_model

    def cpu_xml(self) -> str:
        if self.cpu_mode == "host-passthrough":
            return "<cpu mode='host-passthrough' check='none' migratable='off'/>"
        if self.cpu_mode in MODES:
            return f"<cpu mode='{self.cpu_mode}'/>"
        disabled = "".join(f"<feature policy='disable' name='{name}'/>" for name in self.disabled_features)
        return f"<cpu mode='custom' match='exact'><model fallback='forbid'>{self.cpu_mode}</model>{disabled}</cpu>"

    def as_dict(self) -> dict:
        return {**asdict(self), "cpu_mode": self.cpu_mode}

    def line(self) -> str:
        off = f", features off: {','.join(self.disabled_features)}" if self.disabled_features else ""
        return f"{self.cpu_model}: {self.accel} ({self.cpu_mode}{off}): {self.reason}"


def decide(cpu_model: str, override: str | None, device_problem: str | None,
           probe: Callable[[], BootProbe], host: dict | None = None) -> Decision:
    """The accelerator for one CPU model; `probe` runs only when the override and the device allow KVM."""
    host = host or {}
    if override in ("kvm", "tcg"):
        return Decision(cpu_model, override, f"SLM_VM_ACCEL={override}", host=host)
    if override:
        raise ValueError(f"SLM_VM_ACCEL={override!r}: expected kvm, tcg or unset (decided by a boot probe)")
    if device_problem:
        return Decision(cpu_model, "tcg", device_problem, host=host)
    result = probe()
    if not result.booted:
        return Decision(cpu_model, "tcg", f"{result.summary()}{nested_note(host)}", host=host)
    disabled = result.missing_features if cpu_model != "host" else ()
    return Decision(cpu_model, "kvm", result.summary(), disabled, host=host)


def nested_note(host: dict) -> str:
    modules = host.get("kvm_modules") or []
    return f" (host {host.get('cpu', '?')}, KVM modules {', '.join(modules) or 'none'})" if host else ""


def kvm_device_problem() -> str | None:
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 is not installed"
    if not Path("/dev/kvm").exists():
        return "no /dev/kvm on this host"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable"
    return None


@cache
def host_facts() -> dict:
    """What the report says of the host: CPU, KVM modules (kvm_pvm = nested through PVM), QEMU."""
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    modules = sorted(m for m in ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm") if Path(f"/sys/module/{m}").exists())
    nested = {m: Path(f"/sys/module/{m}/parameters/nested").read_text().strip() for m in modules
              if Path(f"/sys/module/{m}/parameters/nested").exists()}
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout \
        if shutil.which("qemu-system-x86_64") else ""
    return {"cpu": model.group(1).strip() if model else platform.processor(), "kvm_modules": modules,
            "nested": nested, "kvm_device": kvm_device_problem() or "usable",
            "qemu": qemu.splitlines()[0] if qemu else "not installed"}


def choose(image: Path, cpu_model: str) -> Decision:
    """The decision for this image and CPU model on this host (a boot probe: up to PROBE_SECONDS)."""
    return decide(cpu_model, os.environ.get("SLM_VM_ACCEL") or None, kvm_device_problem(),
                  lambda: boot_probe(image, cpu_model), host_facts())


LIBVIRT_MISSING = re.compile(r"does not provide required features: ([\w.\-, ]+)")


def with_libvirt_blockers(decision: Decision, compare: Callable[[str], str | None]) -> Decision:
    """A named model under KVM with the features libvirt's CPU check says the host lacks disabled too.

    `compare(cpu_xml)` is libvirt's verdict on a CPU definition: None when the hypervisor can run
    it, else libvirt's message. One that still fails after that is refused here, with the message."""
    if decision.accel != "kvm" or decision.cpu_mode == "host-passthrough" or decision.cpu_mode in MODES:
        return decision
    refusal = compare(decision.cpu_xml())
    if refusal is None:
        return decision
    missing = LIBVIRT_MISSING.search(refusal)
    if missing:
        extra = tuple(f.strip() for f in missing.group(1).split(",") if f.strip())
        decision = replace(decision, disabled_features=tuple(dict.fromkeys(decision.disabled_features + extra)))
        refusal = compare(decision.cpu_xml())
    if refusal is not None:
        raise ValueError(f"CPU model {decision.cpu_model} cannot run under KVM here: {refusal}")
    return decision
