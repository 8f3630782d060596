"""The accelerator decision, for the host kinds met so far, without needing such a host; and the
CPU definitions it produces, judged by this host's real libvirt where it has KVM."""

from __future__ import annotations

import subprocess
import time

import pytest

from vm_fixtures import accel

PVM_HOST = {"cpu": "Intel(R) Xeon(R) Platinum 8481C", "kvm_modules": ["kvm", "kvm_pvm"], "nested": {}}
AMD_HOST = {"cpu": "AMD EPYC", "kvm_modules": ["kvm", "kvm_pvm"], "nested": {}}
GRUB_ONLY = "\x1b[0m\x1b[30m\x1b[47m  Booting `SLM-Copilot (Debian bookworm)'\n\n"
LINUX_BOOT = ("[    0.000000] Linux version 6.1.0-41-cloud-amd64\n[    1.812000] Freeing unused kernel image "
              "(initmem) memory: 2784K\n[    1.9] Run /init as init process\n")


def never_probed():
    raise AssertionError("the probe ran although nothing needed it")


def test_a_probe_that_runs_grub_but_not_linux_means_tcg():
    """The nested-PVM Intel host: real-mode code runs, the kernel never starts, the domain pauses."""
    probe = accel.BootProbe("host", booted=False, seconds=45.0, console=GRUB_ONLY)
    decision = accel.decide("host", None, None, lambda: probe, PVM_HOST)
    assert (decision.accel, decision.cpu_mode, decision.domain_type) == ("tcg", "maximum", "qemu")
    assert "did not start within 45 s" in decision.reason and 'line: "Booting `SLM-Copilot' in decision.reason
    assert "\x1b" not in decision.reason  # the console's terminal codes are not the reader's business
    assert "kvm_pvm" in decision.reason and "Xeon" in decision.reason


def test_a_probe_qemu_refuses_means_tcg_with_qemus_words():
    """The AMD host: QEMU aborts at once under KVM with -cpu host."""
    probe = accel.BootProbe("host", booted=False, seconds=0.3,
                            qemu_error="qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69")
    decision = accel.decide("host", None, None, lambda: probe, AMD_HOST)
    assert decision.accel == "tcg" and "failed to set MSR 0x10a" in decision.reason


def test_a_linux_boot_under_kvm_means_kvm_with_the_missing_features_off():
    probe = accel.BootProbe("qemu64", booted=True, seconds=2.1, console=LINUX_BOOT, missing_features=("pni",))
    decision = accel.decide("qemu64", None, None, lambda: probe, AMD_HOST)
    assert (decision.accel, decision.domain_type, decision.disabled_features) == ("kvm", "kvm", ("pni",))
    assert decision.cpu_xml() == ("<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model>"
                                  "<feature policy='disable' name='pni'/></cpu>")
    host = accel.decide("host", None, None, lambda: accel.BootProbe("host", True, 1.5, LINUX_BOOT), AMD_HOST)
    assert host.cpu_mode == "host-passthrough" and "check='none'" in host.cpu_xml()


@pytest.mark.parametrize("override", ["kvm", "tcg"])
def test_the_override_wins_without_a_probe(override):
    decision = accel.decide("host", override, "no /dev/kvm on this host", never_probed)
    assert decision.accel == override and decision.reason == f"SLM_VM_ACCEL={override}"


def test_an_unknown_override_is_refused_by_name():
    with pytest.raises(ValueError, match="SLM_VM_ACCEL='fast'"):
        accel.decide("host", "fast", None, never_probed)


def test_no_usable_device_means_tcg_without_a_probe():
    decision = accel.decide("qemu64", None, "no /dev/kvm on this host", never_probed)
    assert decision.accel == "tcg" and decision.cpu_xml().startswith("<cpu mode='custom'")


def test_qemus_feature_warnings_are_read():
    stderr = ("qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0]\n"
              "qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.80000001H:ECX.svm [bit 2]\n"
              "qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.07H:EBX.avx512f [bit 16]\n")
    assert accel.MISSING_FEATURE.findall(stderr) == ["pni", "svm", "avx512f"]


