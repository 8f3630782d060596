"""packer/: both builds validate; the context agent reads context.sh as data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conformance.support import REPO
from vm_fixtures.context_iso import context_sh

AGENT = REPO / "packer" / "context" / "slm-context"


def validate(var_file: str, tmp_path: Path, **overrides) -> subprocess.CompletedProcess:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "k"], check=True)
    variables = {"stage_dir": str(tmp_path), "model_id": "m", "ssh_private_key_file": str(tmp_path / "k"),
                 "output_dir": str(tmp_path / "out"), **overrides}
    cmd = ["packer", "validate", f"-var-file={REPO / 'packer' / var_file}",
           *[f"-var={k}={v}" for k, v in variables.items()], str(REPO / "packer")]
    return subprocess.run(cmd, capture_output=True, text=True, env={"CHECKPOINT_DISABLE": "1", "PATH": "/usr/bin:/bin"})


def test_offline_build_validates(tmp_path):
    out = validate("offline.pkrvars.hcl", tmp_path, base_image="file:///var/tmp/base.qcow2",
                   base_checksum="sha256:" + "0" * 64)
    assert out.returncode == 0, out.stdout + out.stderr


def test_production_build_validates(tmp_path):
    # Offline, the checksum list Ubuntu publishes cannot be fetched: validate everything else.
    out = validate("production.pkrvars.hcl", tmp_path, base_checksum="sha256:" + "0" * 64)
    assert out.returncode == 0, out.stdout + out.stderr


def test_required_plugins_kept_away_from_packer_1_6(tmp_path):
    """Packer 1.6.6 rejects required_plugins: it lives in packer/modern/, which 1.6.6 never reads."""
    assert "required_plugins" not in "".join(p.read_text() for p in (REPO / "packer").glob("*.pkr.hcl"))
    assert "required_plugins" in (REPO / "packer" / "modern" / "plugins.pkr.hcl").read_text()


def test_production_build_refuses_the_placeholder_model_hash():
    out = subprocess.run([sys.executable, REPO / "packer" / "build.py", "--production"], capture_output=True,
                         text=True)
    assert out.returncode != 0 and "production_model: sha256 is a placeholder" in out.stderr


def parse(text: str, tmp_path: Path) -> dict[str, str]:
    f = tmp_path / "context.sh"
    f.write_text(text)
    out = subprocess.run([AGENT, "--parse", f], capture_output=True, check=True).stdout.decode()
    items = out.split("\0")[:-1]
    return dict(zip(items[::2], items[1::2], strict=True))


HOSTILE = [
    "it's",
    "$(touch {m})",
    "`touch {m}`",
    "a;touch {m}",
    "line1\nline2\n$(touch {m})",
    "'\\''; touch {m}; '",
    "${{IFS}}",
    "\\",
    "\"double\"",
    "",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_context_agent_reads_values_as_data(value, tmp_path):
    marker = tmp_path / "executed"
    value = value.format(m=marker)
    parsed = parse(context_sh({"ONEAPP_SLM_DOMAIN": value, "SSH_PUBLIC_KEY": "ssh-ed25519 AAA x"}), tmp_path)
    assert parsed == {"ONEAPP_SLM_DOMAIN": value, "SSH_PUBLIC_KEY": "ssh-ed25519 AAA x"}
    assert not marker.exists()


def test_context_agent_skips_what_is_not_an_assignment(tmp_path):
    parsed = parse("# comment\nA='1'\n$(touch /tmp/x) junk\nexport B='2'\nC=bare\n", tmp_path)
    assert parsed == {"A": "1", "B": "2", "C": "bare"}


def test_context_agent_exports_only_appliance_and_opennebula_names():
    text = AGENT.read_text()
    allowed = text.split("allowed='", 1)[1].split("'", 1)[0]
    import re

    for name in ("ONEAPP_SLM_API_KEY", "SSH_PUBLIC_KEY", "SET_HOSTNAME", "REPORT_READY", "ETH0_IP"):
        assert re.match(allowed, name)
    for name in ("PATH", "LD_PRELOAD", "BASH_ENV", "IFS", "ENV", "PS4", "SHELLOPTS"):
        assert not re.match(allowed, name), name
