"""`--compare OLD NEW`: is this build slower than that one? Both are served side by side on this
host and measured in one run, interleaved (OLD NEW, NEW OLD, ...), so a busy or drifting machine
hits both alike and no figure taken on another host is involved.

The verdict per figure is the speed of NEW against OLD (NEW/OLD for tok/s, OLD/NEW for times: above
1 is faster) in each round, its median, and the 95% interval of that median over the rounds
(bootstrap, scipy). A regression is an interval lying wholly below 1 - FLOOR: slower by more than
FLOOR beyond the spread this run measured. A noisy run widens the interval and says "within
noise" rather than crying wolf."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from artifacts.cache import cache_root
from conformance.endpoint import Endpoint
from conformance.stack import LocalStack
from conformance.support import REPO

from .measure import one_request

FLOOR = 0.05  # the smallest change called a regression: 5% of a figure
# (name, Sample field, higher is better). Prompt figures need a prompt long enough to time, and
# cache_prompt=False (one_request) makes each round compute it anew.
FIGURES = [
    ("engine prompt tok/s", "engine_prompt_tps", True),
    ("engine decode tok/s", "engine_decode_tps", True),
    ("client decode tok/s", "client_decode_tps", True),
    ("TTFT s", "ttft_s", False),
    ("end-to-end s", "e2e_s", False),
]
CODE = "def area(width, height):\n    return width * height  # rectangle\n\n"


def prompt(repeats: int) -> list[dict]:
    """A code-review request whose length is set by `repeats` (about 14 tokens each)."""
    return [{"role": "user", "content": "Review this module and list its bugs:\n\n" + CODE * repeats}]


@dataclass
class Build:
    """One side of a comparison: staged artifacts with an appliance checkout, or an image."""

    spec: str  # as the user named it
    artifacts: Path | None = None
    appliance: Path = REPO / "appliance"
    image: Path | None = None
    context: dict[str, str] = field(default_factory=dict)  # ONEAPP_* on top of the build's defaults

    def with_context(self, spec: str, **context: str) -> Build:
        return Build(spec, self.artifacts, self.appliance, self.image, {**self.context, **context})


class BuildError(ValueError):
    pass


def resolve(spec: str, target: str, settings) -> Build:
    """OLD or NEW as given on the command line: for the local target a folder of staged artifacts,
    `.` (this checkout) or a git ref (checked out and staged beside the cache); for vm an image."""
    if target == "vm":
        image = Path(spec)
        if not image.is_file():
            raise BuildError(f"--compare {spec}: the vm target compares two images (qcow2 files); no file there")
        return Build(spec, image=image.resolve())
    if target != "local":
        raise BuildError(f"--compare needs two builds served on this host: the local or vm target (not {target})")
    if spec == ".":
        return Build(spec, artifacts=REPO / settings.artifacts)
    path = Path(spec)
    if path.is_dir():
        if not (path / "engine").is_dir() or not (path / "model.gguf").exists():
            raise BuildError(f"--compare {spec}: a folder must hold staged artifacts (engine/, model.gguf): "
                             "run `python -m artifacts` in that checkout")
        return Build(spec, artifacts=path.resolve())
    tree = checkout(spec)
    return Build(spec, artifacts=tree / "build" / "artifacts", appliance=tree / "appliance")


def checkout(ref: str) -> Path:
    """A git ref in a worktree of its own, its artifacts staged by its own pins (the engine and model
    come from the shared cache when the pins did not change; else they are built, which takes long)."""
    rev = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=REPO,
                         capture_output=True, text=True)
    if rev.returncode != 0:
        raise BuildError(f"--compare {ref}: not a folder of staged artifacts, `.`, an image or a git ref here")
    sha = rev.stdout.strip()
    tree = cache_root() / "compare" / sha[:12]
    if not (tree / "appliance").is_dir():
        subprocess.run(["git", "worktree", "prune"], cwd=REPO, check=True)
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(tree), sha], cwd=REPO, check=True,
                       capture_output=True)
    # `python -m` puts the worktree first on sys.path: its own artifacts package and pins stage it.
    subprocess.run([sys.executable, "-m", "artifacts"], cwd=tree, check=True)
    return tree


@contextlib.contextmanager
def served(build: Build, platform=None, cpu_model: str = "qemu64", logs: Path | None = None) -> Iterator[Endpoint]:
    """The build serving for the length of the block: a local stack with every core (production's
    default), or the image booted with libvirt (`platform`)."""
    if build.image is not None:
        with platform.booted(build.image, cpu_model, context=build.context, logs=logs) as instance:
            yield Endpoint.of_guest(instance)
        return
    stack = LocalStack(build.artifacts, context=build.context, threads=os.cpu_count() or 1,
                       service=build.appliance / "service.sh")
    try:
        stack.start()
        yield Endpoint.of_stack(stack)
    finally:
        stack.stop()


def measure(old: Endpoint, new: Endpoint, rounds: int, max_tokens: int, repeats: int) -> dict[str, dict]:
    """Per figure, OLD's and NEW's value in each round; the order alternates to cancel drift."""
    messages = prompt(repeats)
    for ep in (old, new):  # page the model in and warm both before anything counts
        one_request(ep, 4, messages)
    values = {name: {"old": [], "new": []} for name, _, _ in FIGURES}
    for i in range(rounds):
        for side, ep in ((("old", old), ("new", new)) if i % 2 == 0 else (("new", new), ("old", old))):
            sample = one_request(ep, max_tokens, messages)
            for name, attr, _ in FIGURES:
                values[name][side].append(getattr(sample, attr))
    return values


def verdict(old: list[float], new: list[float], higher_is_better: bool) -> dict:
    speed = [(n / o if higher_is_better else o / n) for o, n in zip(old, new, strict=True)]
    median = statistics.median(speed)
    low = high = median
    if len(set(speed)) > 1:
        ci = stats.bootstrap((np.array(speed),), np.median, confidence_level=0.95, method="percentile",
                             n_resamples=2000, random_state=0).confidence_interval
        low, high = float(ci.low), float(ci.high)
    if high < 1 - FLOOR:
        word = "REGRESSION"
    elif low > 1 + FLOOR:
        word = "faster"
    else:
        word = "same within noise"
    return {"old_median": statistics.median(old), "new_median": statistics.median(new), "speed": speed,
            "speed_median": median, "interval": [low, high], "verdict": word}


def judge(values: dict[str, dict]) -> dict[str, dict]:
    return {name: verdict(values[name]["old"], values[name]["new"], higher) for name, _, higher in FIGURES}


def regressions(verdicts: dict[str, dict]) -> list[str]:
    return [name for name, v in verdicts.items() if v["verdict"] == "REGRESSION"]


def table(verdicts: dict[str, dict]) -> str:
    lines = ["| figure | OLD median | NEW median | NEW speed vs OLD (median) | 95% interval | verdict |",
             "|---|---|---|---|---|---|"]
    for name, v in verdicts.items():
        low, high = v["interval"]
        lines.append(f"| {name} | {v['old_median']:.3g} | {v['new_median']:.3g} | {v['speed_median']:.3f} | "
                     f"{low:.3f} to {high:.3f} | {v['verdict']} |")
    return "\n".join(lines)


def markdown(title: str, old: Build, new: Build, rounds: int, verdicts: dict[str, dict]) -> str:
    def name(b: Build) -> str:
        extra = " with " + ", ".join(f"{k}={v}" for k, v in b.context.items()) if b.context else ""
        return f"`{b.spec}` ({b.image or b.artifacts}){extra}"

    return "\n".join([f"## {title}", "", f"OLD: {name(old)}", "", f"NEW: {name(new)}", "",
                      f"{rounds} interleaved rounds; a regression is a 95% interval wholly below "
                      f"{1 - FLOOR:.2f} (NEW slower than OLD by more than {FLOOR:.0%} beyond this run's spread).",
                      "", table(verdicts), ""])
