"""A libvirt platform and the instances it launches (cloud-init integration-test style).

Each instance: a qcow2 overlay on the image under test (never modified), a CONTEXT CD-ROM,
SSH/HTTPS/HTTP forwarded to free 127.0.0.1 ports, the serial console in a file. Every SSH and
HTTP call is bounded by a timeout: while the guest is down, slirp still accepts TCP.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import libvirt

from . import host
from .context_iso import build_iso

NAME_PREFIX = "slm-conf-"
WORK_ROOT = Path("/var/tmp/slm-vms")

CPU_XML = {
    "host-passthrough": "<cpu mode='host-passthrough' check='none' migratable='off'/>",
    "maximum": "<cpu mode='maximum' migratable='off'/>",
    "host-model": "<cpu mode='host-model'/>",
}


def cpu_xml(model: str) -> str:
    return CPU_XML.get(model, f"<cpu mode='custom' match='exact'><model fallback='forbid'>{model}</model></cpu>")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DOMAIN_XML = """<domain type='{domain_type}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>{vcpus}</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  {cpu}
  <features><acpi/><apic/></features>
  <on_reboot>restart</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='{overlay}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{iso}'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <serial type='file'><source path='{serial}' append='on'/><target port='0'/></serial>
    <console type='file'><source path='{serial}' append='on'/><target type='serial' port='0'/></console>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=fwd0,{forwards}'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=fwd0,bus=pci.0,addr=0x10'/>
  </qemu:commandline>
