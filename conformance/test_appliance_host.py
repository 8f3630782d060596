"""What only the appliance's host shows: services, sandbox, faults, reboots, reconfiguration.

The host is the booted VM (vm target) or a deployed appliance reached over SSH (url target with
`ssh`); checks marked destructive run there only with `destructive=true`, and hand the appliance
back with its own context, key and generated files. Order matters: the bad-context check runs last.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time

import httpx
import pytest
import testinfra

from vm_fixtures.layout import layout

from . import checks
from .endpoint import Endpoint, stream_chat
from .support import REPO, engine_variants, exposure_score, not_applicable, wait_until

LAYOUT = layout()
# What the guest's CPU offers of what the engine's variants are built for (the report's CPU matrix).
ISA_FLAGS = "pni|ssse3|sse4_1|sse4_2|popcnt|avx|f16c|fma|bmi2|avx2|avx512f|avx512bw|avx512vl|avx512_vnni|avx512_bf16"


def generated_hashes(guest) -> dict[str, str]:
    out = guest.execute("sha256sum " + " ".join(LAYOUT.generated_files)).stdout
    return {line.split()[1]: line.split()[0] for line in out.splitlines()}


def ca_fingerprint(guest) -> str:
    return guest.execute(f"openssl x509 -noout -fingerprint -sha256 -in {LAYOUT.ca_cert}").stdout.strip()


@contextlib.contextmanager
def handed_back(guest):
    """A deployed appliance leaves a reconfiguring check as it came: its own context, key and files."""
    if guest.disposable:
        yield
        return
    before, key = generated_hashes(guest), guest.api_key()
    try:
        yield
    finally:
        guest.reconfigure({"ONEAPP_SLM_API_KEY": key})
    drift = sorted(f for f, h in generated_hashes(guest).items() if before.get(f) != h)
    assert not drift, f"handing the appliance back left these files changed: {drift}"


@pytest.fixture(scope="session")
def host_view(guest):
    """testinfra's view of the appliance's host, over the same SSH access."""
    return testinfra.get_host(
        guest.testinfra_url(), ssh_identity_file=str(guest.ssh_key) if guest.ssh_key else None, timeout=60,
        sudo=guest.user != "root",
        ssh_extra_args="-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes")


@pytest.mark.core
@pytest.mark.target("vm")
@pytest.mark.budget(900)
def test_boot_reaches_ready(guest, record):
    d = guest.decision
    record({**guest.ready, "accel": d.accel, "cpu": d.cpu_mode, "features_off": ",".join(d.disabled_features) or "-"})


@pytest.mark.parametrize("unit", [LAYOUT.engine_unit, "nginx", "ssh"])
def test_service_running(host_view, unit):
    assert host_view.service(unit).is_running, f"{unit} not running"


@pytest.mark.parametrize("unit", [LAYOUT.engine_unit, "nginx", "context"])
def test_service_enabled_at_boot(guest, host_view, unit):
    unit = guest.context_unit.removesuffix(".service") if unit == "context" else unit
    assert host_view.service(unit).is_enabled, f"{unit} not enabled at boot"


def test_engine_runs_unprivileged(host_view):
    engine = host_view.process.get(comm="llama-server")
    assert engine.user == "slm-copilot", f"engine runs as {engine.user}"


def test_engine_listens_on_loopback_only(host_view):
    engine_sockets = [line for line in host_view.check_output("ss -Htlnp").splitlines() if "llama-server" in line]
    assert engine_sockets and all("127.0.0.1:" in line for line in engine_sockets), engine_sockets


@pytest.mark.parametrize("path", LAYOUT.secret_files + ("/run/one-context/one_env",),
                         ids=lambda path: path.rsplit("/", 1)[-1])
def test_secret_readable_by_root_only(host_view, path):
    f = host_view.file(path)
    assert f.exists and f.user == "root" and f.mode & 0o077 == 0, f"{path}: mode {oct(f.mode) if f.exists else None}"


def test_api_key_absent_from_journal_and_logs(host_view):
    # The key is read by grep from its file: never on a command line, never on this side.
    leaks = host_view.run(f"journalctl -b --no-pager | grep -c -F -f {LAYOUT.api_key}; "
                          f"grep -r -l -F -f {LAYOUT.api_key} /var/log | wc -l")
    assert leaks.stdout.split() == ["0", "0"], f"API key found in journal/logs: {leaks.stdout}"


def test_status_and_motd_report_ready(host_view):
    assert host_view.file("/etc/one-appliance/status").content_string.strip() == "bootstrap_success"
    assert "ready to serve" in host_view.file("/etc/motd").content_string


def test_context_agent_reported_ready(guest, host_view):
    if guest.context_unit != "slm-context.service":
        not_applicable("one-context reports READY to OneGate, not in a file")
    assert host_view.file("/run/one-context/ready").content_string.strip() == "READY=YES"


@pytest.mark.target("local")
def test_engine_unit_judged_before_any_boot(record):
    """What the engine's unit would run as, and how sandboxed, judged offline from the appliance's
    own unit file (`systemd-analyze security --offline`): the local target's view of the host checks."""
    unit = REPO / "appliance" / "templates" / f"{LAYOUT.engine_unit}.service"
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=100", unit],
                         capture_output=True, text=True, timeout=60).stdout
    user = next((line for line in out.splitlines() if "User=/DynamicUser=" in line), "")
    assert user.lstrip().startswith("✓"), f"the engine would run as root: {user.strip()}"
    score = exposure_score(out)
    assert score <= 3.0, f"engine sandbox exposure {score} > 3.0"
    record({"engine_exposure_offline": score})


