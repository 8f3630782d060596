"""How the conformance suite is pointed at a target: settings layers, validation, SSH access."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.settings import Settings
from conformance.support import REPO
from vm_fixtures import Guest

URL_ENV = {"SLM_CONFORMANCE_TARGET": "url", "SLM_CONFORMANCE_URL": "https://10.0.0.5",
           "SLM_CONFORMANCE_API_KEY": "sk-secret-value"}


@pytest.fixture
def env(monkeypatch):
    for name, value in URL_ENV.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_layers_file_then_environment_then_options(env, tmp_path):
    config = tmp_path / "target.toml"
    config.write_text('[conformance]\nprofile = "release"\nssh = "admin@10.0.0.5:2222"\ndestructive = false\n')
    env.setenv("SLM_CONFORMANCE_DESTRUCTIVE", "yes")
    settings = Settings.load(str(config), profile="ci")
    assert (settings.profile, settings.ssh, settings.destructive) == ("ci", "admin@10.0.0.5:2222", True)
    assert settings.redacted()["api_key"] == "***"


def test_destructive_without_ssh_is_refused_by_name(env):
    env.setenv("SLM_CONFORMANCE_DESTRUCTIVE", "1")
    with pytest.raises(ValueError, match="destructive=true needs ssh"):
        Settings.load()


@pytest.mark.parametrize(("name", "value", "message"), [
    ("SLM_CONFORMANCE_TARGET", "cloud", "target='cloud'"),
    ("SLM_CONFORMANCE_PROFILE", "nightly", "profile='nightly'"),
    ("SLM_CONFORMANCE_API_KEY", "", "target=url needs url and api_key"),
])
def test_bad_settings_name_the_field(env, name, value, message):
    env.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        Settings.load()


def test_guest_from_ssh_setting():
    guest = Guest.from_ssh("admin@10.0.0.5:2222", "/keys/id", https_url="https://api.example.org:8443/",
                           ca_file="ca.crt")
    assert (guest.user, guest.host, guest.ssh_port, guest.ssh_key) == ("admin", "10.0.0.5", 2222, Path("/keys/id"))
    assert (guest.https_url, guest.http_url) == ("https://api.example.org:8443", "http://api.example.org")
    assert guest.engine_url == "http://api.example.org:8081"
    assert guest.trusted_ca() == Path("ca.crt") and not guest.disposable
    # A non-root user reaches the appliance's files through sudo, the command quoted as one word.
    assert guest.ssh_command("cat /etc/one-appliance/config")[-1] == "sudo -n bash -c 'cat /etc/one-appliance/config'"
    assert Guest.from_ssh("10.0.0.5").ssh_command("true")[-2:] == ["root@10.0.0.5", "true"]


@pytest.mark.parametrize("target", ["admin@", "admin@host:ssh", ""])
def test_guest_from_bad_ssh_setting(target):
    with pytest.raises(ValueError, match="expected user@host"):
        Guest.from_ssh(target)


def test_destructive_checks_wait_for_the_operators_opt_in(tmp_path):
    """Against a url target without destructive=true nothing is killed, rebooted or reconfigured:
    every destructive check is reported not applicable before it reaches the appliance (port 9
    here: a check that tried would fail, not skip)."""
    env = {**os.environ, **URL_ENV, "SLM_CONFORMANCE_URL": "https://127.0.0.1:9",
           "SLM_CONFORMANCE_SSH": "root@127.0.0.1:9", "SLM_CONFORMANCE_REPORTS_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "pytest", "conformance", "-m", "destructive", "-p", "no:cacheprovider"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    results = json.loads((tmp_path / "results-url.json").read_text())["results"]
    assert run.returncode == 0, run.stdout[-2000:]
    skipped = re.search(r"(\d+) skipped", run.stdout)
    assert results and {r["outcome"] for r in results} == {"skipped"}
    assert skipped and len(results) == int(skipped.group(1)), "every destructive check has its row"
    assert all("opt in with SLM_CONFORMANCE_DESTRUCTIVE=1" in r["reason"] for r in results)


def test_the_key_never_shows_in_a_repr():
    """Tracebacks and JUnit reports print objects by their repr: the key must not be in it."""
    from conformance.endpoint import Endpoint

    key = "sk-" + "k" * 48
    assert key not in repr(Endpoint("https://appliance", key, None))
    assert key not in repr(Settings(target="url", url="https://appliance", api_key=key))
    assert Settings(target="url", url="https://appliance", api_key=key).redacted()["api_key"] == "***"