</domain>
"""


class GuestError(RuntimeError):
    pass


@dataclass
class Instance:
    name: str
    dom: libvirt.virDomain
    workdir: Path
    cpu_model: str
    ports: dict[str, int]
    context: dict[str, str] = field(default_factory=dict)
    boot_id: str | None = None
    kvm: bool = False
    ready: dict = field(default_factory=dict)

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    @property
    def ssh_key(self) -> Path:
        return self.workdir / "id_ed25519"

    def ssh_command(self, command: str) -> list[str]:
        return ["ssh", "-q", "-i", str(self.ssh_key), "-p", str(self.ports["ssh"]), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "root@127.0.0.1", command]

    def execute(self, command: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run(self.ssh_command(command), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise GuestError(f"{self.name}: `{command}` timed out after {timeout}s") from err
        if check and result.returncode != 0:
            raise GuestError(f"{self.name}: `{command}` exited {result.returncode}: {result.stderr[-500:]}")
        return result

    def read_file(self, path: str) -> str:
        return self.execute(f"cat {path}").stdout

    def current_boot_id(self) -> str | None:
        with contextlib.suppress(GuestError):
            out = self.execute("cat /proc/sys/kernel/random/boot_id", timeout=20, check=False)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        return None

    def wait_boot(self, timeout: float = 900) -> float:
        """Until SSH answers with a boot_id other than the last one seen."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            boot_id = self.current_boot_id()
            if boot_id and boot_id != self.boot_id:
                self.boot_id = boot_id
                return time.monotonic() - start
            tail = self.serial_log.read_text(errors="replace")[-4000:] if self.serial_log.exists() else ""
            if "Kernel panic" in tail or "(initramfs)" in tail:
                raise GuestError(f"{self.name}: boot failed, see {self.serial_log}")
            time.sleep(3)
        raise GuestError(f"{self.name}: no SSH with a new boot_id after {timeout}s")

    def wait_ready(self, timeout: float = 1800) -> dict:
        """Until the context agent has run and the appliance answers /health through TLS."""
        start = time.monotonic()
        self.wait_boot(timeout)
        booted = time.monotonic() - start
        status = ""
        while time.monotonic() - start < timeout:
            out = self.execute("systemctl is-active slm-context.service; cat /etc/one-appliance/status",
                               timeout=30, check=False).stdout.split()
            status = out[-1] if out else ""
            agent_done = out and out[0] in ("active", "failed")
            if agent_done and status != "bootstrap_success":
                raise GuestError(f"{self.name}: appliance status {status!r} after the context agent ran")
            if agent_done and self.health() == 200:
                return {"boot_s": round(booted, 1), "ready_s": round(time.monotonic() - start, 1)}
            time.sleep(5)
        raise GuestError(f"{self.name}: not ready after {timeout}s (status {status!r})")

    def health(self) -> int | None:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"https://127.0.0.1:{self.ports['https']}/health", verify=False, timeout=10).status_code  # noqa: S501 (liveness only; TLS is checked by the suite)
        return None

    def restart(self, timeout: float = 1800) -> dict:
        """ACPI reboot; done when the boot_id changed and the appliance is ready again."""
        self.execute("sync", check=False)
        self.dom.reboot(0)
        return self.wait_ready(timeout)

    def power_cycle(self, timeout: float = 1800) -> dict:
        """Pull the plug: no shutdown, no sync."""
        self.dom.destroy()
        self.dom.create()
        return self.wait_ready(timeout)

    def reconfigure(self, context: dict[str, str], timeout: float = 1800, expect_ready: bool = True) -> dict:
        """A new CONTEXT CD-ROM, then a reboot (what OpenNebula does on a context update)."""
        self.context = context
        iso = build_iso(with_ssh_key(context, self.ssh_key), self.workdir / f"context-{uuid.uuid4().hex[:8]}.iso")
        cdrom = (f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='{iso}'/>"
                 "<target dev='hdc' bus='ide'/><readonly/></disk>")
        self.dom.updateDeviceFlags(cdrom, libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        if expect_ready:
            return self.restart(timeout)
        self.execute("sync", check=False)
        self.dom.reboot(0)
        return {"boot_s": round(self.wait_boot(timeout), 1)}

    def collect_logs(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        if self.serial_log.exists():
            shutil.copy(self.serial_log, dest / "serial.log")
        commands = {
            "journal.txt": "journalctl -b --no-pager",
            "appliance-logs.txt": "tail -n 200 /var/log/one-appliance/*.log /etc/one-appliance/status",
            "nginx.txt": "tail -n 200 /var/log/slm-copilot/*.log",
            "engine.txt": "journalctl -b -u slm-copilot-engine --no-pager",
        }
        for name, command in commands.items():
            with contextlib.suppress(GuestError):
                (dest / name).write_text(self.execute(command, timeout=60, check=False).stdout)

    def destroy(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            if self.dom.isActive():
                self.dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            self.dom.undefine()
        shutil.rmtree(self.workdir, ignore_errors=True)


def with_ssh_key(context: dict[str, str], key: Path) -> dict[str, str]:
    return {"SSH_PUBLIC_KEY": key.with_suffix(".pub").read_text().strip(), "REPORT_READY": "YES", **context}


class LibvirtPlatform:
    """launch() boots an image; reap() removes what a crashed earlier run left behind."""

    def __init__(self, uri: str = host.URI):
        host.ensure_daemons()
        self.conn = libvirt.open(uri)
        self.kvm = host.kvm_works()

    def reap(self) -> list[str]:
        removed = []
        for dom in self.conn.listAllDomains():
            if dom.name().startswith(NAME_PREFIX):
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
                    dom.undefine()
                removed.append(dom.name())
        if WORK_ROOT.exists():
            for leftover in WORK_ROOT.glob(f"{NAME_PREFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)
        return removed

    def launch(self, image: Path, cpu_model: str, context: dict[str, str], memory_mib: int = 1536,
               vcpus: int = 2) -> Instance:
        if cpu_model == "host":  # the most a guest can have here: the host's CPU with KVM, all of QEMU's without
            cpu_model = "host-passthrough" if self.kvm else "maximum"
        if cpu_model == "host-passthrough" and not self.kvm:
            raise GuestError("host-passthrough needs KVM, which does not work on this host: use maximum")
        name = f"{NAME_PREFIX}{cpu_model.lower()}-{uuid.uuid4().hex[:6]}"
        workdir = WORK_ROOT / name
        workdir.mkdir(parents=True)
        WORK_ROOT.chmod(0o755)
        workdir.chmod(0o755)  # QEMU runs as libvirt-qemu under qemu:///system
        overlay = workdir / "overlay.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image.resolve(), overlay],
                       check=True)
        key = workdir / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        iso = build_iso(with_ssh_key(context, key), workdir / "context.iso")
        # "engine" reaches the guest's own address at the engine port: it must be refused there.
        guest_ports = {"ssh": 22, "https": 443, "http": 80, "engine": 8081}
        ports = {k: free_port() for k in guest_ports}
        forwards = ",".join(f"hostfwd=tcp:127.0.0.1:{ports[k]}-:{guest}" for k, guest in guest_ports.items())
        xml = DOMAIN_XML.format(domain_type="kvm" if self.kvm else "qemu", name=name, memory=memory_mib,
                                vcpus=vcpus, cpu=cpu_xml(cpu_model), overlay=overlay, iso=iso,
                                serial=workdir / "serial.log", forwards=forwards)
        dom = self.conn.defineXML(xml)
        instance = Instance(name, dom, workdir, cpu_model, ports, dict(context), kvm=self.kvm)
        try:
            dom.create()
        except libvirt.libvirtError:
            instance.destroy()
            raise
        return instance
