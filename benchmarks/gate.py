"""The regression gate against a stored baseline. Absolute figures (tok/s, TTFT) and the CPU-variant
ratio are properties of the hardware: they are compared only with a baseline taken on the same kind
of host (benchmarks/baselines/<host key>.json). Ratios measured within one run that the hardware
does not set (the proxy against the engine directly) are compared with any baseline of the target.
A host with no baseline of its own gets rows that say so, never a failure. Each workload has its
rules and its baselines (the sessions workload's files end in -sessions.json)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

BASELINES = Path(__file__).with_name("baselines")
# Memory bandwidth sets decode speed: a host whose copy bandwidth is this far from its baseline's
# is another machine under the same CPU name (a cloud "AMD EPYC" spans generations).
BANDWIDTH_TOLERANCE = 0.3


@dataclass(frozen=True)
class Rule:
    metric: str
    path: tuple[str, ...]
    kind: str  # 'ratio': fails below baseline - threshold; 'min': below baseline x threshold; 'max': above it
    threshold: float
    portable: bool  # hardware-independent: compared across hosts
    workload: str = "throughput"  # the --workload whose results hold it


RULES = [
    Rule("proxy/direct decode tok/s", ("proxy_overhead", "decode", "ratio_median"), "ratio", 0.15, True),
    Rule("proxy/direct TTFT", ("proxy_overhead", "ttft", "ratio_median"), "max", 1.5, True),
    Rule("best/x64 variant decode", ("cpu_variant", "ratio_median"), "min", 0.7, False),
    Rule("decode tok/s (c=1)", ("single", "client_decode_tps", "p50"), "min", 0.5, False),
    Rule("TTFT s (c=1)", ("single", "ttft_s", "p50"), "max", 2.5, False),
    Rule("aggregate tok/s (c=4)", ("concurrency", "4", "aggregate_tps"), "min", 0.5, False),
    # Sessions: the in-run ratio against llama-server's defaults and the cache's share of warm prompts
    # are the appliance's doing on any host; times and goodput are the host's.
    Rule("sessions: appliance/defaults warm TTFT, 1 developer",
         ("sessions_anchor", "1", "appliance_vs_defaults", "warm_ttft"), "min", 0.7, True, "sessions"),
    Rule("sessions: cache hit ratio, 2 developers", ("sessions", "2", "cache_hit_ratio"), "ratio", 0.05, True,
         "sessions"),
    Rule("sessions: Continue's cache hit ratio", ("session_kinds", "continue", "cache_hit_ratio"), "ratio", 0.05,
         True, "sessions"),
    # One developer: two or more interleave differently from run to run (warm TTFT 0.8-1.8x apart).
    Rule("sessions: warm TTFT p50 s, 1 developer", ("sessions", "1", "warm_ttft_s", "p50"), "max", 2.5, False,
         "sessions"),
    Rule("sessions: goodput share, 1 developer", ("sessions", "1", "goodput", "share"), "ratio", 0.25, False,
         "sessions"),
]


def host_key(results: dict, target: str, url: str = "") -> str:
    """What names a kind of host: the target, the CPU's name, its cores and the best engine variant
    it loads (its ISA level). A url target is keyed by the appliance's host, not this machine."""
    suffix = "".join(f"-{part}" for part in workload_of(results) if part not in ("throughput", "ci", ""))
    if target == "url":
        return f"url-{_slug(urlsplit(url).netloc)}{suffix}"
    m = results.get("machine") or {}
    return "-".join([target, _slug(m.get("model") or "unknown-cpu"), f"{m.get('cores')}c",
                     (results.get("engine_variant") or "unknown").replace(",", "+")]) + suffix


def workload_of(results: dict) -> tuple[str, str]:
    """The workload and, for sessions, the shape's name: a baseline answers for runs of both alike
    (a baseline taken before shapes were recorded ran `ci`)."""
    workload = results.get("workload", "throughput")
    return workload, (results.get("sessions_shape") or {}).get("name", "ci") if workload == "sessions" else ""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48]


def baseline_path(key: str) -> Path:
    return BASELINES / f"{key}.json"


