"""The benchmark verdicts' rules: which baseline judges which figure, and when a comparison of two
builds calls NEW slower (benchmarks/gate.py, benchmarks/compare.py). Figures here are the committed
baseline's, scaled the way another host or a slower build would scale them."""

from __future__ import annotations

import copy
import json

import pytest

from benchmarks import compare, gate

BASELINE = json.loads((gate.BASELINES / "local-amd-epyc-2c-skylakex.json").read_text())


def other_host(scale: float) -> dict:
    """The same run on a machine `scale` times as fast (absolute figures move, ratios do not)."""
    run = copy.deepcopy(BASELINE)
    run["machine"] = {**run["machine"], "model": "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
                      "bandwidth_gbs": run["machine"]["bandwidth_gbs"] * scale}
    run["single"]["client_decode_tps"]["p50"] *= scale
    run["concurrency"]["4"]["aggregate_tps"] *= scale
    run["cpu_variant"]["ratio_median"] = 3.5  # the AVX-512 host of the issue: a hardware ratio
    return run


def verdicts(rows: list[dict]) -> dict[str, str]:
    return {r["metric"]: r["verdict"] for r in rows}


def test_the_committed_baseline_is_keyed_by_its_host():
    assert gate.host_key(BASELINE, "local") == BASELINE["host_key"] == "local-amd-epyc-2c-skylakex"


def test_a_host_without_baseline_is_reported_not_failed():
    run = other_host(0.4)
    key = gate.host_key(run, "local")
    assert key != BASELINE["host_key"] and gate.load(key) is None
    ok, rows = gate.compare(run, None, BASELINE)
    assert ok, gate.table(rows)
    assert verdicts(rows)["best/x64 variant decode"] == "no baseline for this host"
    assert verdicts(rows)["proxy/direct decode tok/s"] == "ok"  # the portable ratio is still judged


def test_portable_ratios_are_judged_across_hosts():
    run = other_host(2.0)
    run["proxy_overhead"]["decode"]["ratio_median"] = 0.5  # the proxy halves the stream on any host
    ok, rows = gate.compare(run, None, BASELINE)
    assert not ok and verdicts(rows)["proxy/direct decode tok/s"] == "REGRESSION", gate.table(rows)


def test_the_hosts_own_baseline_judges_absolute_figures():
    run = copy.deepcopy(BASELINE)
    run["single"]["client_decode_tps"]["p50"] *= 0.3
    ok, rows = gate.compare(run, BASELINE)
    assert not ok and verdicts(rows)["decode tok/s (c=1)"] == "REGRESSION", gate.table(rows)


def test_same_key_other_hardware_is_not_compared():
    """A cloud's "AMD EPYC" spans generations: a bandwidth far from the baseline's says another machine."""
    run = copy.deepcopy(BASELINE)
    run["machine"]["bandwidth_gbs"] *= 0.5
    run["single"]["client_decode_tps"]["p50"] *= 0.3
    ok, rows = gate.compare(run, BASELINE)
    assert ok, gate.table(rows)
    assert verdicts(rows)["decode tok/s (c=1)"].startswith("not compared: memory bandwidth")


def test_url_target_is_keyed_by_the_appliance():
    assert gate.host_key(BASELINE, "url", "https://10.0.0.5:8443") == "url-10-0-0-5-8443"


@pytest.mark.parametrize(("new_scale", "expected"), [(0.7, "REGRESSION"), (1.0, "same within noise"),
                                                     (1.3, "faster")])
def test_compare_verdict_follows_the_speed(new_scale, expected):
    old = [80.0, 84.0, 79.0, 86.0, 82.0]
    noise = [1.02, 0.97, 1.01, 0.99, 1.03]
    new = [o * new_scale * n for o, n in zip(old, noise, strict=True)]
    assert compare.verdict(old, new, higher_is_better=True)["verdict"] == expected


def test_compare_verdict_inverts_times():
    """TTFT: a longer time is the slower build."""
    assert compare.verdict([1.0, 1.1, 0.9], [1.5, 1.6, 1.4], higher_is_better=False)["verdict"] == "REGRESSION"


def test_compare_noise_is_not_a_regression():
    """Rounds that disagree (one fast, one slow) leave an interval spanning 1: within noise."""
    v = compare.verdict([80, 80, 80, 80, 80], [60, 100, 75, 95, 70], higher_is_better=True)
    assert v["verdict"] == "same within noise" and v["interval"][0] < 1 < v["interval"][1]


# -- the sessions workload's rules ------------------------------------------------------------------

def sessions_run(hit: float = 0.95, vs_defaults: float = 1.0, warm_ttft: float = 0.5, good: float = 1.0) -> dict:
    return {"workload": "sessions", "target": "local", "machine": BASELINE["machine"],
            "engine_variant": BASELINE.get("engine_variant"),
            "sessions": {"1": {"warm_ttft_s": {"p50": warm_ttft}, "goodput": {"share": good}},
                         "2": {"cache_hit_ratio": hit}},
            "sessions_anchor": {"1": {"appliance_vs_defaults": {"warm_ttft": vs_defaults}}},
            "session_kinds": {"continue": {"cache_hit_ratio": hit}}}


def test_sessions_are_keyed_and_judged_apart_from_throughput():
    run = sessions_run()
    assert gate.host_key(run, "local") == BASELINE["host_key"] + "-sessions"
    _, rows = gate.compare(run, sessions_run())
    assert rows and all(r["metric"].startswith("sessions:") for r in rows)
    _, rows = gate.compare(BASELINE, BASELINE)
    assert not any(r["metric"].startswith("sessions:") for r in rows)


@pytest.mark.parametrize(("changed", "broken"), [
    ({"hit": 0.5}, "cache hit ratio"), ({"vs_defaults": 0.5}, "appliance/defaults"),
    ({"warm_ttft": 5.0}, "warm TTFT p50"), ({"good": 0.5}, "goodput")])
def test_a_session_regression_fails_the_gate(changed, broken):
    ok, rows = gate.compare(sessions_run(**changed), sessions_run())
    assert not ok and any(broken in r["metric"] for r in rows if r["verdict"] == "REGRESSION"), gate.table(rows)


def test_session_ratios_judged_across_hosts_times_not():
    ok, rows = gate.compare(sessions_run(warm_ttft=50.0, hit=0.94), None, sessions_run())
    assert ok, gate.table(rows)
    assert {r["metric"] for r in rows if r["verdict"] == "ok"} >= {"sessions: cache hit ratio, 2 developers"}


def shaped(run: dict, name: str, system_tokens: int) -> dict:
    return {**run, "sessions_shape": {"name": name, "ran": {"system_tokens": system_tokens, "turn_tokens": 100}}}


def test_each_session_shape_has_its_own_baseline():
    assert gate.host_key(shaped(sessions_run(), "full", 1910), "local") == BASELINE["host_key"] + "-sessions-full"
    assert gate.host_key(shaped(sessions_run(), "ci", 1500), "local") == BASELINE["host_key"] + "-sessions"


def test_sessions_fitted_otherwise_than_the_baselines_are_not_judged():
    ok, rows = gate.compare(shaped(sessions_run(hit=0.1), "full", 1910), shaped(sessions_run(), "full", 4000))
    assert ok and all(r["verdict"].startswith("not compared: sessions of 1910+100") for r in rows), gate.table(rows)
