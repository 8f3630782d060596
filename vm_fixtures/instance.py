"""A libvirt platform and the instances it launches (cloud-init integration-test style).

Each instance: a qcow2 overlay on the image under test (never modified), a CONTEXT CD-ROM,
SSH/HTTPS/HTTP forwarded to free 127.0.0.1 ports, the serial console in a file.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt

from . import accel, host
from .context_iso import build_iso
from .guest import Guest, GuestError
from .layout import layout
from .util import free_ports

NAME_PREFIX = "slm-conf-"
WORK_ROOT = Path("/var/tmp/slm-vms")

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

    def __init__(self, name: str, dom: libvirt.virDomain, workdir: Path, decision: accel.Decision,
                 ports: dict[str, int], context: dict[str, str]):
        super().__init__(name, "127.0.0.1", ports["ssh"], "root", workdir / "id_ed25519",
                         https_url=f"https://127.0.0.1:{ports['https']}", http_url=f"http://127.0.0.1:{ports['http']}",
                         engine_url=f"http://127.0.0.1:{ports['engine']}")
        self.dom, self.workdir, self.decision, self.ports = dom, workdir, decision, ports
        self.cpu_model = decision.cpu_mode
        self.context = dict(context)
        self._console_mark = 0

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    def trusted_ca(self) -> Path:
        """The appliance's private CA, fetched as a client would get it from the report."""
        ca = self.workdir / "ca.crt"
        ca.write_text(self.read_file(layout().ca_cert))
        return ca

    def console(self, since: int = 0) -> str:
        if not self.serial_log.exists():
            return ""
        with open(self.serial_log, "rb") as fh:
            fh.seek(since)
            return fh.read().decode(errors="replace")

    def wait_boot(self, timeout: float = 900) -> float:
        self._console_mark = self.serial_log.stat().st_size if self.serial_log.exists() else 0
        return super().wait_boot(timeout)

    def boot_failure(self) -> str | None:
        """A domain that stopped running, or a console that shows a boot going nowhere (this boot's
        output only: the serial log keeps every boot), with the domain state and the console's tail."""
        try:
            state, reason = self.dom.state()
        except libvirt.libvirtError as err:
            return f"libvirt lost the domain: {err}"
        console = self.console(self._console_mark)
        if state in DEAD_STATES:
            what = f"domain {DEAD_STATES[state]} ({STATE_REASONS.get((state, reason), reason)})"
        else:
            what = accel.console_failure(console)
        if not what:
            return None
        return f"{what} under {self.decision.accel} with CPU {self.cpu_model}; console tail:\n{accel.tail(console)}"

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


DEAD_STATES = {libvirt.VIR_DOMAIN_PAUSED: "paused", libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
               libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended"}
STATE_REASONS = {  # what `virsh domstate --reason` says
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_UNKNOWN): "unknown",
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER): "user",
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR): "I/O error",
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_CRASHED): "guest crashed",
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_SHUTTING_DOWN): "shutting down",
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN): "shut down by the guest",
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED): "QEMU crashed",
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_FAILED): "failed to start",
    (libvirt.VIR_DOMAIN_CRASHED, libvirt.VIR_DOMAIN_CRASHED_PANICKED): "guest panicked",
}


def with_ssh_key(context: dict[str, str], key: Path) -> dict[str, str]:
    return {"SSH_PUBLIC_KEY": key.with_suffix(".pub").read_text().strip(), "REPORT_READY": "YES", **context}


class LibvirtPlatform:
    """launch() boots an image; reap() removes what a crashed earlier run left behind."""

    def __init__(self, uri: str = host.URI):
        host.ensure_daemons()
        self.conn = libvirt.open(uri)
        self.decisions: dict[tuple[Path, str], accel.Decision] = {}

    def decision(self, image: Path, cpu_model: str) -> accel.Decision:
        """KVM where the image's own kernel boots under it with this CPU model, else TCG; decided
        once per image and model, and said on the console."""
        key = (image.resolve(), cpu_model)
        if key not in self.decisions:
            decision = accel.with_libvirt_blockers(accel.choose(*key), self.kvm_cpu_refusal)
            print(f"vm_fixtures: accelerator for {decision.line()}", file=sys.stderr, flush=True)
            self.decisions[key] = decision
        return self.decisions[key]

    def kvm_cpu_refusal(self, cpu_xml: str) -> str | None:
        """libvirt's CPU check for a KVM domain: None if it would start, else why not."""
        try:
            self.conn.compareHypervisorCPU(None, "x86_64", "pc", "kvm", cpu_xml,
                                           libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)
        except libvirt.libvirtError as err:
            return str(err)
        return None

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
        decision = self.decision(image, cpu_model)
        if decision.cpu_mode == "host-passthrough" and decision.accel != "kvm":
            raise GuestError(f"host-passthrough needs KVM, which is not used here ({decision.reason}): ask for host")
        name = f"{NAME_PREFIX}{decision.cpu_mode.lower()}-{uuid.uuid4().hex[:6]}"
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
        guest_ports = {"ssh": 22, "https": 443, "http": 80, "engine": layout().engine_port}
        ports = dict(zip(guest_ports, free_ports(len(guest_ports)), strict=True))
        forwards = ",".join(f"hostfwd=tcp:127.0.0.1:{ports[k]}-:{guest}" for k, guest in guest_ports.items())
        xml = DOMAIN_XML.format(domain_type=decision.domain_type, name=name, memory=memory_mib,
                                vcpus=vcpus, cpu=decision.cpu_xml(), overlay=overlay, iso=iso,
                                serial=workdir / "serial.log", forwards=forwards)
        dom = self.conn.defineXML(xml)
        instance = Instance(name, dom, workdir, decision, ports, context)
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
