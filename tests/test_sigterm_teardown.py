"""A run stopped by SIGTERM still tears down what its fixtures started (a CI time limit must not leave
a VM running): a real pytest run, stopped mid-test, with and without the suite's handler."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conformance.support import REPO

CHECK = textwrap.dedent("""
    import pathlib, time
    import pytest

    @pytest.fixture(scope="session")
    def instance(tmp_path_factory):
        marks = pathlib.Path(__file__).parent
        (marks / "started").touch()
        yield
        (marks / "torn-down").touch()

    def test_long(instance):
        time.sleep(60)
""")


def stopped_run(tmp_path, conftest: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_long.py").write_text(CHECK)
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and run.poll() is None, "the run never reached its fixture"
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    out, _ = run.communicate(timeout=30)
    return subprocess.CompletedProcess(run.args, run.returncode, out)


def test_sigterm_tears_the_fixtures_down(tmp_path):
    run = stopped_run(tmp_path, "from conformance.support import teardown_on_sigterm\n"
                                "def pytest_configure(config):\n    teardown_on_sigterm()\n")
    assert (tmp_path / "torn-down").exists(), run.stdout
    assert run.returncode == pytest.ExitCode.INTERRUPTED, run.stdout
    assert "stopped by SIGTERM" in run.stdout


def test_control_without_the_handler_sigterm_skips_teardown(tmp_path):
    run = stopped_run(tmp_path, "")
    assert not (tmp_path / "torn-down").exists()
    assert run.returncode == -signal.SIGTERM