def test_libvirt_blockers_are_disabled_too():
    """Intel host, KVM works: QEMU drops svm quietly, libvirt's check names it: the domain disables it."""
    decision = accel.Decision("qemu64", "kvm", "booted")
    seen = []

    def intel_libvirt(xml):
        seen.append(xml)
        if "name='svm'" in xml:
            return None
        return "the CPU is incompatible with host CPU: Host CPU does not provide required features: svm"

    refined = accel.with_libvirt_blockers(decision, intel_libvirt)
    assert refined.disabled_features == ("svm",) and len(seen) == 2
    with pytest.raises(ValueError, match="cannot run under KVM here: nope"):
        accel.with_libvirt_blockers(decision, lambda xml: "nope")
    tcg = accel.Decision("qemu64", "tcg", "probe failed")
    assert accel.with_libvirt_blockers(tcg, never_probed) is tcg


@pytest.mark.parametrize("console, expected", [
    ("[    2.80] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n", "kernel panic"),
    ("Gave up waiting for root file system device.\nBusyBox v1.35.0\n(initramfs) ", "initramfs shell"),
    ("error: no such device: 1234.\ngrub rescue> ", "GRUB prompt"),
    ("Minimal BASH-like line editing is supported.\ngrub> ", "GRUB prompt"),
    ("You are in emergency mode. After logging in, type \"journalctl -xb\"", "systemd emergency mode"),
    (GRUB_ONLY + LINUX_BOOT + "[  OK  ] Reached target Multi-User System.\nslm-copilot login: ", None),
])
def test_console_failures_are_named(console, expected):
    assert accel.console_failure(console) == expected


# -- this host's own libvirt and QEMU: the definitions really pass (or fail) libvirt's CPU check ----------

def kvm_missing_features(model: str) -> tuple[str, ...]:
    """What QEMU warns it cannot give for `model` under KVM on this host (a paused guest, -S)."""
    proc = subprocess.Popen(["qemu-system-x86_64", "-accel", "kvm", "-cpu", model, "-S", "-nodefaults",
                             "-display", "none", "-monitor", "none"], stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    proc.terminate()
    return tuple(accel.MISSING_FEATURE.findall(proc.communicate()[1]))


@pytest.fixture(scope="module")
def libvirt_kvm():
    if accel.kvm_device_problem():
        pytest.skip(f"no KVM to compare against: {accel.kvm_device_problem()}")
    from vm_fixtures.host import ensure_daemons
    from vm_fixtures.instance import LibvirtPlatform

    ensure_daemons()
    return LibvirtPlatform()


def test_qemu64_under_kvm_passes_libvirts_cpu_check_here(libvirt_kvm):
    """The negative control first: qemu64 as QEMU defines it is refused by this host's libvirt (svm
    and whatever else it lacks); with the features QEMU and libvirt name disabled, it is accepted."""
    plain = accel.Decision("qemu64", "kvm", "test")
    refusal = libvirt_kvm.kvm_cpu_refusal(plain.cpu_xml())
    assert refusal and "does not provide required features" in refusal
    probed = accel.Decision("qemu64", "kvm", "test", kvm_missing_features("qemu64"))
    refined = accel.with_libvirt_blockers(probed, libvirt_kvm.kvm_cpu_refusal)
    assert libvirt_kvm.kvm_cpu_refusal(refined.cpu_xml()) is None
    xml = (f"<domain type='kvm'><name>slm-argv</name><memory unit='MiB'>256</memory><vcpu>1</vcpu><os>"
           f"<type arch='x86_64' machine='pc'>hvm</type></os>{refined.cpu_xml()}</domain>")
    argv = libvirt_kvm.conn.domainXMLToNative("qemu-argv", xml)
    assert "-accel kvm" in argv or "accel=kvm" in argv
    assert all(f"{name}=off" in argv for name in refined.disabled_features), argv


def test_the_probe_tells_a_kernel_start_from_a_stall(tmp_path):
    """On this host, the real probe: an image with no kernel never "starts Linux" (negative control);
    the decision for it is TCG whatever KVM does here."""
    if accel.kvm_device_problem():
        pytest.skip(accel.kvm_device_problem())
    blank = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", blank, "64M"], check=True)
    started = time.monotonic()
    probe = accel.boot_probe(blank, "qemu64", seconds=5)
    assert not probe.booted and time.monotonic() - started < 15
