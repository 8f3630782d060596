"""The appliance's contract as check functions: each raises AssertionError naming what broke.

Checks take an Endpoint, so the same code runs against the local stack, a VM and a deployed URL;
the negative-control tests run the same functions against deliberately broken appliances.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import socket
import ssl
import statistics
import time
import uuid
import warnings
from urllib.parse import quote

import httpx
import jsonschema
from hypothesis import strategies as st

from .endpoint import FULL_SIZE_S, SPEED_PROMPT, Endpoint, approx_tokens, stream_chat, stream_events  # noqa: F401 (Endpoint re-exported)
from .support import wait_until

CHUNK_SCHEMA = {  # OpenAI chat.completion.chunk, the fields clients rely on
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string", "minLength": 1},
        "object": {"const": "chat.completion.chunk"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {
            "type": "object",
            "required": ["index", "delta"],
            "properties": {
                "index": {"type": "integer"},
                "delta": {"type": "object", "properties": {
                    "role": {"enum": ["assistant"]},
                    "content": {"type": ["string", "null"]},
                }},
                "finish_reason": {"enum": [None, "stop", "length", "tool_calls"]},
            },
        }},
        "usage": {"type": ["object", "null"], "required": ["prompt_tokens", "completion_tokens"]},
    },
}

COMPLETION_SCHEMA = {  # OpenAI's legacy text completion, what autocomplete and FIM clients read
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "object": {"const": "text_completion"},
        "choices": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["text", "index", "finish_reason"],
            "properties": {"text": {"type": "string"}, "index": {"type": "integer"},
                           "finish_reason": {"enum": [None, "stop", "length"]}}}},
    },
}

PROMPT = [{"role": "user", "content": "Write a Python function that returns the sum of a list, then explain it."}]
SHORT_PROMPT = SPEED_PROMPT  # for slow endpoints (TCG guests): prompt tokens cost seconds; cached after the probe
ENGINE_INTERNAL_PATHS = ["/slots", "/props", "/tokenize", "/detokenize", "/completion", "/completions",
                         "/embeddings", "/v1/embeddings", "/apply-template", "/lora-adapters", "/infill",
                         "/rerank", "/v1/rerank", "/", "/index.html", "/v1/health", "/health/"]
PROTECTED = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
             ("GET", "/metrics")]


def budget(ep: Endpoint, full: int, short: int) -> tuple[list[dict], int]:
    """The prompt and max_tokens a check asks for: full size where the measured speed serves it
    quickly, the short prompt and fewer tokens elsewhere."""
    return (PROMPT, full) if ep.affords(approx_tokens(PROMPT), full) else (SHORT_PROMPT, short)


def sse_protocol(ep: Endpoint) -> dict:
    """Exact protocol: event-stream, role first, one id, finish_reason last, usage, [DONE]."""
    prompt, max_tokens = budget(ep, 16, 4)
    s = stream_chat(ep, prompt, max_tokens=max_tokens)
    assert s.status == 200, f"stream: HTTP {s.status}: {s.body[:300]}"
    assert s.headers.get("content-type", "").startswith("text/event-stream"), s.headers.get("content-type")
    assert s.events and s.events[-1][1] == "[DONE]", "stream does not end with data: [DONE]"
    chunks = s.chunks
    for chunk in chunks:
        jsonschema.validate(chunk, CHUNK_SCHEMA)
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant", f"first delta: {chunks[0]}"
    assert len({c["id"] for c in chunks}) == 1, "chunks carry more than one id"
    with_choices = [c for c in chunks if c["choices"]]
    finishes = [c["choices"][0].get("finish_reason") for c in with_choices]
    assert all(f is None for f in finishes[:-1]), f"finish_reason before the end: {finishes}"
    assert finishes[-1] in ("stop", "length"), f"last finish_reason {finishes[-1]!r}"
    usage = chunks[-1].get("usage")
    assert usage and usage["completion_tokens"] >= 1, f"no usage in the last chunk: {chunks[-1]}"
    return {"chunks": len(chunks), "completion_tokens": usage["completion_tokens"]}


def sse_incremental(ep: Endpoint) -> dict:
    """Events arrive spread over the generation, as the engine produces them, not in bursts.

    Arrivals closer than a quarter of the engine's own per-token time are one burst; a stream
    delivered token by token has about one burst per token, a buffered one a handful in all.
    """
    prompt, max_tokens = budget(ep, 48, 10)
    s = stream_chat(ep, prompt, max_tokens=max_tokens, temperature=0, cache_prompt=False, ignore_eos=True)
    assert s.status == 200, f"stream: HTTP {s.status}: {s.body[:300]}"
    times = s.content_times
    assert len(times) >= max_tokens * 3 // 4, f"only {len(times)} content events: too few to judge delivery"
    timings = s.chunks[-1].get("timings") or {}
    per_token = timings.get("predicted_per_token_ms", 0) / 1000 or (times[-1] - times[0]) / len(times)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    bursts = count_bursts(times, per_token)
    figures = {"content_events": len(times), "bursts": bursts, "engine_ms_per_token": round(per_token * 1000, 1),
               "median_gap_ms": round(statistics.median(gaps) * 1000, 1),
               "first_event_s": round(times[0] - s.started, 3), "last_event_s": round(times[-1] - s.started, 3)}
    assert bursts >= len(times) / 2, f"events arrived in {bursts} bursts for {len(times)} tokens: buffered? {figures}"
    return figures


def count_bursts(times: list[float], per_token_s: float) -> int:
    """Arrivals closer than a quarter of the engine's per-token time count as one burst."""
    return 1 + sum(b - a > per_token_s / 4 for a, b in zip(times, times[1:], strict=False))


