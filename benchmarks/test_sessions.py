"""Agentic coding sessions (`--workload sessions`): several developers replaying their own sessions
(Cline's at 1, 2, 4 [, 8] developers; Continue's and aider's at 2) at once against the target;
per-turn figures, and the gate a warm turn must pass: it computes only what it added to the
conversation (issue #14's "new tokens plus 5%").

Its negative control: one developer against an engine that picks slots by age alone
(`--slot-prompt-similarity 0`, the advice of an open llama.cpp pull request): each turn lands on
the slot the previous one did not use, and the gate must catch the recomputed history. The
crosstalk check's: the appliance with a response cache planted in nginx, which must be caught
delivering one answer twice.

More developers than slots is a known limitation of the pinned engine, measured and kept visible:
a slot that frees while requests wait is given to the waiting request whose prompt shares the
most with it, which in a team is another developer's (the system prompt is the same), and the
engine does not save the history it overwrites when the shared part is over half of it. That
run must fail the gate (an expected failure); if it ever passes, the limitation is gone and the
test says so."""

from __future__ import annotations

import resource
import shlex
from dataclasses import asdict
from functools import partial

import pytest

from conformance import memory
from conformance.endpoint import Endpoint
from conformance.support import REPO
from conformance.targets import Unsupported

from . import cross_check, measure, sessions
from .conftest import appliance_with, direct, engine_with, regression_gate

# A warm turn may compute what it added plus 5%, and one token more: the last token of the previous
# answer was sampled but never fed back, so the engine's cache cannot hold it.
WARM_EXCESS = 1.05
WARM_SLACK_TOKENS = 1
DEVELOPERS = {"ci": [1, 2, 4], "full": [1, 2, 4, 8]}
# What the anchor keeps of the appliance's engine arguments: the model, its name, where it listens,
# and the thread count (a fact of the machine the benchmark runs on, not a tuning).
ANCHOR_KEEPS = ("--host", "--port", "--model", "--alias", "--threads")
# AIPerf's figures over the project's on sessions of the same shape, run back to back, each over the
# engine's own time for the same requests: agreement is a ratio inside this band. They measured
# 0.998-1.000 in three runs while the plain ratios moved 0.84-1.04 (the engine's pace, see README).
AGREEMENT = (0.9, 1.1)
CROSS_CHECK_DEVELOPERS = 1  # two or more interleave prompts and decodes differently run to run
KIND_DEVELOPERS = 2  # Continue's and aider's sessions: several developers, within the default slots
RSS_EVERY_S = 2.0  # the engine's memory sampled during a replay (a vm target reads it over SSH)
APPLIANCE_SLOTS = 2  # ONEAPP_SLM_PARALLEL's default: a url target without SSH does not say its own


def warm_turns_cached(run: dict) -> None:
    """The gate: every warm turn computed at most its new tokens (+5%, +1)."""
    over = [t for t in run["turns"] if t["turn"] and t["computed"] > t["new_tokens"] * WARM_EXCESS + WARM_SLACK_TOKENS]
    assert not over, (f"{len(over)} of {sum(1 for t in run['turns'] if t['turn'])} warm turns recomputed more than "
                      f"they added, e.g. developer {over[0]['developer']} turn {over[0]['turn']}: "
                      f"{over[0]['computed']} tokens computed for {over[0]['new_tokens']} new "
                      f"({over[0]['prompt_tokens']} sent, {over[0]['cached']} from the cache)")


def every_turn_answered(run: dict) -> None:
    assert not run["errors"], f"{len(run['errors'])} of {run['developers']} sessions failed: {run['errors'][:2]}"


