"""A libvirt platform and the instances it launches (cloud-init integration-test style).

Each instance: a qcow2 overlay on the image under test (never modified), a CONTEXT CD-ROM,
SSH/HTTPS/HTTP forwarded to free 127.0.0.1 ports, the serial console in a file.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt

from . import host
from .context_iso import build_iso
from .guest import ENGINE_PORT, Guest, GuestError

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


class Instance(Guest):
    """A Guest the platform booted: it also holds the power switch, the CD-ROM and the console."""

    disposable = True

    def __init__(self, name: str, dom: libvirt.virDomain, workdir: Path, cpu_model: str, ports: dict[str, int],
                 context: dict[str, str], kvm: bool):
        super().__init__(name, "127.0.0.1", ports["ssh"], "root", workdir / "id_ed25519",
                         https_url=f"https://127.0.0.1:{ports['https']}", http_url=f"http://127.0.0.1:{ports['http']}",
                         engine_url=f"http://127.0.0.1:{ports['engine']}")
        self.dom, self.workdir, self.cpu_model, self.ports, self.kvm = dom, workdir, cpu_model, ports, kvm
        self.context = dict(context)

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    @property
    def emulated(self) -> bool:
        return not self.kvm

    def trusted_ca(self) -> Path:
        """The appliance's private CA, fetched as a client would get it from the report."""
        ca = self.workdir / "ca.crt"
        ca.write_text(self.read_file("/var/lib/slm-copilot/tls/ca.crt"))
        return ca

    def boot_failure(self) -> str | None:
        tail = self.serial_log.read_text(errors="replace")[-4000:] if self.serial_log.exists() else ""
        if "Kernel panic" in tail or "(initramfs)" in tail:
            return f"see {self.serial_log}"
        return None

    def acpi_reboot(self) -> None:
        """As OpenNebula's `onevm reboot` sends it."""
        self.execute("sync", check=False)
        self.dom.reboot(0)

    def restart(self, timeout: float = 1800) -> dict:
        self.acpi_reboot()
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
        self.acpi_reboot()
        return {"boot_s": round(self.wait_boot(timeout), 1)}

    def collect_logs(self, dest: Path) -> None:
        super().collect_logs(dest)
        if self.serial_log.exists():
            shutil.copy(self.serial_log, dest / "serial.log")

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
        guest_ports = {"ssh": 22, "https": 443, "http": 80, "engine": ENGINE_PORT}
        ports = {k: free_port() for k in guest_ports}
        forwards = ",".join(f"hostfwd=tcp:127.0.0.1:{ports[k]}-:{guest}" for k, guest in guest_ports.items())
        xml = DOMAIN_XML.format(domain_type="kvm" if self.kvm else "qemu", name=name, memory=memory_mib,
                                vcpus=vcpus, cpu=cpu_xml(cpu_model), overlay=overlay, iso=iso,
                                serial=workdir / "serial.log", forwards=forwards)
        dom = self.conn.defineXML(xml)
        instance = Instance(name, dom, workdir, cpu_model, ports, context, kvm=self.kvm)
        try:
            dom.create()
        except libvirt.libvirtError:
            instance.destroy()
            raise
        return instance

    @contextlib.contextmanager
    def booted(self, image: Path, cpu_model: str, context: dict[str, str] | None = None,
               logs: Path | None = None) -> Iterator[Instance]:
        """An instance ready to serve for the length of the block, its logs kept in `logs` if it fails."""
        instance = self.launch(image, cpu_model, context or {})
        try:
            instance.ready = instance.wait_ready()
            yield instance
        except Exception:
            if logs:
                instance.collect_logs(logs)
            raise
        finally:
            instance.destroy()
