"""letsencrypt mode: certbot HTTP-01 through the appliance's own port 80, against pebble
(Debian's ACME test server) on loopback; and the self-signed fallback when issuance fails."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from conformance.stack import LocalStack
from conformance.support import REPO
from vm_fixtures.util import free_port


def appliance_function(stack: LocalStack, call: str, extra_env: dict) -> subprocess.CompletedProcess:
    script = (f'. "{REPO}/appliance/lib/common.sh"; . "{REPO}/appliance/service.d/appliance.sh"; '
              f'{call}; rc=$?; echo "tls_note=$SLM_TLS_NOTE"; exit $rc')
    return subprocess.run(["bash", "-c", script], env={**stack.env(), **extra_env}, capture_output=True,
                          text=True, timeout=300)


def served_issuer(port: int) -> str:
    pem = ssl.get_server_certificate(("127.0.0.1", port))
    return subprocess.run(["openssl", "x509", "-noout", "-issuer"], input=pem, capture_output=True,
                          text=True).stdout


@pytest.fixture
def pebble(tmp_path):
    if not shutil.which("pebble") or not shutil.which("certbot"):
        pytest.fail("pebble and certbot are required: ./dev installs them")
    cert, key = tmp_path / "pebble.crt", tmp_path / "pebble.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=pebble", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-days", "2",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    port = free_port()

    def start(http_port: int) -> subprocess.Popen:
        config = tmp_path / "pebble.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{port}", "managementListenAddress": f"127.0.0.1:{free_port()}",
            "certificate": str(cert), "privateKey": str(key), "httpPort": http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
        proc = subprocess.Popen(["pebble", "-config", config], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                env={**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"})
        for _ in range(50):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return proc
            time.sleep(0.2)
        proc.kill()
        raise RuntimeError("pebble did not listen")

    procs: list[subprocess.Popen] = []
    yield {"url": f"https://127.0.0.1:{port}/dir", "ca": str(cert),
           "start": lambda http_port: procs.append(start(http_port)) or procs[-1]}
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def letsencrypt_stack(artifacts, tmp_path, acme_url) -> LocalStack:
    stack = LocalStack(artifacts, root=tmp_path / "root", context={
        "ONEAPP_SLM_TLS_MODE": "letsencrypt", "ONEAPP_SLM_DOMAIN": "localhost",
        "ONEAPP_SLM_ACME_EMAIL": "ops@example.com", "ONEAPP_SLM_ACME_SERVER": acme_url})
    stack.configure()
    stack.start_nginx()  # HTTP-01 is answered by the appliance's own port-80 server
    return stack


def test_issuance_against_pebble(artifacts, tmp_path, pebble):
    stack = letsencrypt_stack(artifacts, tmp_path, pebble["url"])
    try:
        assert "SLM-Copilot appliance CA" in served_issuer(stack.ports["https"])  # until issuance
        pebble["start"](stack.ports["http"])
        out = appliance_function(stack, "validate && try_letsencrypt", {"REQUESTS_CA_BUNDLE": pebble["ca"]})
        assert out.returncode == 0, out.stdout[-1500:] + out.stderr[-1500:]
        assert "tls_note=Let's Encrypt certificate for localhost" in out.stdout
        stack.reload_nginx()
        assert "Pebble" in served_issuer(stack.ports["https"])
        stack.configure()  # the next boot keeps serving the issued certificate
        stack.reload_nginx()
        assert "Pebble" in served_issuer(stack.ports["https"])
    finally:
        stack.stop()


def test_failed_issuance_keeps_self_signed_and_says_so(artifacts, tmp_path, pebble):
    stack = letsencrypt_stack(artifacts, tmp_path, pebble["url"])  # pebble never started: unreachable
    try:
        out = appliance_function(stack, "validate && try_letsencrypt", {"REQUESTS_CA_BUNDLE": pebble["ca"]})
        assert out.returncode != 0
        assert "tls_note=Let's Encrypt issuance failed: serving the self-signed certificate" in out.stdout
        assert "SLM-Copilot appliance CA" in served_issuer(stack.ports["https"])
    finally:
        stack.stop()


def test_renewal_reaches_what_nginx_serves(artifacts, tmp_path, pebble):
    """certbot's renewal writes live/; the daily `service renew` (no context in its environment)
    copies it to what nginx serves. Without it the served certificate expires after the last boot."""
    stack = letsencrypt_stack(artifacts, tmp_path, pebble["url"])
    try:
        pebble["start"](stack.ports["http"])
        env = {"REQUESTS_CA_BUNDLE": pebble["ca"]}
        assert appliance_function(stack, "validate && try_letsencrypt", env).returncode == 0
        stack.reload_nginx()
        issued = ssl.get_server_certificate(("127.0.0.1", stack.ports["https"]))
        renewal = subprocess.run(
            ["certbot", "renew", "--force-renewal", "--non-interactive", "--no-random-sleep-on-renew",
             "--config-dir", stack.path("/etc/letsencrypt"), "--work-dir", stack.path("/var/lib/letsencrypt"),
             "--logs-dir", stack.path("/var/log/letsencrypt")],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
        assert renewal.returncode == 0, renewal.stdout[-1500:] + renewal.stderr[-1500:]
        timer_env = {k: v for k, v in stack.env().items() if not k.startswith("ONEAPP_")}
        out = subprocess.run([REPO / "appliance/service.sh", "renew"], env=timer_env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        live = stack.path("/etc/letsencrypt/live/localhost/fullchain.pem").read_text()
        assert stack.path("/var/lib/slm-copilot/tls/active.crt").read_text() == live
        stack.reload_nginx()  # the image's renew reloads nginx through systemd (checked on the vm target)
        served = ssl.get_server_certificate(("127.0.0.1", stack.ports["https"]))
        assert served != issued and served.strip() in live, "nginx still serves the certificate of the last boot"
    finally:
        stack.stop()
