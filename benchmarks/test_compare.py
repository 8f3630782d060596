"""Is NEW slower than OLD? (`--compare OLD NEW`), and the comparison's own controls: this build
against itself is not flagged; against itself made slower (one engine thread) it is."""

from __future__ import annotations

import contextlib
import os

import pytest

from conformance.support import REPO, not_applicable
from conformance.targets import target_class

from . import compare
from .compare import Build, regressions, served

# (max_tokens, prompt repeats) per target. A TCG guest computed 3.3 prompt tokens/s (measured): 10
# repeats took 34 min for both controls; 3 keep a round under half a minute.
SIZES = {"local": (64, 40), "vm": (16, 3)}


@pytest.fixture(scope="module")
def platform(settings, heavy):
    """libvirt for the vm target (both images booted at once), None for the local one."""
    cls = target_class(settings)
    if settings.target not in SIZES:
        not_applicable(f"comparing builds needs them served here: the local or vm target (not {settings.target})")
    if not cls.per_cpu_model:
        yield None
        return
    with cls.sharing(settings) as shared:
        yield shared


def compared(settings, platform, rounds: int, old: Build, new: Build) -> dict[str, dict]:
    max_tokens, repeats = SIZES[settings.target]
    logs = REPO / settings.reports_dir / "logs" / "benchmark-compare"
    with contextlib.ExitStack() as running:
        old_ep = running.enter_context(served(old, platform, settings.ci_full_model, logs / "old"))
        new_ep = running.enter_context(served(new, platform, settings.ci_full_model, logs / "new"))
        return compare.judge(compare.measure(old_ep, new_ep, rounds, max_tokens, repeats))


def record(results: dict, title: str, old: Build, new: Build, rounds: int, verdicts: dict) -> None:
    results.setdefault("compare", {})[title] = {"markdown": compare.markdown(title, old, new, rounds, verdicts),
                                                "verdicts": verdicts}


def test_compare(request, settings, platform, results, rounds):
    """The release engineer's question, OLD and NEW from the command line."""
    old_spec, new_spec = request.config.getoption("--compare")
    old = compare.resolve(old_spec, settings.target, settings)
    new = compare.resolve(new_spec, settings.target, settings)
    verdicts = compared(settings, platform, rounds, old, new)
    record(results, "NEW against OLD", old, new, rounds, verdicts)
    assert not regressions(verdicts), f"NEW is slower than OLD:\n{compare.table(verdicts)}"


def this_build(settings) -> Build:
    return Build("this checkout", image=REPO / settings.image) if target_class(settings).per_cpu_model else \
        Build("this checkout", artifacts=REPO / settings.artifacts)


def test_compare_same_build_not_flagged(settings, platform, results, rounds):
    """Control: OLD against itself (two instances of one build) is within noise on every figure."""
    old = this_build(settings)
    verdicts = compared(settings, platform, rounds, old, old)
    record(results, "this build against itself (control)", old, old, rounds, verdicts)
    assert not regressions(verdicts), f"the same build was called slower than itself:\n{compare.table(verdicts)}"


def test_compare_flags_slowed_build(settings, platform, results, rounds):
    """Negative control: NEW = this build with one engine thread where OLD has every core."""
    if settings.target == "local" and (os.cpu_count() or 1) < 2:
        not_applicable("one core: a build slowed by taking threads away needs two")
    old = this_build(settings)
    slow = old.with_context("this checkout, one engine thread", ONEAPP_SLM_THREADS="1")
    verdicts = compared(settings, platform, rounds, old, slow)
    record(results, "this build against itself on one thread (negative control)", old, slow, rounds, verdicts)
    assert regressions(verdicts), f"a build slowed to one thread passed as no slower:\n{compare.table(verdicts)}"
