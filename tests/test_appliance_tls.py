"""appliance/ certificates over time: what the private CA may sign, renewal before the end (the
daily `service renew` the timer runs), and custom certificates nginx would refuse."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from conformance.stack import SERVICE, LocalStack
from conformance.support import days_left

TLS = "/var/lib/slm-copilot/tls"


@pytest.fixture
def stack(artifacts, tmp_path):
    stack = LocalStack(artifacts, root=tmp_path / "root")
    stack.configure()
    return stack


def openssl(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, **kw)


def tls(stack: LocalStack, name: str) -> Path:
    return stack.path(f"{TLS}/{name}")


def issue(stack: LocalStack, out: Path, san: str, days: int = 30, ca: bool = False, signer: Path | None = None):
    """A certificate for `san` signed with the appliance CA's key (as whoever copied it could)."""
    signer = signer or tls(stack, "ca")
    key, csr = out.with_suffix(".key"), out.with_suffix(".csr")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=x",
            "-keyout", key, "-out", csr, check=True)
    ext = out.with_suffix(".ext")
    ext.write_text("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n" if ca
                   else f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", csr, "-CA", signer.with_suffix(".crt"), "-CAkey", signer.with_suffix(".key"),
            "-CAcreateserial", "-days", days, "-out", out, "-extfile", ext, check=True)
    return out


def verifies(stack: LocalStack, cert: Path, *untrusted: Path) -> bool:
    chain = ["-untrusted", untrusted[0]] if untrusted else []
    return openssl("verify", "-CAfile", tls(stack, "ca.crt"), *chain, cert).returncode == 0