def test_engine_sandbox_exposure(host_view, record):
    score = exposure_score(host_view.run(f"systemd-analyze security {LAYOUT.engine_unit} --no-pager").stdout)
    assert score <= 3.0, f"engine sandbox exposure {score} > 3.0"
    record({"engine_exposure": score})


@pytest.mark.core
def test_engine_cpu_variant(guest, record):
    variants = engine_variants(guest.engine_proc("maps"))
    assert len(variants) == 1, variants
    flags = guest.execute(f"grep -o -w -E '{ISA_FLAGS}' /proc/cpuinfo | sort -u | xargs").stdout.strip()
    have = set(flags.split())
    expected = "skylakex" if "avx512f" in have else "haswell" if "avx2" in have else \
        "sse42" if "sse4_2" in have else "x64"
    assert variants == [expected], f"CPU flags '{flags}' loaded {variants}, expected {expected}"
    record({"variant": variants[0], "cpu_flags": flags or "baseline"})


def test_engine_unreachable_from_the_network(guest, record):
    """The host's own address at the engine port (a VM's is forwarded by slirp) must not answer HTTP."""
    record(checks.engine_port_closed(f"{guest.engine_url}/health"))


@pytest.mark.destructive
def test_engine_port_check_catches_an_exposed_engine(guest):
    """Negative control on the host itself: the same engine bound to every address is caught (a
    firewall in front of a deployed appliance would make the check above vacuous: this says so)."""
    port = LAYOUT.engine_port
    guest.execute(f"systemctl stop {LAYOUT.engine_unit} && systemd-run -q --unit slm-negative-control "
                  f"{LAYOUT.engine_binary} -m {LAYOUT.model} --host 0.0.0.0 --port {port} -t 1 -c 512 && "
                  f"until curl -fs http://127.0.0.1:{port}/health; do sleep 2; done", timeout=600)
    try:
        with pytest.raises(AssertionError):
            checks.engine_port_closed(f"{guest.engine_url}/health")
    finally:
        guest.execute(f"systemctl stop slm-negative-control; systemctl start {LAYOUT.engine_unit}", check=False)
        Endpoint.of_guest(guest).wait_serving(timeout=600)


def kill_and_wait(guest, ep: Endpoint, process: str) -> float:
    """kill -9 a process of the appliance; seconds until its front serves again (systemd restarts it)."""
    guest.execute(f"pkill -9 -x {process}")
    killed = time.monotonic()
    ep.wait_serving(timeout=600)
    return round(time.monotonic() - killed, 1)


@pytest.mark.destructive
def test_engine_killed_mid_stream_ends_the_stream_visibly(guest, record):
    """A client must be able to tell a cut answer from a complete one: no [DONE] after a crash."""
    ep = Endpoint.of_guest(guest)
    result: dict = {}

    def stream():
        try:
            result["stream"] = stream_chat(ep, checks.SHORT_PROMPT, max_tokens=200, ignore_eos=True)
        except httpx.HTTPError as err:
            result["error"] = repr(err)

    worker = threading.Thread(target=stream)
    worker.start()
    time.sleep(15)  # the stream is under way (TCG: a token every ~0.5 s)
    recovery = kill_and_wait(guest, ep, "llama-server")
    worker.join(timeout=120)
    assert not worker.is_alive(), "the in-flight stream hung after the engine died"
    s = result.get("stream")
    assert "error" in result or (s and (not s.events or s.events[-1][1] != "[DONE]")), \
        "the stream looked complete although the engine was killed mid-way"
    record({"in_flight": result.get("error", "stream ended without [DONE]")[:60], "engine_recovery_s": recovery})


