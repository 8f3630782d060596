"""What only the appliance's host shows: services, sandbox, faults, reboots, reconfiguration.

The host is the booted VM (vm target) or a deployed appliance reached over SSH (url target with
`ssh`); checks marked destructive run there only with `destructive=true`, and hand the appliance
back with its own context, key and generated files. Order matters: the bad-context check runs last.
"""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import pytest
import testinfra

from . import checks
from .endpoint import Endpoint, stream_chat

GENERATED = ('bash -c \'. /etc/one-appliance/lib/common.sh; . /etc/one-appliance/service.d/appliance.sh; '
             'printf "%s\\n" "${SLM_GENERATED_FILES[@]}"\'')
API_KEY = "/var/lib/slm-copilot/api_key"
# What the guest's CPU offers of what the engine's variants are built for (the report's CPU matrix).
ISA_FLAGS = "pni|ssse3|sse4_1|sse4_2|popcnt|avx|f16c|fma|bmi2|avx2|avx512f|avx512bw|avx512vl|avx512_vnni|avx512_bf16"


def generated_hashes(guest) -> dict[str, str]:
    files = guest.execute(GENERATED).stdout.split()
    out = guest.execute("sha256sum " + " ".join(files)).stdout
    return {line.split()[1]: line.split()[0] for line in out.splitlines()}


def ca_fingerprint(guest) -> str:
    return guest.execute("openssl x509 -noout -fingerprint -sha256 -in /var/lib/slm-copilot/tls/ca.crt").stdout.strip()


@contextlib.contextmanager
def handed_back(guest):
    """A deployed appliance leaves a reconfiguring check as it came: its own context, key and files."""
    if guest.disposable:
        yield
        return
    before, key = generated_hashes(guest), guest.read_file(API_KEY).strip()
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
def test_boot_reaches_ready(vm, record):
    d = vm.decision
    record({**vm.ready, "accel": d.accel, "cpu": d.cpu_mode, "features_off": ",".join(d.disabled_features) or "-"})


def test_host_services_users_and_secrets(guest, host_view, record):
    for unit in ("slm-copilot-engine", "nginx", "ssh"):
        assert host_view.service(unit).is_running, f"{unit} not running"
    for unit in ("slm-copilot-engine", "nginx", guest.context_unit.removesuffix(".service")):
        assert host_view.service(unit).is_enabled, f"{unit} not enabled at boot"
    engine = host_view.process.get(comm="llama-server")
    assert engine.user == "slm-copilot", f"engine runs as {engine.user}"
    listeners = host_view.check_output("ss -Htlnp")
    engine_sockets = [line for line in listeners.splitlines() if "llama-server" in line]
    assert engine_sockets and all("127.0.0.1:" in line for line in engine_sockets), engine_sockets
    for path in ("/var/lib/slm-copilot/api_key", "/etc/one-appliance/config", "/etc/slm-copilot/secret.conf",
                 "/var/lib/slm-copilot/tls/ca.key", "/var/lib/slm-copilot/tls/server.key",
                 "/run/one-context/one_env"):
        f = host_view.file(path)
        assert f.exists and f.user == "root" and f.mode & 0o077 == 0, f"{path}: mode {oct(f.mode)}"
    # The key is read by grep from its file: never on a command line, never on this side.
    leaks = host_view.run(f"journalctl -b --no-pager | grep -c -F -f {API_KEY}; "
                          f"grep -r -l -F -f {API_KEY} /var/log | wc -l")
    assert leaks.stdout.split() == ["0", "0"], f"API key found in journal/logs: {leaks.stdout}"
    assert host_view.file("/etc/one-appliance/status").content_string.strip() == "bootstrap_success"
    assert "ready to serve" in host_view.file("/etc/motd").content_string
    if guest.context_unit == "slm-context.service":  # one-context reports READY to OneGate instead
        assert host_view.file("/run/one-context/ready").content_string.strip() == "READY=YES"
    score = checks.exposure_score(host_view.run("systemd-analyze security slm-copilot-engine --no-pager").stdout)
    assert score <= 3.0, f"engine sandbox exposure {score} > 3.0"
    record({"engine_exposure": score})


@pytest.mark.core
def test_engine_cpu_variant(guest, record):
    variants = checks.engine_variants(guest.engine_proc("maps"))
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
    guest.execute("systemctl stop slm-copilot-engine && systemd-run -q --unit slm-negative-control "
                  "/opt/slm-copilot/engine/llama-server -m /opt/slm-copilot/models/model.gguf "
                  "--host 0.0.0.0 --port 8081 -t 1 -c 512 && "
                  "until curl -fs http://127.0.0.1:8081/health; do sleep 2; done", timeout=600)
    try:
        with pytest.raises(AssertionError):
            checks.engine_port_closed(f"{guest.engine_url}/health")
    finally:
        guest.execute("systemctl stop slm-negative-control; systemctl start slm-copilot-engine", check=False)
        Endpoint.of_guest(guest).wait_serving(timeout=600)


@pytest.mark.destructive
def test_engine_killed_restarts_and_stream_ends_visibly(guest, record):
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
    guest.execute("pkill -9 -x llama-server")
    killed = time.monotonic()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the in-flight stream hung after the engine died"
    s = result.get("stream")
    assert "error" in result or (s and (not s.events or s.events[-1][1] != "[DONE]")), \
        "the stream looked complete although the engine was killed mid-way"
    ep.wait_serving(timeout=600)  # systemd restarts the engine, which reloads the model
    recovered = round(time.monotonic() - killed, 1)
    guest.execute("pkill -9 -x nginx")
    killed = time.monotonic()
    while guest.health() != 200:
        assert time.monotonic() - killed < 120, "nginx did not come back after kill -9"
        time.sleep(1)
    record({"engine_recovery_s": recovered, "nginx_recovery_s": round(time.monotonic() - killed, 1),
            "in_flight": result.get("error", "stream ended without [DONE]")[:60]})


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
    fingerprint, key = ca_fingerprint(guest), guest.read_file(API_KEY)
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
        assert ca_fingerprint(guest) == fingerprint and guest.read_file(API_KEY) == key
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
        deadline = time.monotonic() + 900
        while guest.read_file("/etc/one-appliance/status").strip() != "configure_failure":
            assert time.monotonic() < deadline, "the bad context was not reported as configure_failure"
            time.sleep(5)
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
