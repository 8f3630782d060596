"""Small helpers shared by the suite's fixtures, checks and the benchmarks (no libvirt, no pytest
fixtures): where the checkout is and parsers of what the appliance's host prints."""

from __future__ import annotations

import re
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vm_fixtures.util import free_port, wait_until  # noqa: F401 (re-exported for the suite)

REPO = Path(__file__).resolve().parent.parent


def teardown_on_sigterm() -> None:
    """A run stopped by SIGTERM (a CI time limit, `timeout`, systemd) unwinds as on Ctrl-C, so pytest
    tears its fixtures down and no VM, nginx or engine outlives the run. Python's default for SIGTERM
    is to exit at once, skipping every `finally`. A second SIGTERM exits at once."""
    def interrupt(signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupt)


def not_applicable(reason: str):
    """A check the target cannot run is reported as such (and fails the release profile)."""
    pytest.skip(f"not applicable: {reason}")


def time_boxed(settings, need_s: float, box_s: float, what: str) -> None:
    """In the ci profile, a check whose work takes longer than `box_s` at the target's measured
    speed (a TCG guest) is reported n/a with the figures; the release profile runs it anyway."""
    if settings.profile != "release" and need_s > box_s:
        not_applicable(f"{what} takes about {need_s:.0f} s at this target's speed, over the ci profile's "
                       f"{box_s:.0f} s: it runs in the release profile")


def engine_variants(proc_maps: str) -> list[str]:
    """The CPU variants (libggml-cpu-<tag>.so) an engine process has mapped, from /proc/<pid>/maps."""
    return sorted(set(re.findall(r"libggml-cpu-(\w+)\.so", proc_maps)))


def prune_cpu_variants(engine_dir: Path, keep: list[str]) -> Path:
    """Leave only the `keep` CPU variants in an engine folder: its runtime dispatch picks among them."""
    for lib in engine_dir.glob("libggml-cpu-*.so"):
        if lib.name.removeprefix("libggml-cpu-").removesuffix(".so") not in keep:
            lib.unlink()
    return engine_dir


def days_left(pem: str) -> float:
    """Days until a PEM certificate's notAfter (negative once it has ended)."""
    end = subprocess.run(["openssl", "x509", "-noout", "-enddate"], input=pem, capture_output=True, text=True,
                         check=True).stdout.strip().split("=", 1)[1]
    ends = datetime.strptime(end, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
    return (ends - datetime.now(UTC)).total_seconds() / 86400


def exposure_score(systemd_analyze_output: str) -> float:
    """The overall exposure that `systemd-analyze security UNIT` prints on its last line."""
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", systemd_analyze_output)
    assert match, f"no exposure level in: {systemd_analyze_output[-300:]!r}"
    return float(match.group(1))