@pytest.mark.destructive
def test_engine_restarts_after_kill(guest, record):
    record({"engine_recovery_s": kill_and_wait(guest, Endpoint.of_guest(guest), "llama-server")})


@pytest.mark.destructive
def test_nginx_restarts_after_kill(guest, record):
    record({"nginx_recovery_s": kill_and_wait(guest, Endpoint.of_guest(guest), "nginx")})


def in_flight_request(ep: Endpoint) -> None:
    # The VM loses power under it: any ending is fine, the boot after it is what is under test.
    with contextlib.suppress(httpx.HTTPError):
        stream_chat(ep, checks.SHORT_PROMPT, max_tokens=200, ignore_eos=True)


@pytest.mark.destructive
@pytest.mark.budget(1500)
def test_reboot_idempotency_and_power_cycle(guest, settings, record):
    """Every generated file byte-identical across reboots (5 in a row for a release) and a hard
    power-off; same CA, same key, services back, endpoint answering."""
    before = generated_hashes(guest)
    fingerprint, key = ca_fingerprint(guest), guest.api_key()
    timings = {}
    reboots = 5 if settings.profile == "release" else 2
    for step in [f"reboot-{i + 1}" for i in range(reboots)] + ["power-cycle"]:
        boot_id = guest.current_boot_id()
        if step == "power-cycle":  # pull the plug in the middle of a request
            threading.Thread(target=in_flight_request, args=(Endpoint.of_guest(guest),), daemon=True).start()
            time.sleep(5)
        timings[step] = (guest.power_cycle() if step == "power-cycle" else guest.restart())["ready_s"]
        assert guest.boot_id != boot_id
        after = generated_hashes(guest)
        changed = sorted(f for f in before if after.get(f) != before[f])
        assert not changed, f"after {step}: generated files changed: {changed}"
        assert ca_fingerprint(guest) == fingerprint and guest.api_key() == key
        checks.auth(Endpoint.of_guest(guest))
    record(timings)


@pytest.mark.destructive
def test_reconfigure_new_key_and_context_size(guest, record):
    with handed_back(guest):
        old = Endpoint.of_guest(guest)
        new_key = "sk-conformance-" + str(int(time.time()))
        timings = guest.reconfigure({**guest.context, "ONEAPP_SLM_API_KEY": new_key, "ONEAPP_SLM_CONTEXT_SIZE": "2048"})
        new = Endpoint.of_guest(guest)
        assert new.api_key == new_key
        with new.client() as client:
            assert client.get("/v1/models").status_code == 200
        with old.client() as client:
            assert client.get("/v1/models").status_code == 401, "the old key still works after reconfiguration"
        assert "--ctx-size 2048" in guest.read_file("/etc/slm-copilot/engine.env")
    record(timings)


@pytest.mark.destructive
@pytest.mark.budget(900)
def test_bad_context_keeps_last_good_configuration(guest, record):
    """A hostile, invalid context value: reported by name, never executed, last good config serving."""
    with handed_back(guest):
        good = Endpoint.of_guest(guest)
        before = generated_hashes(guest)
        hostile = "lots$(touch /root/executed)`touch /root/executed`;touch /root/executed"
        guest.reconfigure({**guest.context, "ONEAPP_SLM_THREADS": hostile}, expect_ready=False)
        wait_until(lambda: guest.read_file("/etc/one-appliance/status").strip() == "configure_failure", 900,
                   interval=5, what="the bad context reported as configure_failure")
        rejected = guest.read_file("/etc/one-appliance/config.rejected")
        assert "ONEAPP_SLM_THREADS='lots$(touch" in rejected and "is invalid" in rejected, rejected
        executions = int(guest.execute("ls /root/executed* 2>/dev/null | wc -l").stdout)
        assert executions == 0, "a context value was executed"
        assert "ONEAPP_SLM_THREADS" in guest.read_file("/var/log/one-appliance/configure.log")
        good.wait_serving(timeout=900, interval=5)  # the last good configuration serves again
        after = generated_hashes(guest)
        assert {f: h for f, h in after.items() if "one-appliance/config" not in f} == \
            {f: h for f, h in before.items() if "one-appliance/config" not in f}
    record({"status": "configure_failure", "serving": True, "executions": executions})