def load(key: str) -> dict | None:
    path = baseline_path(key)
    return json.loads(path.read_text()) if path.exists() else None


def save(key: str, results: dict) -> Path:
    BASELINES.mkdir(exist_ok=True)
    path = baseline_path(key)
    path.write_text(json.dumps({**results, "host_key": key}, indent=2, default=str) + "\n")
    return path


def any_of_target(target: str, results: dict) -> dict | None:
    """A baseline of this target and workload (and session shape) from any host (for the portable
    rules), the newest first."""
    for path in sorted(BASELINES.glob(f"{target}-*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        baseline = json.loads(path.read_text())
        if workload_of(baseline) == workload_of(results):
            return baseline
    return None


def lookup(results: dict, path: tuple) -> float | None:
    for key in path:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


def shape_differs(baseline: dict, current: dict) -> str | None:
    """Why a sessions baseline of the same shape's name ran other sessions (fitted to another served
    context), or None: its figures would answer for another workload."""
    old = lookup(baseline, ("sessions_shape", "ran"))
    now = lookup(current, ("sessions_shape", "ran"))
    if old and now and old != now:
        return f"sessions of {now['system_tokens']}+{now['turn_tokens']} tokens against the baseline's " \
               f"{old['system_tokens']}+{old['turn_tokens']}"
    return None


def host_differs(baseline: dict, current: dict) -> str | None:
    """Why a baseline with this host's key was still taken on other hardware, or None."""
    old = lookup(baseline, ("machine", "bandwidth_gbs"))
    now = lookup(current, ("machine", "bandwidth_gbs"))
    if old and now and abs(now / old - 1) > BANDWIDTH_TOLERANCE:
        return f"memory bandwidth {now:.1f} GB/s against the baseline's {old:.1f}"
    return None


def compare(current: dict, own: dict | None, portable: dict | None = None) -> tuple[bool, list[dict]]:
    """`own`: this host's baseline (every rule); `portable`: another host's (portable rules only)."""
    differs = host_differs(own, current) if own else None
    rows, ok = [], True
    for rule in (r for r in RULES if r.workload == current.get("workload", "throughput")):
        baseline, source = own, (own or {}).get("host_key", "this host")
        if differs and not rule.portable:
            rows.append(_row(rule, None, lookup(current, rule.path), f"not compared: {differs}"))
            continue
        if baseline is None and rule.portable:
            baseline, source = portable, (portable or {}).get("host_key", "another host")
        shape = shape_differs(baseline, current) if baseline else None
        if shape:
            rows.append(_row(rule, None, lookup(current, rule.path), f"not compared: {shape}"))
            continue
        if baseline is None:
            rows.append(_row(rule, None, lookup(current, rule.path),
                             "no baseline for this host" if not rule.portable else "no baseline"))
            continue
        base, now = lookup(baseline, rule.path), lookup(current, rule.path)
        if base is None or now is None:
            rows.append(_row(rule, base, now, "not measured"))
            continue
        limit = {"ratio": base - rule.threshold, "min": base * rule.threshold, "max": base * rule.threshold}[rule.kind]
        passed = now <= limit if rule.kind == "max" else now >= limit
        ok &= passed
        rows.append(_row(rule, base, now, "ok" if passed else "REGRESSION",
                         f"{'<=' if rule.kind == 'max' else '>='} {limit:.3f}", source))
    return ok, rows


def _row(rule: Rule, base, now, verdict: str, limit: str | None = None, source: str | None = None) -> dict:
    def r(v):
        return round(v, 3) if isinstance(v, float) else v

    return {"metric": rule.metric, "baseline": r(base), "current": r(now), "limit": limit, "verdict": verdict,
            "baseline_host": source, "portable": rule.portable}


def table(rows: list[dict]) -> str:
    lines = ["| metric | across hosts | baseline | current | limit | verdict | baseline taken on |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['metric']} | {'yes' if r['portable'] else 'no'} | {r['baseline']} | {r['current']} | "
              f"{r['limit']} | {r['verdict']} | {r['baseline_host'] or ''} |" for r in rows]
    return "\n".join(lines)
