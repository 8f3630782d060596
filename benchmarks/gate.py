"""The regression gate: tight thresholds on ratios measured within one run (they survive a noisy
machine), wide ones on absolute figures (they do not). Exit status 1 and a table on regression."""

from __future__ import annotations

import json
from pathlib import Path

BASELINE = Path(__file__).with_name("baseline.json")

# (name, path in the results, kind, threshold): 'ratio' fails below baseline - threshold (absolute
# points), 'min' below baseline x threshold, 'max' above baseline x threshold.
RULES = [
    ("proxy/direct decode tok/s", ("proxy_overhead", "decode", "ratio_median"), "ratio", 0.15),
    ("proxy/direct TTFT", ("proxy_overhead", "ttft", "ratio_median"), "max", 1.5),
    ("best/x64 variant decode", ("cpu_variant", "ratio_median"), "min", 0.7),
    ("decode tok/s (c=1)", ("single", "client_decode_tps", "p50"), "min", 0.5),
    ("TTFT s (c=1)", ("single", "ttft_s", "p50"), "max", 2.5),
    ("aggregate tok/s (c=4)", ("concurrency", "4", "aggregate_tps"), "min", 0.5),
]


def lookup(results: dict, path: tuple) -> float | None:
    for key in path:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


def compare(baseline: dict, current: dict) -> tuple[bool, list[dict]]:
    rows, ok = [], True
    for name, path, kind, threshold in RULES:
        base, now = lookup(baseline, path), lookup(current, path)
        if base is None or now is None:
            rows.append({"metric": name, "baseline": base, "current": now, "limit": None, "verdict": "not measured"})
            continue
        limit = {"ratio": base - threshold, "min": base * threshold, "max": base * threshold}[kind]
        passed = now <= limit if kind == "max" else now >= limit
        ok &= passed
        rows.append({"metric": name, "baseline": round(base, 3), "current": round(now, 3),
                     "limit": f"{'<=' if kind == 'max' else '>='} {limit:.3f}",
                     "verdict": "ok" if passed else "REGRESSION"})
    return ok, rows


def table(rows: list[dict]) -> str:
    lines = ["| metric | baseline | current | limit | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {r['metric']} | {r['baseline']} | {r['current']} | {r['limit']} | {r['verdict']} |" for r in rows]
    return "\n".join(lines)


def load_baseline(path: Path = BASELINE) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None