def no_crosstalk(run: dict) -> None:
    """Each developer's last answer under load is the one the same request gets alone, and every
    answer is a completion of its own request (none delivered twice)."""
    mixed = [r for r in run["crosstalk"] if not r["identical"]]
    assert not mixed, (f"{len(mixed)} of {len(run['crosstalk'])} answers under load differ from the same request "
                       f"alone, e.g. developer {mixed[0]['developer']} after {mixed[0]['common_prefix_chars']} "
                       f"characters: {mixed[0]['under_load']!r} vs {mixed[0]['alone']!r}")
    replayed = run["answers_served_twice"] + sum(1 for r in run["crosstalk"] if not r["new_completion"])
    assert not replayed, (f"{replayed} answers carried the id of an earlier one: a stored response was delivered "
                          "again instead of a completion of the request (a response cache in the path?)")


def engine_defaults(args: str) -> str:
    words, kept = shlex.split(args), []
    for i, word in enumerate(words):
        if word in ANCHOR_KEEPS:
            kept += words[i:i + 2]
    return shlex.join(kept)


@pytest.fixture(scope="module")
def shape(request, target, endpoint, results) -> sessions.Shape:
    """The shape asked for, fitted to a slot's share of the context the target serves (the test
    model's 8,192 tokens on 2 slots cannot hold `full`'s 10,000-token system prompt; the production
    model's context does). What was asked and what ran are in the report."""
    name = request.config.getoption("--sessions-shape")
    with endpoint.client() as client:
        context = client.get("/v1/models").json()["data"][0]["context_length"]
    slots = served_slots(target) or APPLIANCE_SLOTS
    fitted = sessions.fitted(sessions.SHAPES[name], context // slots)
    results["sessions_shape"] = {"name": name, "asked": asdict(sessions.SHAPES[name]), "ran": asdict(fitted),
                                 "context": context, "slots": slots}
    return fitted


def developer_counts(config) -> list[int]:
    return DEVELOPERS[config.getoption("--sessions-shape")]


def pytest_generate_tests(metafunc):
    if "developers" in metafunc.fixturenames:
        metafunc.parametrize("developers", developer_counts(metafunc.config))


def served_slots(target) -> int | None:
    try:
        return int(target.configured()["SLM_PARALLEL"])
    except Unsupported:  # a url target without SSH: every count is gated
        return None


def engine_rss_mib(target) -> float | None:
    """The engine's resident memory now, where the target shows its process (not a url target)."""
    try:
        kib = memory.engine_rss_kib(target)
    except OSError:  # the process is gone between two samples: the replay's errors will say why
        return None
    return round(kib / 1024, 1) if kib else None


def replay_watched(target, endpoint, developers: int, shape, **kwargs) -> dict:
    """A replay with the engine's resident memory sampled through it (every RSS_EVERY_S seconds),
    and held to the budget configure gave the engine."""
    with measure.sampled(partial(engine_rss_mib, target), RSS_EVERY_S) as rss:
        run = sessions.replay(endpoint, developers, shape, **kwargs)
    try:
        budget = int(target.configured()["SLM_ENGINE_BUDGET_MB"])
    except Unsupported:
        budget = None
    run["engine_rss_mib"] = {"every_s": RSS_EVERY_S, "samples": rss, "peak": max((v for _, v in rss), default=None),
                             "budget": budget}
    return run


def within_memory_budget(run: dict) -> None:
    rss = run["engine_rss_mib"]
    if rss["peak"] is not None and rss["budget"] is not None:
        assert rss["peak"] <= rss["budget"], f"the engine's resident memory reached {rss['peak']} MiB, its budget " \
                                             f"is {rss['budget']} MiB"


def test_sessions(target, endpoint, results, shape, developers):
    run = replay_watched(target, endpoint, developers, shape)
    slots = served_slots(target)
    run["slots"] = slots
    results.setdefault("sessions", {})[str(developers)] = run
    figures = results.setdefault("session_figures", {})
    figures[f"sessions_{developers}_warm_ttft_p50_s"] = run["warm_ttft_s"]["p50"]
    figures[f"sessions_{developers}_cold_ttft_p50_s"] = run["cold_ttft_s"]["p50"]
    figures[f"sessions_{developers}_cache_hit_ratio"] = run["cache_hit_ratio"]
    every_turn_answered(run)
    no_crosstalk(run)
    within_memory_budget(run)
    if slots is None or developers <= slots:
        warm_turns_cached(run)
        return
    try:
        warm_turns_cached(run)
    except AssertionError as e:
        pytest.xfail(f"{developers} developers on {slots} slots (the engine's slot selection, see the module "
                     f"docstring): {e}")
    pytest.fail(f"{developers} developers on {slots} slots now keep their histories: the known limitation "
                "is gone; gate this count and update the README")


@pytest.mark.parametrize("kind", [k for k in sessions.KINDS if k != "cline"])
def test_other_clients_sessions(target, endpoint, results, shape, kind):
    """Continue's and aider's sessions, KIND_DEVELOPERS at once: the same figures and checks; the warm
    turn gate where the client's requests only grow (Continue), aider's excess reported (it re-sends
    its chat files after the history: sessions.py)."""
    run = replay_watched(target, endpoint, KIND_DEVELOPERS, shape,
                         seed_base=2000 + 100 * list(sessions.KINDS).index(kind), kind=kind)
    run["slots"] = served_slots(target)
    results.setdefault("session_kinds", {})[kind] = run
    figures = results.setdefault("session_figures", {})
    figures[f"sessions_{kind}_warm_ttft_p50_s"] = run["warm_ttft_s"]["p50"]
    figures[f"sessions_{kind}_cache_hit_ratio"] = run["cache_hit_ratio"]
    every_turn_answered(run)
    no_crosstalk(run)
    within_memory_budget(run)
    if run["gated"]:
        warm_turns_cached(run)


def test_gate_catches_slots_chosen_by_age(local_stack, shape):
    with engine_with(local_stack, lambda args: f"{args} --slot-prompt-similarity 0") as stack:
        stack.start_nginx()
        run = sessions.replay(Endpoint.of_stack(stack), 1, shape)
    with pytest.raises(AssertionError, match="warm turns recomputed"):
        warm_turns_cached(run)


def response_cache(cache_dir) -> dict:
    """A defect planted in the rendered appliance, as a hurried tuning would: nginx's usual
    micro-caching recipe (buffered, the upstream's caching headers ignored) with POSTs included,
    under nginx's default key, which leaves the request body out. Every request to a URI then gets
    the first answer stored there, and the same request sent again alone gets it too: equal, so
    comparing the text alone would pass it."""
    return {"nginx.conf": lambda text: f"proxy_cache_path {cache_dir} keys_zone=slm_answers:1m;\n{text}",
            "proxy.conf": lambda text: text.replace(
                "proxy_buffering off;\nproxy_cache off;",
                "proxy_buffering on;\nproxy_ignore_headers X-Accel-Buffering Cache-Control Expires;\n"
                "proxy_cache slm_answers;\nproxy_cache_methods POST;\nproxy_cache_valid 200 10m;")}


def test_crosstalk_check_catches_a_response_cache(local_stack, results, shape, tmp_path):
    with appliance_with(local_stack, response_cache(tmp_path / "answers")) as stack:
        run = sessions.replay(Endpoint.of_stack(stack), 1, shape)
    results["crosstalk_control"] = {"defect": "nginx caches answers by URI", "turns": len(run["turns"]),
                                    "answers_served_twice": run["answers_served_twice"],
                                    "text_equal_alone": [r["identical"] for r in run["crosstalk"]]}
    every_turn_answered(run)
    with pytest.raises(AssertionError, match="carried the id of an earlier one"):
        no_crosstalk(run)


@pytest.fixture(scope="module")
def anchor(local_stack):
    """llama-server on its own defaults, the appliance's engine and model, no proxy."""
    with engine_with(local_stack, engine_defaults) as stack:
        yield stack


def test_sessions_on_engine_defaults(anchor, results, shape, developers):
    """The same replay against the anchor; the appliance's figures over the anchor's, in the results.
    Where the defaults fail a turn (4 slots sharing the model's context overflow it), that is the
    anchor's result, reported, not a failure of the appliance."""
    ep = direct(anchor)
    run = sessions.replay(ep, developers, shape)
    run["engine_args"] = anchor.engine_args()[1:-2]
    with ep.client() as client:
        run["slots"] = client.get("/props").json().get("total_slots")
    results.setdefault("sessions_anchor", {})[str(developers)] = run
    tuned = (results.get("sessions") or {}).get(str(developers))
    if tuned:
        run["appliance_vs_defaults"] = ratios = sessions.versus(tuned, run)
        results.setdefault("session_figures", {}).update(
            {f"sessions_{developers}_{name}_vs_defaults": v for name, v in ratios.items()})


def test_aiperf_agrees(endpoint, results, settings, shape, tmp_path):
    """The field's load generator on sessions of the same shape, right after the project's own replay
    of others (distinct seeds: neither finds the other's histories cached; the system prompt is
    shared, as in a team): warm-turn TTFT, ITL and E2EL, each over the engine's own time for the
    same requests (cross_check.paced), agree within the band. The plain ratios are reported too:
    AIPerf's processes can slow the engine on a small host, which is not a measuring error."""
    developers = CROSS_CHECK_DEVELOPERS
    before = resource.getrusage(resource.RUSAGE_SELF)
    ours = sessions.replay(endpoint, developers, shape, seed_base=5000)
    ours_cpu_s = cross_check.cpu_seconds(before, resource.getrusage(resource.RUSAGE_SELF))
    every_turn_answered(ours)
    theirs = cross_check.run(endpoint, developers, shape, seed_base=6000,
                             model=REPO / settings.artifacts / "model.gguf", work=tmp_path)
    pairs = {"warm TTFT p50": (theirs["warm_ttft_s"].get("p50"), ours["warm_ttft_s"].get("p50")),
             "ITL pooled": (theirs["pooled_itl_s"], ours["pooled_itl_s"]),
             "E2EL p50": (theirs["e2el_s"].get("p50"), ours["e2el_s"].get("p50"))}
    ours_paced = cross_check.paced(cross_check.timed_turns(ours["turns"]))
    paced_pairs = {f"{name} over the engine's": (theirs["paced"][key], ours_paced[key])
                   for name, key in (("warm TTFT", "warm_ttft"), ("ITL", "itl"), ("E2EL", "e2el"))}
    ratios = {name: round(a / b, 3) for name, (a, b) in pairs.items() if a and b}
    paced_ratios = {name: round(a / b, 3) for name, (a, b) in paced_pairs.items() if a and b}
    results["aiperf"] = {"developers": developers, "ours": {k: ours[k] for k in (
        "warm_ttft_s", "pooled_itl_s", "e2el_s")} | {"paced": ours_paced, "cpu_s": ours_cpu_s,
                                                      "wall_s": ours["wall_s"]},
        "aiperf": theirs, "ratios": ratios, "paced_ratios": paced_ratios, "band": AGREEMENT}
    assert len(ratios) == len(pairs) and len(paced_ratios) == len(paced_pairs), \
        f"a figure is missing: {pairs} {paced_pairs}"
    apart = {k: v for k, v in paced_ratios.items() if not AGREEMENT[0] <= v <= AGREEMENT[1]}
    assert not apart, (f"AIPerf and the project's replay disagree (AIPerf / ours, each over the engine's own "
                       f"time): {apart}; all: {paced_pairs}; plain ratios: {ratios}")


def test_regression_gate(settings, results, machine_context, gate_rows):
    """Last: the session figures against the baselines (conftest.regression_gate; gate.RULES)."""
    regression_gate(settings, results, gate_rows)
