"""Load and hostile input: every request completes or is refused by design, nothing crashes."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from . import checks, memory
from .endpoint import Endpoint, stream_chat
from .memory import engine_rss_kib
from .support import not_applicable, time_boxed
from .targets import Unsupported

SOAK_BOX_S = 600  # the ci profile's box for the memory soak; a TCG guest needs over an hour for it


def test_prompt_longer_than_context_gets_400(endpoint, record):
    record(checks.long_prompt_rejected(endpoint))


def test_load_twice_the_slots(endpoint, target, record):
    """2 x slots concurrent streaming clients, 3 waves: completed or 429/503, no other outcome."""
    fast = endpoint.affords(4 * 30, 4 * 32)  # a wave of four full-size streams, served one by one at worst
    clients, waves = 4, (3 if fast else 1)  # the appliance's default is 2 slots
    max_tokens = 32 if fast else 6
    rss_before = engine_rss_kib(target)
    outcome = {"completed": 0, "rejected": 0, "failed": 0}
    failures = []
    lock = threading.Lock()

    def client():
        try:
            s = stream_chat(endpoint, checks.SHORT_PROMPT, max_tokens=max_tokens)
            if s.status == 200 and s.events and s.events[-1][1] == "[DONE]":
                kind = "completed"
            elif s.status in (429, 503):
                kind = "rejected"
            else:
                kind, _ = "failed", failures.append(f"HTTP {s.status}, last event {s.events[-1:]}")
        except httpx.HTTPError as err:
            kind, _ = "failed", failures.append(repr(err))
        with lock:
            outcome[kind] += 1

    t0 = time.monotonic()
    for _ in range(waves):
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=900)
        assert not any(t.is_alive() for t in threads), "a client hung"
    rss_after = engine_rss_kib(target)
    figures = {**outcome, "seconds": round(time.monotonic() - t0, 1)}
    if rss_before and rss_after:
        figures["engine_rss_growth_mib"] = round((rss_after - rss_before) / 1024, 1)
        assert rss_after - rss_before < 50 * 1024, f"engine RSS grew by {figures['engine_rss_growth_mib']} MiB"
    record(figures)
    assert outcome["failed"] == 0, f"{outcome}: {failures[:3]}"
    assert outcome["completed"] > 0


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
                           | st.text(max_size=20), lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=6)
BODIES = st.one_of(
    st.binary(max_size=200),  # malformed JSON, invalid UTF-8
    st.fixed_dictionaries({"messages": JSON_VALUES}, optional={"max_tokens": JSON_VALUES,
                                                             "temperature": JSON_VALUES, "stream": JSON_VALUES}),
    st.fixed_dictionaries({
        "messages": st.just([{"role": "user", "content": "hi"}]),
        "max_tokens": st.sampled_from([-1, 0, 1, 2**31, "ten", 1.5, None]),
        "temperature": st.sampled_from([-1, 0, 100, "hot", None]),
        "stream": st.just(True),  # dropped after the status line: the engine must cancel, not run on
    }),
).map(lambda b: b if isinstance(b, bytes) else json.dumps(b).encode())


def test_hostile_bodies_never_get_a_5xx(endpoint, record):
    """Whatever the body: a 2xx or 4xx answer, never a 5xx, and the appliance serving after.

    Bodies are sent as streams and dropped after the status line: a huge max_tokens must not
    keep the check (or the engine) busy, and a client that walks away is hostile input too."""
    tried = {"n": 0}

    @hypothesis_settings(max_examples=60 if endpoint.affords(60 * 30, 0) else 12, deadline=None,
                         suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body=BODIES)
    def one(body):
        tried["n"] += 1
        with endpoint.client(headers={"Content-Type": "application/json"}) as client, \
                client.stream("POST", "/v1/chat/completions", content=body, timeout=300) as r:
            assert r.status_code < 500, f"HTTP {r.status_code} for {body[:80]!r}: {r.read()[:200]!r}"

    one()
    time.sleep(4)  # the flood emptied the client's rate-limit bucket: let it refill
    checks.sse_protocol(endpoint)  # still serving
    record({"inputs_tried": tried["n"], "crashes": 0})


def test_oversize_body_gets_413(endpoint):
    with endpoint.client() as client:
        big = client.post("/v1/chat/completions", content=b"{" + b" " * (9 * 2**20) + b"}",
                          headers={"Content-Type": "application/json"})
    assert big.status_code == 413, f"a 9 MiB body: HTTP {big.status_code}"


def test_slow_client_leaves_the_appliance_serving(endpoint, record):
    slow = slow_client(endpoint)
    checks.auth(endpoint)  # still serving, still guarded
    checks.sse_protocol(endpoint)
    record({"slow_client": slow})


def slow_client(ep: Endpoint) -> str:
    """A client that dribbles its headers and goes away: the server must not care."""
    url = httpx.URL(ep.base_url)
    with socket.create_connection((url.host, url.port), timeout=10) as raw, \
            ep.tls_context().wrap_socket(raw, server_hostname=url.host) as tls:
        for chunk in (b"POST /v1/chat/completions HTTP/1.1\r\n", b"Host: x\r\n", b"Content-Length: 100\r\n"):
            tls.sendall(chunk)
            time.sleep(1)
    return "dropped after 3 s"


@pytest.mark.target("local")  # a host's journal and /var/log: test_api_key_absent_from_journal_and_logs
def test_api_key_absent_from_the_appliance_logs(endpoint, target, record):
    """Last in this module: after load and hostile input have been logged too."""
    record(checks.key_absent_from_logs(endpoint, target))


@pytest.mark.destructive  # it evicts every session's cache and loads the engine for minutes to hours
def test_engine_memory_holds_over_many_sessions(settings, target, endpoint, record):
    """The memory soak (memory.prompt_cache_bounded) on the appliance itself: on the vm target, the
    smallest VM the image is tested at. Its twin on the local target is a stack configured as a
    1,000 MiB VM (test_configured_stack_passes), since the suite's own stack has this host's memory."""
    if target.name == "local":
        not_applicable("the local stack's engine budget is this host's memory; the soak runs on a stack "
                       "configured as a 1,000 MiB VM (test_configured_stack_passes)")
    try:
        tokens = memory.headroom_tokens(target.configured(), engine_rss_kib(target) or 0)
    except Unsupported as err:
        not_applicable(f"the engine's budget and memory are not visible on this target: {err}")
    time_boxed(settings, endpoint.speed.seconds(tokens, 1), SOAK_BOX_S,
               f"the memory soak ({tokens:,} prompt tokens of distinct sessions)")
    record(memory.prompt_cache_bounded(endpoint, target))
