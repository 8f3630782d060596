"""The engine's memory over many sessions: nothing may run the VM out of memory.

llama-server keeps the history of every idle session in a host-memory prompt cache, so that a
developer's next turn computes only what it added. The engine's own limit for that cache is 8 GiB
whatever the VM has; configure sizes it inside the memory plan and records what the engine may
hold resident (`SLM_ENGINE_BUDGET_MB`: RAM minus the OS reserve). This check plays distinct
sessions one after the other, enough for their histories to outgrow that budget were they all
kept, and compares the engine's resident memory with it after each. The sessions share no prefix
(each names its project first), so that the engine cannot serve one from another's slot and must
put each history away in its cache: what a team of developers on different projects does to it."""

from __future__ import annotations

from .endpoint import Endpoint, stream_chat
from .targets import Unsupported

# About 450 tokens of a session's own: its project first, so no two sessions share a prefix.
SESSION = ("Project {n}. You are a coding assistant in the repository of project {n}. "
           + "".join(f"File src/part_{{n}}_{i}.py defines parse_{i}(text) and dump_{i}(tree). " for i in range(16))
           + "\nTask: fix the failing test of project {n}; the parser drops empty fields.")


def engine_rss_kib(target) -> int | None:
    """The engine's resident memory, where the target can see the engine's process."""
    try:
        status = target.engine_proc("status")
    except Unsupported:
        return None
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def headroom_tokens(facts: dict, rss_kib: int) -> int:
    """How many prompt tokens of histories would fill what the engine's budget leaves it now."""
    headroom_mib = max(int(facts["SLM_ENGINE_BUDGET_MB"]) - rss_kib / 1024, 0)
    return int(headroom_mib * 2**20 / int(facts["SLM_KV_BYTES_PER_TOKEN"]))


def engine_pid(target) -> int:
    return int(next(line.split()[1] for line in target.engine_proc("status").splitlines() if line.startswith("Pid:")))


def prompt_cache_bounded(ep: Endpoint, target) -> dict:
    facts = target.configured()  # Unsupported where the target cannot be read (url without SSH)
    budget_mib = int(facts["SLM_ENGINE_BUDGET_MB"])
    pid, rss_before = engine_pid(target), engine_rss_kib(target)

    def session(n: int) -> int:
        s = stream_chat(ep, [{"role": "user", "content": SESSION.format(n=n)}], max_tokens=1, temperature=0)
        assert s.status == 200, f"session {n}: HTTP {s.status} {s.body[:200]}"
        return s.chunks[-1]["usage"]["prompt_tokens"]

    first = session(0)
    history_mib = first * int(facts["SLM_KV_BYTES_PER_TOKEN"]) / 2**20
    # Enough sessions that keeping every history would take what the budget has left, and a few more.
    sessions = headroom_tokens(facts, rss_before) // first + 4
    peak_kib = rss_before
    for n in range(1, sessions):
        session(n)
        peak_kib = max(peak_kib, engine_rss_kib(target))
    assert engine_pid(target) == pid, "the engine was restarted during the sessions (killed out of memory?)"
    figures = {"rss_peak_mib": round(peak_kib / 1024), "engine_budget_mib": budget_mib, "sessions": sessions,
               "history_mib": round(history_mib, 1), "kept_if_unbounded_mib": round(sessions * history_mib),
               "prompt_cache_mib": int(facts["SLM_PROMPT_CACHE_MB"]), "rss_before_mib": round(rss_before / 1024)}
    assert peak_kib / 1024 <= budget_mib, f"the engine's resident memory outgrew its budget: {figures}"
    return figures
