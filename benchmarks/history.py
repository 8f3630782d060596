"""Every run's figures, appended to one JSON-lines file per machine (build, host key, date), and
plotted per figure over builds, one line per host: a slow drift shows, not only a cliff.

The file lives outside the checkout (a fresh clone must not lose it, and a run must not dirty the
tree): SLM_BENCHMARK_HISTORY, else $XDG_STATE_HOME/slm-copilot/benchmark-history.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from conformance.support import REPO

from .gate import RULES, lookup


def default_path() -> Path:
    if os.environ.get("SLM_BENCHMARK_HISTORY"):
        return Path(os.environ["SLM_BENCHMARK_HISTORY"])
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "slm-copilot" / "benchmark-history.jsonl"


def build_id(artifacts: Path | None = None) -> str:
    """The checkout's commit (with -dirty) and the engine build measured: what a point stands for."""
    commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=10"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip() or "no-git"
    manifest = (artifacts or REPO / "build" / "artifacts") / "manifest.json"
    if manifest.exists():
        engine = json.loads(manifest.read_text())["engine"]["source"].get("build_number")
        return f"{commit} engine b{engine}"
    return commit


def figures(results: dict) -> dict[str, float]:
    """The gate's figures plus any session figures the run measured (flat name -> value)."""
    out = {rule.metric: lookup(results, rule.path) for rule in RULES}
    out.update(results.get("session_figures") or {})
    return {k: v for k, v in out.items() if isinstance(v, int | float)}


def append(path: Path, results: dict, host: str, build: str) -> dict:
    entry = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "build": build, "host": host,
             "target": results.get("target"), "figures": figures(results)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")
    return entry


def read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(entries: list[dict], out: Path) -> Path | None:
    """One panel per figure; x: the runs in order (labelled by build), one line per host."""
    import matplotlib.pyplot as plt

    names = sorted({n for e in entries for n in e["figures"]})
    if not names:
        return None
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.2 * len(names)), squeeze=False, sharex=True)
    for ax, name in zip(axes[:, 0], names, strict=True):
        for host in sorted({e["host"] for e in entries}):
            points = [(i, e["figures"][name]) for i, e in enumerate(entries)
                      if e["host"] == host and name in e["figures"]]
            if points:
                ax.plot(*zip(*points, strict=True), "o-", label=host)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xticks(range(len(entries)), [e["build"] for e in entries], rotation=60, ha="right", fontsize=6)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def markdown(entries: list[dict], path: Path, last: int = 10) -> list[str]:
    if not entries:
        return []
    names = sorted({n for e in entries[-last:] for n in e["figures"]})
    lines = [f"## History ({len(entries)} runs in `{path}`; the last {min(last, len(entries))})", "",
             "| date | build | host | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for e in entries[-last:]:
        lines.append(f"| {e['date']} | {e['build']} | {e['host']} | "
                     + " | ".join(f"{e['figures'][n]:.3g}" if n in e["figures"] else "" for n in names) + " |")
    return [*lines, ""]