def assert_incremental(times: list[float], per_token_s: float, what: str) -> int:
    """Token events delivered as generated: about one burst per token, not a handful in all."""
    bursts = count_bursts(times, per_token_s)
    assert bursts >= len(times) / 2, f"{what}: {len(times)} deltas arrived in {bursts} bursts: buffered?"
    return bursts


def basic_auth(user: str, password: str) -> str:
    """An Authorization header for HTTP Basic (RFC 7617)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# Basic user names as clients send them: anything printable but the colon.
BASIC_USERS = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), max_size=12)


def auth(ep: Endpoint) -> dict:
    """401 without or with a wrong key; Bearer and Basic (any user) accepted; /health public."""
    with ep.client(auth=False) as anon:
        for method, path in PROTECTED:
            r = anon.request(method, path, json={} if method == "POST" else None)
            assert r.status_code == 401, f"{method} {path} without credentials: {r.status_code}"
        r = anon.get("/v1/models")
        assert "Bearer" in r.headers.get("www-authenticate", ""), f"no WWW-Authenticate: {dict(r.headers)}"
        assert r.json()["error"]["type"] == "authentication_error", r.text
        for header in (f"Bearer {ep.api_key}x", "Bearer sk-wrong", basic_auth("any-user", "sk-wrong"), ep.api_key,
                       "Bearer"):
            r = anon.get("/v1/models", headers={"Authorization": header})
            assert r.status_code == 401, f"wrong credentials accepted ({header[:7]}...): {r.status_code}"
        assert anon.get("/health").status_code == 200, "/health must be public"
        r = anon.get("/v1/models", headers={"Authorization": f"Bearer {ep.api_key}"})
        assert r.status_code == 200, f"Bearer key refused: {r.status_code}"
        models = [m["id"] for m in r.json()["data"]]
        r = anon.get("/v1/models", headers={"Authorization": basic_auth("any-user", ep.api_key)})
        assert r.status_code == 200, f"Basic with the key as password refused: {r.status_code}"
        assert anon.get("/metrics", headers={"Authorization": f"Bearer {ep.api_key}"}).status_code == 200
    return {"models": models}


def near_misses(key: str) -> st.SearchStrategy[str]:
    """Strings that are not the key but look like it: what a weak comparison would let through."""
    at = st.integers(0, len(key) - 1)
    printable = st.characters(min_codepoint=33, max_codepoint=126)
    return st.one_of(
        st.integers(1, len(key) - 1).map(lambda n: key[:n]),  # every prefix: truncations
        st.integers(1, len(key) - 1).map(lambda n: key[n:]),  # every suffix
        st.tuples(at, printable).map(lambda t: key[:t[0]] + t[1] + key[t[0] + 1:]),  # one character changed
        at.map(lambda n: key[:n] + key[n].swapcase() + key[n + 1:]),  # one letter's case
        st.just(key.swapcase()), st.just(key.upper()), st.just(key.lower()),
        st.tuples(at, st.sampled_from(["\t", "%20", "+", "%2B", "=", "\\"])).map(
            lambda t: key[:t[0]] + t[1] + key[t[0]:]),  # whitespace and encodings inside
        st.text(printable, min_size=1, max_size=4).map(lambda extra: key + extra),  # longer
        st.just(quote(key, safe="")), st.just(base64.b64encode(key.encode()).decode()),
    ).filter(lambda wrong: wrong != key)


def presented_wrongly(key: str) -> st.SearchStrategy[str]:
    """Authorization headers that must be refused: a near miss in every accepted form, or the key
    itself where it is not a credential (another scheme, the Basic user name, no scheme)."""
    wrong = near_misses(key)
    return st.one_of(
        wrong.map(lambda w: f"Bearer {w}"),
        st.tuples(BASIC_USERS, wrong).map(lambda t: basic_auth(*t)),
        st.sampled_from([f"Token {key}", key, f"Bearer{key}", f"Bearer {key} {key}", basic_auth(key, ""),
                         "Basic " + base64.b64encode(key.encode()).decode(), f"Digest {key}", "Bearer", ""]),
    )


def presented_rightly(key: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from([f"Bearer {key}", f"bearer {key}", f"BEARER {key}"]),
                     BASIC_USERS.map(lambda u: basic_auth(u, key)))


def auth_properties(ep: Endpoint, wrong_examples: int = 150, right_examples: int = 10) -> dict:
    """Every header that is not the key in an accepted form is refused (401, or 429 once the failed-
    authentication limit applies); the key in every accepted form (Bearer in any case, Basic with any
    user) is served. Generated from the key itself."""
    from hypothesis import HealthCheck, given
    from hypothesis import settings as run

    tried = {"refused": 0, "refused_by_limit": 0, "accepted": 0}
    quiet = {"deadline": None, "derandomize": True, "suppress_health_check": list(HealthCheck), "database": None}
    with ep.client(auth=False) as anon:
        @run(max_examples=wrong_examples, **quiet)
        @given(header=presented_wrongly(ep.api_key))
        def refused(header):
            r = anon.get("/v1/models", headers={"Authorization": header} if header else {})
            assert auth_refused(r), f"a wrong credential got HTTP {r.status_code}: {redact(header, ep.api_key)}"
            tried["refused"] += 1
            tried["refused_by_limit"] += r.status_code == 429

        @run(max_examples=right_examples, **quiet)
        @given(header=presented_rightly(ep.api_key))
        def accepted(header):
            time.sleep(0.15)  # under the appliance's rate limit (10/s): a 429 would prove nothing
            r = anon.get("/v1/models", headers={"Authorization": header})
            assert r.status_code == 200, f"the key was refused as {redact(header, ep.api_key)}: HTTP {r.status_code}"
            tried["accepted"] += 1

        refused()
        accepted()
    return tried


def redact(header: str, key: str) -> str:
    """A header as a report may show it: the key's characters masked, its shape kept."""
    return header.replace(key, "<key>")[:80] if key in header else f"{header[:12]}... ({len(header)} chars)"