def renew(stack: LocalStack) -> subprocess.CompletedProcess:
    """The timer's run: no context in the environment, only what configure recorded."""
    env = {k: v for k, v in stack.env().items() if not k.startswith("ONEAPP_")}
    out = subprocess.run([SERVICE, "renew"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout
    return out


def test_served_certificate_verifies_against_the_ca(stack):
    assert verifies(stack, tls(stack, "server.crt"))


@pytest.mark.parametrize("san", ["DNS:github.com", "DNS:pypi.org", "DNS:localhost.evil.example",
                                 "DNS:github.com,IP:127.0.0.1"])
def test_ca_cannot_sign_for_other_sites(stack, tmp_path, san):
    assert not verifies(stack, issue(stack, tmp_path / "forged.crt", san)), f"the appliance CA vouches for {san}"


def test_ca_constrains_no_address(stack):
    """Claude Code refuses a CA that lists an IP constraint, whatever name it connects to."""
    ext = openssl("x509", "-noout", "-ext", "nameConstraints", "-in", tls(stack, "ca.crt")).stdout
    assert "Permitted:" in ext and "DNS:localhost" in ext, ext
    assert "IP:" not in ext, f"the CA constrains addresses: Claude Code cannot trust it\n{ext}"


def test_ca_of_an_earlier_version_reissued(stack):
    """A CA constraining addresses (before 2026-11-23) is replaced at the next renewal."""
    names = tls(stack, "ca.names")
    names.write_text(names.read_text().strip() + ",permitted;IP:10.0.0.0/255.0.0.0\n")
    ca = tls(stack, "ca.crt").read_bytes()
    out = renew(stack)
    assert tls(stack, "ca.crt").read_bytes() != ca and "clients must trust the new" in out.stdout, out.stdout
    assert "IP:" not in tls(stack, "ca.names").read_text()


def test_ca_cannot_make_intermediates(stack, tmp_path):
    sub = issue(stack, tmp_path / "sub.crt", "", ca=True)
    leaf = issue(stack, tmp_path / "leaf.crt", "DNS:localhost", signer=sub)
    assert not verifies(stack, leaf, sub), "a CA under the appliance CA was accepted (path length)"


def test_ca_covers_a_new_private_address_without_reissue(stack, tmp_path):
    assert verifies(stack, issue(stack, tmp_path / "lan.crt", "IP:10.20.30.40,IP:192.168.7.9,DNS:localhost"))


def test_server_certificate_renewed_before_it_ends(stack, tmp_path):
    ca = tls(stack, "ca.crt").read_bytes()
    sans = tls(stack, "server.sans").read_text().strip()
    short = issue(stack, tmp_path / "short.crt", sans, days=5)
    tls(stack, "server.crt").write_bytes(short.read_bytes())
    tls(stack, "server.key").write_bytes(short.with_suffix(".key").read_bytes())
    out = renew(stack)
    assert days_left(tls(stack, "server.crt").read_text()) > 300, out.stdout
    assert tls(stack, "active.crt").read_text().startswith(tls(stack, "server.crt").read_text())
    assert tls(stack, "ca.crt").read_bytes() == ca, "renewing the server certificate must keep the CA"
    assert verifies(stack, tls(stack, "server.crt"))


def test_ca_renewed_before_it_ends(stack):
    openssl("req", "-x509", "-key", tls(stack, "ca.key"), "-days", 100, "-subj", "/CN=old CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-out", tls(stack, "ca.crt"), check=True)
    out = renew(stack)
    assert days_left(tls(stack, "ca.crt").read_text()) > 1000, out.stdout
    assert "clients must trust the new" in out.stdout
    assert verifies(stack, tls(stack, "server.crt")), "the server certificate must be re-issued under the new CA"


def test_renewal_with_nothing_due_changes_nothing(stack):
    before = {p.name: p.read_bytes() for p in stack.path(TLS).iterdir()}
    renew(stack)
    assert {p.name: p.read_bytes() for p in stack.path(TLS).iterdir()} == before


def _custom(tmp: Path, *newkey: str) -> dict[str, str]:
    openssl("req", "-x509", "-newkey", *newkey, "-nodes", "-subj", "/CN=custom", "-days", 30,
            "-keyout", tmp / "c.key", "-out", tmp / "c.crt", check=True)
    return {"ONEAPP_SLM_TLS_MODE": "custom",
            "ONEAPP_SLM_TLS_CERT": base64.b64encode((tmp / "c.crt").read_bytes()).decode(),
            "ONEAPP_SLM_TLS_KEY": base64.b64encode((tmp / "c.key").read_bytes()).decode()}


def test_renewal_keeps_a_custom_certificate(stack, tmp_path):
    stack.context = _custom(tmp_path, "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
    stack.configure()
    renew(stack)
    assert tls(stack, "active.crt").read_bytes() == (tmp_path / "c.crt").read_bytes()


@pytest.mark.parametrize("newkey,why", [(("rsa", "-pkeyopt", "rsa_keygen_bits:1024"), "1024-bit rsaEncryption"),
                                        (("ec", "-pkeyopt", "ec_paramgen_curve:P-192"), "192-bit id-ecPublicKey")])
def test_weak_custom_key_refused_by_name(stack, tmp_path, newkey, why):
    if newkey[0] == "ec" and openssl("ecparam", "-name", "P-192").returncode != 0:
        pytest.skip("this OpenSSL has no P-192")
    before = tls(stack, "active.crt").read_bytes()
    stack.context = _custom(tmp_path, *newkey)
    out = stack.configure(check=False)
    assert out.returncode != 0 and "ONEAPP_SLM_TLS_CERT" in out.stdout and why in out.stdout, out.stdout
    assert tls(stack, "active.crt").read_bytes() == before, "a refused certificate must not replace the served one"


def test_expired_custom_certificate_refused_by_name(stack, tmp_path):
    # openssl x509 takes no past end date in OpenSSL 3.0; `openssl ca -selfsign` does.
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "index.txt").touch()
    (tmp_path / "db" / "serial").write_text("01\n")
    (tmp_path / "ca.cnf").write_text(f"[ca]\ndefault_ca=d\n[d]\ndatabase={tmp_path}/db/index.txt\n"
                                     f"new_certs_dir={tmp_path}/db\nserial={tmp_path}/db/serial\n"
                                     "default_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=old",
            "-keyout", tmp_path / "c.key", "-out", tmp_path / "c.csr", check=True)
    openssl("ca", "-batch", "-config", tmp_path / "ca.cnf", "-selfsign", "-keyfile", tmp_path / "c.key",
            "-in", tmp_path / "c.csr", "-startdate", "20190101000000Z", "-enddate", "20200101000000Z",
            "-out", tmp_path / "c.crt", check=True)
    stack.context = {"ONEAPP_SLM_TLS_MODE": "custom",
                     "ONEAPP_SLM_TLS_CERT": base64.b64encode((tmp_path / "c.crt").read_bytes()).decode(),
                     "ONEAPP_SLM_TLS_KEY": base64.b64encode((tmp_path / "c.key").read_bytes()).decode()}
    out = stack.configure(check=False)
    assert out.returncode != 0 and "ONEAPP_SLM_TLS_CERT" in out.stdout and "expired" in out.stdout, out.stdout


def test_rsa_2048_custom_certificate_accepted(stack, tmp_path):
    stack.context = _custom(tmp_path, "rsa", "-pkeyopt", "rsa_keygen_bits:2048")
    stack.configure()
    assert stack.nginx_test().returncode == 0

