"""Reports never hold the API key, whatever a failing check prints or raises.

A copy of the suite gets one extra check that fails the worst way (the key in its output, in its
assertion, in its figures, and the Endpoint in its traceback); after a local run every file the
suite wrote (JUnit, JSON, Markdown, collected logs) is searched for the key."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from conformance.support import REPO

LEAKY_CHECK = '''
import os


def test_a_check_that_leaks(endpoint, record):
    key = endpoint.api_key
    with open(os.environ["SLM_TEST_KEY_FILE"], "w") as fh:  # for the test to search for, not a report
        fh.write(key)
    print("the key is", key)
    record({"key": key})
    assert key == "not the key", f"{endpoint!r} was asked with {key}"
'''


def test_no_report_or_log_holds_the_key(tmp_path, artifacts):
    copy = tmp_path / "suite"
    copy.mkdir()
    shutil.copytree(REPO / "conformance", copy / "conformance", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "conformance" / "test_zz_leaky.py").write_text(LEAKY_CHECK)
    for shared in ("appliance", "build", "packer", "pyproject.toml"):
        (copy / shared).symlink_to(REPO / shared)
    reports = tmp_path / "reports"
    key_file = tmp_path / "the-key"
    env = {**os.environ, "SLM_CONFORMANCE_REPORTS_DIR": str(reports), "PYTHONPATH": str(copy),
           "SLM_TEST_KEY_FILE": str(key_file)}
    run = subprocess.run([sys.executable, "-m", "pytest", "conformance", "--target", "local", "-k", "leaks",
                          "-p", "no:cacheprovider"], cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "1 failed" in run.stdout, run.stdout[-2000:]
    results = json.loads((reports / "results-local.json").read_text())["results"]
    key = next(iter(results))["figures"]["key"]
    assert key == "[REDACTED API KEY]", f"the figure was not masked: {key[:6]}..."
    written = [p for p in reports.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"junit-local.xml", "results-local.json", "summary-local.md"}
    assert any("logs" in p.parts for p in written), "no logs were collected for the failing check"
    secret = key_file.read_text()
    assert secret.startswith("sk-") and len(secret) > 40
    for path in written:
        text = path.read_text(errors="replace")
        assert "[REDACTED API KEY]" in text or path.suffix == ".log", f"{path.name}: the failure is not reported"
        assert secret not in text, f"{path.relative_to(reports)} holds the API key"
    assert secret not in run.stdout + run.stderr, "the terminal shows the key"