MODELS_SCHEMA = {  # OpenAI's model list: what clients read to pick the model id
    "type": "object", "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["id", "object"],
        "properties": {"id": {"type": "string", "minLength": 1}, "object": {"const": "model"}}}}},
}


PROMETHEUS_SAMPLE = re.compile(r"^[a-zA-Z_:][\w:]*(\{[^}]*\})? ([+-]?[0-9.eE+-]+|[+-]?Inf|NaN)( -?\d+)?$")


def models_and_metrics(ep: Endpoint) -> dict:
    """The two GET endpoints, with the key: /v1/models is OpenAI's list; /metrics is Prometheus text
    with the engine's own samples (what an operator scrapes)."""
    with ep.client() as client:
        models = client.get("/v1/models")
        metrics = client.get("/metrics")
    assert models.status_code == 200, f"/v1/models: HTTP {models.status_code}"
    jsonschema.validate(models.json(), MODELS_SCHEMA)
    assert metrics.status_code == 200, f"/metrics: HTTP {metrics.status_code}"
    assert metrics.headers.get("content-type", "").startswith("text/plain"), metrics.headers.get("content-type")
    samples = [line for line in metrics.text.splitlines() if line and not line.startswith("#")]
    assert samples and all(PROMETHEUS_SAMPLE.match(line) for line in samples), \
        f"/metrics is not Prometheus text: {metrics.text[:200]!r}"
    return {"models": len(models.json()["data"]), "metric_samples": len(samples)}


def legacy_completions(ep: Endpoint) -> dict:
    """/v1/completions, which autocomplete and FIM clients use, works end to end with the key:
    non-streamed (a valid text_completion with usage) and streamed (valid chunks, [DONE])."""
    body = {"prompt": "def fibonacci(n):", "max_tokens": 8 if ep.affords(30, 8) else 3, "temperature": 0}
    with ep.client() as client:
        r = client.post("/v1/completions", json=body)
        assert r.status_code == 200, f"/v1/completions: HTTP {r.status_code}: {r.text[:200]}"
        whole = r.json()
        jsonschema.validate(whole, {**COMPLETION_SCHEMA, "required": [*COMPLETION_SCHEMA["required"], "usage"]})
        assert whole["choices"][0]["text"] and whole["usage"]["completion_tokens"] >= 1, whole
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as resp:
            assert resp.status_code == 200, f"/v1/completions stream: HTTP {resp.status_code}"
            assert resp.headers.get("content-type", "").startswith("text/event-stream"), resp.headers
            events = [line[5:].strip() for line in resp.iter_lines() if line.startswith("data:")]
    assert events and events[-1] == "[DONE]", f"the stream does not end with [DONE]: {events[-2:]}"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        jsonschema.validate(chunk, COMPLETION_SCHEMA)
    streamed = "".join(c["choices"][0]["text"] for c in chunks)
    assert streamed, "the stream carried no text"
    return {"text_chars": len(whole["choices"][0]["text"]), "stream_chunks": len(chunks)}


def cors_on_responses(ep: Endpoint, allowed: str = "https://ide.example.com", refused: str | None = None) -> dict:
    """Real responses (not only preflights) carry exactly one Access-Control-Allow-Origin, and the
    right one: `*` or the allowed origin itself; never a refused origin (browsers reject a response
    with two, and an origin echoed by the engine would bypass the appliance's list)."""
    seen = {}
    with ep.client() as client:
        for origin in [allowed] + ([refused] if refused else []):
            for method, path, body in (("GET", "/v1/models", None),
                                       ("POST", "/v1/chat/completions", {"messages": SHORT_PROMPT, "max_tokens": 1})):
                r = client.request(method, path, json=body, headers={"Origin": origin})
                values = r.headers.get_list("access-control-allow-origin")
                where = f"{method} {path} from {origin}"
                assert r.status_code == 200, f"{where}: HTTP {r.status_code}"
                if origin == allowed:
                    assert values in (["*"], [allowed]), f"{where}: Access-Control-Allow-Origin {values}"
                else:
                    assert origin not in values and "*" not in values, f"{where}: Access-Control-Allow-Origin {values}"
                seen[f"{method} {path} {'allowed' if origin == allowed else 'refused'}"] = values
    return {k: ",".join(v) or "-" for k, v in seen.items()}


def served_as_configured(ep: Endpoint, configured: dict[str, str], props: dict) -> dict:
    """What the engine serves is what configure decided and the report promises: the model id
    clients see, the context they can fill, the default temperature, the slots."""
    with ep.client() as client:
        models = client.get("/v1/models").json()["data"]
    served = {"model": [m["id"] for m in models], "n_ctx": (models[0].get("meta") or {}).get("n_ctx"),
              "engine_n_ctx": props["default_generation_settings"]["n_ctx"],
              "temperature": round(props["default_generation_settings"]["params"]["temperature"], 3),
              "slots": props.get("total_slots")}
    want = {"model": [configured["SLM_MODEL_ID"]], "n_ctx": int(configured["SLM_CTX"]),
            "engine_n_ctx": int(configured["SLM_CTX"]), "temperature": round(float(configured["SLM_TEMPERATURE"]), 3),
            "slots": int(configured["SLM_PARALLEL"])}
    wrong = {k: f"served {served[k]!r}, configured {want[k]!r}" for k in want if served[k] != want[k]}
    assert not wrong, f"the engine does not serve what was configured: {wrong}"
    return {k: str(v) for k, v in served.items()}


def default_answer_length(target, ep: Endpoint, tokens: int = 12) -> dict:
    """ONEAPP_SLM_MAX_TOKENS bounds an answer whose request sets no max_tokens (aider sends none, and
    a model that repeats itself would write until the context is full); a request's own max_tokens
    still wins. Applied as a small value so the answers are quick; the default comes back after."""
    body = {"messages": [{"role": "user", "content": "Count from 1 to 500."}], "temperature": 0,
            "ignore_eos": True}  # the engine's own parameter: the answer runs to whatever limit holds
    target.apply_context({"ONEAPP_SLM_MAX_TOKENS": str(tokens)})
    try:
        with ep.client() as client:
            unset = client.post("/v1/chat/completions", json=body)
            own = client.post("/v1/chat/completions", json={**body, "max_tokens": tokens + 5})
    finally:
        target.apply_context({"ONEAPP_SLM_MAX_TOKENS": None})
    got = {}
    for name, r, want in (("no max_tokens", unset, tokens), ("max_tokens", own, tokens + 5)):
        assert r.status_code == 200, f"{name}: HTTP {r.status_code}: {r.text[:200]}"
        answer = r.json()
        got[name] = (answer["usage"]["completion_tokens"], answer["choices"][0]["finish_reason"])
        assert got[name] == (want, "length"), f"{name}: {got[name]} (tokens, finish_reason), expected {want}"
    return {"max_tokens": tokens, "unset": got["no max_tokens"][0], "own": got["max_tokens"][0]}


def long_silent_answer(ep: Endpoint, seconds: float = 100) -> dict:
    """A non-streamed answer that takes longer than a minute and a half (a 24B model on a CPU writes
    long edits that slowly): nothing between client and engine may cut it. Sized from the measured
    speed, so it lasts about `seconds` on any host."""
    with ep.client() as client:
        n_ctx = (client.get("/v1/models").json()["data"][0].get("meta") or {}).get("n_ctx", 4096)
        tokens = min(int(seconds * 1000 / ep.speed.decode_ms) + 1, n_ctx - 100)  # the context bounds it
        started = time.monotonic()
        r = client.post("/v1/chat/completions", timeout=httpx.Timeout(seconds * 4, connect=10), json={
            "messages": SHORT_PROMPT, "max_tokens": tokens, "ignore_eos": True, "temperature": 0})
    took = time.monotonic() - started
    assert r.status_code == 200, f"after {took:.0f} s of silence: HTTP {r.status_code}: {r.text[:200]}"
    got = r.json()["usage"]["completion_tokens"]
    assert got == tokens, f"the answer was cut after {took:.0f} s: {got} of {tokens} tokens"
    return {"tokens": tokens, "seconds": round(took, 1)}


def key_absent_from_logs(ep: Endpoint, target) -> dict:
    """After the key was sent every accepted way, no log of the appliance holds it."""
    with ep.client(auth=False) as anon:  # the last: the key where the user name goes
        for header in (f"Bearer {ep.api_key}", basic_auth("user", ep.api_key), f"Bearer {ep.api_key}x",
                       basic_auth(ep.api_key, "")):
            anon.get("/v1/models", headers={"Authorization": header})
        anon.get("/v1/models", headers={"x-api-key": ep.api_key})  # as Anthropic clients send it
        # A generation too: the engine receives the key from nginx and logs requests at debug.
        anon.post("/v1/chat/completions", headers={"Authorization": f"Bearer {ep.api_key}"},
                  json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
    time.sleep(1)  # nginx writes its logs after the response
    logs = target.logs()
    assert ep.api_key not in logs, f"the API key is in the appliance's logs ({logs.count(ep.api_key)} times)"
    return {"log_bytes": len(logs)}


def allow_list(ep: Endpoint) -> dict:
    """Only the API paths are reachable: the engine's own endpoints are 404 even with the key."""
    with ep.client() as client:
        for path in ENGINE_INTERNAL_PATHS:
            for method in ("GET", "POST"):
                r = client.request(method, path, json={} if method == "POST" else None)
                assert r.status_code == 404, f"{method} {path} with a valid key: {r.status_code}, expected 404"
    with ep.client(auth=False) as anon:
        for path in ENGINE_INTERNAL_PATHS:
            assert anon.get(path).status_code in (401, 404), f"GET {path} without credentials"
    return {"paths": len(ENGINE_INTERNAL_PATHS)}


def cors_preflight(ep: Endpoint, origin: str = "https://ide.example.com") -> dict:
    """A browser's preflight carries no credentials and must still be answered."""
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization,content-type"}
    with ep.client(auth=False) as anon:
        r = anon.options("/v1/chat/completions", headers=headers)
    assert r.status_code in (200, 204), f"preflight: HTTP {r.status_code}"
    allowed = r.headers.get("access-control-allow-origin")
    assert allowed in ("*", origin), f"preflight: Access-Control-Allow-Origin={allowed!r}"
    assert "authorization" in r.headers.get("access-control-allow-headers", "").lower()
    return {"allow_origin": allowed}


def rate_limit(ep: Endpoint, requests: int = 60) -> dict:
    """A client that floods gets 429 with a JSON body; the endpoint recovers afterwards."""
    codes = []
    with ep.client() as client:
        for _ in range(requests):
            r = client.get("/v1/models")
            codes.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["error"]["type"] == "rate_limit_error", r.text
    limited = codes.count(429)
    assert limited > 0, f"{requests} back-to-back requests and no 429"
    assert set(codes) <= {200, 429}, f"unexpected statuses {sorted(set(codes))}"
    time.sleep(4)  # let the leaky bucket drain for the checks that follow
    return {"sent": requests, "limited": limited}


def http_redirect(ep: Endpoint) -> dict:
    """Port 80 sends clients to https, except the ACME HTTP-01 challenge path."""
    http_base = ep.http_url
    r = httpx.get(f"{http_base}/v1/models", follow_redirects=False, timeout=10)
    assert r.status_code == 301 and r.headers["location"].startswith("https://"), f"port 80: {r.status_code}"
    r = httpx.get(f"{http_base}/.well-known/acme-challenge/probe", follow_redirects=False, timeout=10)
    assert r.status_code == 404, f"ACME challenge path must not redirect: {r.status_code}"
    return {}


def assert_one_retry_after(r: httpx.Response) -> None:
    """Exactly one Retry-After, in seconds: two values ("10, 10") are what the openai SDK cannot parse."""
    retry = r.headers.get_list("retry-after")
    assert len(retry) == 1 and retry[0].isdigit(), f"{r.status_code} needs one Retry-After in seconds, got {retry}"


def engine_unavailable(ep: Endpoint) -> dict:
    """While the engine is down or loading: 503 with Retry-After and a JSON error, not 502."""
    with ep.client() as client:
        r = client.get("/v1/models")
    assert r.status_code == 503, f"engine down: HTTP {r.status_code}"
    assert_one_retry_after(r)
    assert r.json()["error"]["code"] == 503
    return {}


def frozen_engine(ep: Endpoint, within_s: float = 20) -> dict:
    """A frozen engine (alive and listening, never answering) costs a status or model-list client
    seconds, not the hour a generation may take: 503 with one Retry-After."""
    took = {}
    with ep.client(timeout=within_s + 5) as client:
        for path in ("/health", "/v1/models"):
            start = time.monotonic()
            try:
                r = client.get(path)
            except httpx.TimeoutException:
                raise AssertionError(f"{path} gave no answer within {within_s + 5:.0f} s of a frozen engine") from None
            took[path] = round(time.monotonic() - start, 1)
            assert r.status_code == 503, f"{path} with the engine frozen: HTTP {r.status_code}"
            assert took[path] <= within_s, f"{path}: 503 after {took[path]} s, expected within {within_s} s"
            assert_one_retry_after(r)
    return {f"{path}_s": s for path, s in took.items()}


AUTH_LIMITED = "Too many failed authentication attempts"


def auth_refused(r: httpx.Response) -> bool:
    """A refusal that proves the key was judged wrong: 401, or the failed-authentication limit's 429
    (which only requests that failed authentication reach)."""
    return r.status_code == 401 or (r.status_code == 429 and AUTH_LIMITED in r.text)


def failed_auth_limited(ep: Endpoint, attempts: int = 60) -> dict:
    """Guessing keys is slowed per client address (429 with Retry-After), while the right key keeps
    working from the same address; the limit lifts by itself."""
    codes = []
    with ep.client(auth=False) as anon:
        for i in range(attempts):
            r = anon.get("/v1/models", headers={"Authorization": f"Bearer sk-guess-{i:04d}"})
            codes.append(r.status_code)
            assert auth_refused(r), f"a wrong key got HTTP {r.status_code}: {r.text[:120]}"
            if r.status_code == 429:
                assert r.headers.get_list("retry-after") == ["1"], f"429 needs Retry-After: {dict(r.headers)}"
        limited = codes.count(429)
        assert limited > 0, f"{attempts} wrong keys in a row: {codes.count(401)} x 401 and no 429"
        ok = anon.get("/v1/models", headers={"Authorization": f"Bearer {ep.api_key}"}).status_code
        assert ok == 200, f"the right key was refused during a guessing burst from the same address: HTTP {ok}"
        wait_until(lambda: anon.get("/v1/models", headers={"Authorization": "Bearer sk-wrong"}).status_code == 401,
                   60, interval=2, what="the failed-authentication limit to lift")
    return {"sent": attempts, "limited": limited}


def with_key(ep: Endpoint, key: str) -> Endpoint:
    return dataclasses.replace(ep, api_key=key)


def named_keys_served(ep: Endpoint, target) -> dict:
    """Every key of ONEAPP_SLM_API_KEYS is served, Bearer and Basic; the access log names the id
    of the key that was used, never the key."""
    keys = target.named_keys()
    assert keys, "no named keys configured"
    with ep.client(auth=False) as anon:
        for key_id, key in keys.items():
            for header in (f"Bearer {key}", basic_auth("someone", key)):
                r = anon.get("/v1/models", headers={"Authorization": header, "User-Agent": f"named-{key_id}"})
                assert r.status_code == 200, f"the key of {key_id} was refused: HTTP {r.status_code}"
    time.sleep(1)  # nginx writes its logs after the response
    logs = target.logs()
    for key_id, key in keys.items():
        assert key not in logs, f"the key of {key_id} is in the logs"
        assert re.search(rf'"named-{re.escape(key_id)}" \S+ key={re.escape(key_id)}\b', logs), \
            f"no access log line names the key id {key_id}"
    return {"ids": len(keys)}


def token_counts_logged(ep: Endpoint, target) -> dict:
    """Each generation's access log line carries the prompt and completion tokens the engine
    counted, beside the key's id, whatever the API and whether streamed or not: a key's usage is
    the sum of its lines. Anthropic's input_tokens leaves out the cached prompt: the log does not."""
    agent = f"tokens-{uuid.uuid4().hex[:8]}"
    chat = {"model": ep.model or "default", "messages": SHORT_PROMPT, "max_tokens": 8, "temperature": 0}
    usage: dict[str, tuple[int, int]] = {}
    with ep.client(headers={"User-Agent": f"{agent}-chat"}) as client:
        r = client.post("/v1/chat/completions", json=chat)
        assert r.status_code == 200, f"chat: HTTP {r.status_code}: {r.text[:200]}"
        usage["chat"] = (r.json()["usage"]["prompt_tokens"], r.json()["usage"]["completion_tokens"])
    with ep.client(headers={"User-Agent": f"{agent}-messages", "anthropic-version": "2023-06-01"}) as client:
        r = client.post("/v1/messages", json=chat)
        assert r.status_code == 200, f"messages: HTTP {r.status_code}: {r.text[:200]}"
        u = r.json()["usage"]
        usage["messages"] = (u["input_tokens"] + u.get("cache_read_input_tokens", 0)
                             + u.get("cache_creation_input_tokens", 0), u["output_tokens"])
    for name, options in (("stream", {"stream_options": {"include_usage": True}}), ("stream-no-usage", {})):
        s = stream_events(ep, "/v1/chat/completions", {**chat, "stream": True, **options},
                          headers={"User-Agent": f"{agent}-{name}"})
        assert s.status == 200, f"{name}: HTTP {s.status}: {s.body[:200]}"
        usage[name] = usage["chat"]  # the same request at temperature 0: the same counts
    time.sleep(1)  # nginx writes its logs after the response
    log = target.access_log().splitlines()
    for name, expected in usage.items():
        lines = [line for line in log if f'"{agent}-{name}"' in line]
        assert lines, f"no access log line for the {name} request"
        m = re.search(r"key=(\S*) tokens_in=(\S+) tokens_out=(\S+)$", lines[-1])
        assert m, f"no token counts in the access log line of the {name} request: {lines[-1]}"
        assert m.group(1) not in ("", "-"), f"the {name} request's line names no key: {lines[-1]}"
        assert m.group(2, 3) == tuple(map(str, expected)), \
            f"{name}: the log counts in/out {m.group(2, 3)}, the engine's usage says {expected}"
    return {name: f"{i}/{o}" for name, (i, o) in usage.items()}


def per_key_limit(ep: Endpoint, target, requests: int = 40) -> dict:
    """A key sending faster than its own limit gets 429 while another key, from the same address,
    is still served: the limit follows the key (ONEAPP_SLM_KEY_RATE_LIMIT), not only the address."""
    (first, flooding), (second, other) = list(target.named_keys().items())[:2]
    with with_key(ep, flooding).client() as client:
        codes = [client.get("/v1/models").status_code for _ in range(requests)]
    assert codes.count(429) > 0, f"{requests} requests in a row with the key of {first}: no 429"
    with with_key(ep, other).client() as client:
        status = client.get("/v1/models").status_code
    assert status == 200, f"the key of {second} was limited by {first}'s traffic: HTTP {status}"
    time.sleep(3)
    return {"sent": requests, "limited": codes.count(429)}


def health_limited(ep: Endpoint, requests: int = 80) -> dict:
    """/health is public, and so rate-limited like the API: a flood gets 429, then it answers again."""
    with ep.client(auth=False) as anon:
        codes = [anon.get("/health").status_code for _ in range(requests)]
        assert codes.count(429) > 0, f"{requests} back-to-back /health requests and no 429"
        assert set(codes) <= {200, 429}, f"unexpected statuses {sorted(set(codes))}"
        wait_until(lambda: anon.get("/health").status_code == 200, 30, interval=1, what="/health after the flood")
    return {"sent": requests, "limited": codes.count(429)}


def tls_versions(ep: Endpoint) -> dict:
    """TLS 1.0 and 1.1 refused, by a client that would accept them (SECLEVEL=0), 1.2 and 1.3 served."""
    url = httpx.URL(ep.base_url)
    accepted = {}
    for name, version in (("TLSv1", ssl.TLSVersion.TLSv1), ("TLSv1.1", ssl.TLSVersion.TLSv1_1),
                          ("TLSv1.2", ssl.TLSVersion.TLSv1_2), ("TLSv1.3", ssl.TLSVersion.TLSv1_3)):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the protocol version is under test here, not the chain
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():  # offering the deprecated versions is the point of the check
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = version
        try:
            with socket.create_connection((url.host, url.port or 443), timeout=10) as raw, \
                    ctx.wrap_socket(raw, server_hostname=url.host) as tls:
                accepted[name] = tls.version() == name
        except (ssl.SSLError, ConnectionResetError):
            accepted[name] = False
    assert not accepted["TLSv1"] and not accepted["TLSv1.1"], f"legacy TLS accepted: {accepted}"
    assert accepted["TLSv1.2"] and accepted["TLSv1.3"], f"modern TLS refused: {accepted}"
    return {k: "accepted" if v else "refused" for k, v in accepted.items()}


def long_prompt_rejected(ep: Endpoint) -> dict:
    """A prompt longer than the context gets a clear 400 at once, not a hang or a silent cut."""
    with ep.client() as client:
        meta = client.get("/v1/models").json()["data"][0].get("meta") or {}
        trained = meta.get("n_ctx_train", 32768)
        words = " ".join(f"word{i}" for i in range(trained))  # >= 2 tokens a word: over any context

        t0 = time.monotonic()
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": words}],
                                                      "max_tokens": 4})
    assert r.status_code == 400, f"overlong prompt: HTTP {r.status_code}: {r.text[:200]}"
    error = r.json()["error"]
    assert "context" in error["message"].lower(), error["message"]
    return {"seconds": round(time.monotonic() - t0, 2), "prompt_tokens": error.get("n_prompt_tokens"),
            "n_ctx": error.get("n_ctx")}


CODENAMES = ("Zebra", "Cobalt")  # an A/B pair: each run must recall its own value, not the other
FILLER = "\n".join(f"def handler_{i}(request):\n    return route(request, 'v{i}')" for i in range(40))


def _first_token_logprob(top: dict[str, float], value: str) -> float | None:
    found = [lp for token, lp in top.items() if token.strip() and (" " + value).startswith(token)]
    return max(found) if found else None


def coherence(ep: Endpoint, min_margin: float = 1.0) -> dict:
    """A fact planted in turn 1 is used in turn 3, scored by log-probability.

    Turn 3 is prefilled with "The codename is"; the check reads the log-probability of each
    codename's first token as the next token: with turn 1 in the history against without it, and
    the planted value against the other one of the A/B pair. Turn 2 is the model's own answer to an
    unrelated question and must not parrot the fact. Prompt-token accounting must cover turn 1."""
    filler = f"Here is our router module:\n```python\n{FILLER}\n```\n"
    if not ep.affords(len(filler) // 3 * 4, 8, seconds=3 * FULL_SIZE_S):  # four requests carry it
        filler = ""
    figures: dict = {}
    for value in CODENAMES:
        other = next(v for v in CODENAMES if v != value)
        turn1 = [{"role": "user", "content": f"{filler}Our project's codename is {value}. Please remember it."},
                 {"role": "assistant", "content": f"Got it: the codename is {value}."}]
        question = [{"role": "user", "content": "Name one primary colour."}]
        with ep.client() as client:
            r = client.post("/v1/chat/completions", json={"messages": turn1 + question, "max_tokens": 8,
                                                          "temperature": 0, "seed": 42})
            assert r.status_code == 200, f"turn 2: HTTP {r.status_code}: {r.text[:200]}"
            turn2 = r.json()["choices"][0]["message"]["content"]
            assert turn2.strip() and value.lower() not in turn2.lower(), f"turn 2 parrots the fact: {turn2!r}"
            ask = [{"role": "user", "content": "What is our project's codename?"},
                   {"role": "assistant", "content": "The codename is"}]
            history = turn1 + question + [{"role": "assistant", "content": turn2}] + ask
            scored = {}
            for label, messages in (("with", history), ("without", history[2:])):
                r = client.post("/v1/chat/completions", json={
                    "messages": messages, "max_tokens": 1, "temperature": 0, "logprobs": True,
                    "top_logprobs": 20, "cache_prompt": False})
                assert r.status_code == 200, f"turn 3 ({label} turn 1): HTTP {r.status_code}: {r.text[:200]}"
                body = r.json()
                top = {t["token"]: t["logprob"] for t in body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]}
                scored[label] = (top, body["usage"]["prompt_tokens"])
        (with_top, with_tokens), (without_top, without_tokens) = scored["with"], scored["without"]
        assert with_tokens - without_tokens >= 10, \
            f"turn 1 is not in the prompt the engine saw: {with_tokens} vs {without_tokens} tokens"
        own = _first_token_logprob(with_top, value)
        assert own is not None, f"{value} is not among the 20 likeliest next tokens with turn 1 in the history"
        floor = min(without_top.values())  # absent from the top 20: at most the 20th logprob
        without = _first_token_logprob(without_top, value) or floor
        rival = _first_token_logprob(with_top, other) or min(with_top.values())
        figures[value] = {"logprob": round(own, 2), "history_margin": round(own - without, 2),
                          "ab_margin": round(own - rival, 2), "prompt_tokens": with_tokens}
        assert own - without >= min_margin, f"{value}: turn 1 raises its logprob by only {own - without:.2f} nats"
        assert own - rival >= min_margin, f"{value}: only {own - rival:.2f} nats above {other}"
    return {f"{v}_{k}": x for v, d in figures.items() for k, x in d.items()}


def engine_port_closed(url: str) -> dict:
    """The engine's port, reached from the network side, must not answer HTTP."""
    try:
        r = httpx.get(url, timeout=10)
    except httpx.HTTPError as err:
        return {"engine_port_from_network": type(err).__name__}
    raise AssertionError(f"the engine answered from the network: HTTP {r.status_code}")
