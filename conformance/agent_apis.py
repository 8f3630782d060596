"""Checks of the APIs coding agents speak besides chat completions: OpenAI Responses (Codex CLI),
Anthropic Messages (Claude Code, the anthropic SDK), and tool calls on all three.

Like checks.py, each takes an Endpoint and raises AssertionError naming what broke.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema

from .checks import assert_incremental
from .endpoint import Endpoint, stream_events

SAY_HI = "Say hi."
BAD_KEY = "sk-wrong-key-for-conformance-checks"

# A tool as agents declare them; the check validates the returned arguments against its schema.
TOOL_NAME = "read_file"
TOOL_DESCRIPTION = "Read a file of the workspace"
TOOL_SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"],
               "additionalProperties": False}
TOOL_ASK = "Read the file hello.py."
# SmolLM2-135M never starts a tool call by itself, even when the request requires one (measured:
# 300 tokens of prose). The assistant turn is therefore prefilled with the call marker of the
# template the appliance serves for it; the engine's grammar then constrains the arguments to the
# schema and its parser returns them as tool calls. A capable model starts the call itself.
TOOL_PREFILL = "<tool_call>\n"
TOOL_TOKENS = 80  # one call is about 30 tokens; the engine may add a second (parallel) one

RESPONSES_STREAM_SCHEMA = {  # the events the OpenAI SDK's Responses stream reader relies on
    "type": "object", "required": ["type"],
    "allOf": [
        {"if": {"properties": {"type": {"const": "response.output_text.delta"}}},
         "then": {"required": ["delta", "item_id"], "properties": {"delta": {"type": "string"}}}},
        {"if": {"properties": {"type": {"const": "response.function_call_arguments.delta"}}},
         "then": {"required": ["delta", "item_id"], "properties": {"delta": {"type": "string"}}}},
        {"if": {"properties": {"type": {"enum": ["response.created", "response.completed"]}}},
         "then": {"required": ["response"], "properties": {"response": {
             "type": "object", "required": ["id", "object", "status"],
             "properties": {"object": {"const": "response"}}}}}},
    ],
}
MESSAGES_STREAM_SCHEMA = {  # Anthropic's Messages stream events, the fields its SDK reads
    "type": "object", "required": ["type"],
    "allOf": [
        {"if": {"properties": {"type": {"const": "message_start"}}},
         "then": {"required": ["message"], "properties": {"message": {
             "type": "object", "required": ["id", "type", "role", "content", "model", "usage"],
             "properties": {"type": {"const": "message"}, "role": {"const": "assistant"}}}}}},
        {"if": {"properties": {"type": {"enum": ["content_block_start", "content_block_delta",
                                                 "content_block_stop"]}}},
         "then": {"required": ["index"], "properties": {"index": {"type": "integer"}}}},
        {"if": {"properties": {"type": {"const": "content_block_delta"}}},
         "then": {"required": ["delta"], "properties": {"delta": {"oneOf": [
             {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"const": "text_delta"}, "text": {"type": "string"}}},
             {"type": "object", "required": ["type", "partial_json"],
              "properties": {"type": {"const": "input_json_delta"}, "partial_json": {"type": "string"}}}]}}}},
        {"if": {"properties": {"type": {"const": "message_delta"}}},
         "then": {"required": ["delta", "usage"], "properties": {
             "delta": {"type": "object", "required": ["stop_reason"], "properties": {
                 "stop_reason": {"enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use"]}}},
             "usage": {"type": "object", "required": ["output_tokens"]}}}},
    ],
}
ANTHROPIC_ERROR_SCHEMA = {"type": "object", "required": ["type", "error"], "properties": {
    "type": {"const": "error"},
    "error": {"type": "object", "required": ["type", "message"],
              "properties": {"type": {"const": "authentication_error"}, "message": {"type": "string"}}}}}
OPENAI_ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"], "properties": {"type": {"const": "authentication_error"}}}}}


def conforms(instance: dict, schema: dict, what: str) -> None:
    """jsonschema's verdict as the AssertionError every check raises."""
    try:
        jsonschema.validate(instance, schema)
    except jsonschema.ValidationError as err:
        raise AssertionError(f"{what}: {err.message} in {json.dumps(instance)[:200]}") from None


def anthropic_headers(ep: Endpoint, key: str | None = None, bearer: bool = False) -> dict[str, str]:
    """The key as Anthropic clients present it: x-api-key (SDK) or Bearer (Claude Code's
    ANTHROPIC_AUTH_TOKEN)."""
    key = ep.api_key if key is None else key
    header = {"Authorization": f"Bearer {key}"} if bearer else {"x-api-key": key}
    return {**header, "anthropic-version": "2023-06-01"}


def anthropic_client(ep: Endpoint, key: str | None = None, bearer: bool = False):
    return ep.client(auth=False, headers=anthropic_headers(ep, key, bearer))


def messages_body(ep: Endpoint, max_tokens: int, **extra) -> dict:
    return {"model": ep.model or "default", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": SAY_HI}], **extra}


def event_order(names: list[str], first: str, last: str) -> None:
    assert names and names[0] == first, f"first event {names[:1]}, expected {first}"
    assert names[-1] == last, f"last event {names[-1:]}, expected {last}"


def typed_events(s) -> list[dict]:
    """Each event's data, checked to name the same type as its `event:` line (SDKs read either)."""
    assert s.status == 200, f"stream: HTTP {s.status}: {s.body[:300]}"
    assert s.headers.get("content-type", "").startswith("text/event-stream"), s.headers.get("content-type")
    datas = [json.loads(d) for _, d in s.events]
    mismatched = [(n, d.get("type")) for n, d in zip(s.names, datas, strict=True) if n != d.get("type")]
    assert not mismatched, f"event names and data types differ: {mismatched[:3]}"
    return datas


def delivered_incrementally(ep: Endpoint, times: list[float], what: str) -> int:
    """The deltas' arrival bursts, judged by the engine's measured per-token time."""
    assert len(times) >= 6, f"{what}: only {len(times)} deltas, too few to judge their delivery"
    return assert_incremental(times, ep.speed.decode_ms / 1000, what)


# -- OpenAI Responses ---------------------------------------------------------------------------

def responses_stream(ep: Endpoint, max_tokens: int = 12) -> dict:
    """Responses API streamed through the front: response.created first, text deltas as they are
    generated, response.completed last with usage."""
    body = {"model": ep.model or "default", "input": SAY_HI, "max_output_tokens": max_tokens, "stream": True,
            "temperature": 0, "ignore_eos": True}  # enough deltas to judge their delivery
    s = stream_events(ep, "/v1/responses", body)
    datas = typed_events(s)
    for d in datas:
        conforms(d, RESPONSES_STREAM_SCHEMA, "responses event")
    event_order(s.names, "response.created", "response.completed")
    deltas = [(t, d["delta"]) for (t, _), d in zip(s.events, datas, strict=True)
              if d["type"] == "response.output_text.delta"]
    assert deltas and "".join(x for _, x in deltas).strip(), f"no output text in the stream: {s.names}"
    completed = datas[-1]["response"]
    assert completed["status"] == "completed", f"final status {completed['status']!r}"
    usage = completed.get("usage") or {}
    assert usage.get("output_tokens", 0) >= 1, f"no usage in response.completed: {usage}"
    bursts = delivered_incrementally(ep, [t for t, _ in deltas], "responses stream")
    return {"events": len(datas), "text_deltas": len(deltas), "bursts": bursts}


def responses_plain(ep: Endpoint, max_tokens: int = 8) -> dict:
    with ep.client() as client:
        r = client.post("/v1/responses", json={"model": ep.model or "default", "input": SAY_HI,
                                               "max_output_tokens": max_tokens})
    assert r.status_code == 200, f"/v1/responses: HTTP {r.status_code}: {r.text[:300]}"
    body = r.json()
    assert body.get("object") == "response" and body.get("status") == "completed", f"not a completed response: {body}"
    texts = [c.get("text", "") for item in body["output"] if item["type"] == "message" for c in item["content"]]
    assert "".join(texts).strip(), f"no output text: {body['output']}"
    assert body["usage"]["output_tokens"] >= 1, body["usage"]
    return {"output_tokens": body["usage"]["output_tokens"]}


# -- Anthropic Messages -------------------------------------------------------------------------

def messages_stream(ep: Endpoint, max_tokens: int = 12) -> dict:
    """Messages API streamed: message_start, content blocks opened before their deltas and closed
    after, message_delta with the stop reason and usage, message_stop last."""
    s = stream_events(ep, "/v1/messages", messages_body(ep, max_tokens, stream=True, temperature=0, ignore_eos=True),
                      auth=False, headers=anthropic_headers(ep))
    datas = typed_events(s)
    for d in datas:
        conforms(d, MESSAGES_STREAM_SCHEMA, "messages event")
    event_order(s.names, "message_start", "message_stop")
    assert s.names[-2] == "message_delta", f"message_delta must precede message_stop: {s.names[-3:]}"
    open_blocks: set[int] = set()
    for d in datas:
        if d["type"] == "content_block_start":
            open_blocks.add(d["index"])
        elif d["type"] in ("content_block_delta", "content_block_stop"):
            assert d["index"] in open_blocks, f"{d['type']} for block {d['index']} that was not started"
            if d["type"] == "content_block_stop":
                open_blocks.discard(d["index"])
    assert not open_blocks, f"blocks never stopped: {open_blocks}"
    deltas = [(t, d["delta"].get("text", "")) for (t, _), d in zip(s.events, datas, strict=True)
              if d["type"] == "content_block_delta"]
    assert "".join(x for _, x in deltas).strip(), "no text in the stream"
    bursts = delivered_incrementally(ep, [t for t, _ in deltas], "messages stream")
    return {"events": len(datas), "text_deltas": len(deltas), "bursts": bursts}


def messages_plain(ep: Endpoint, max_tokens: int = 8) -> dict:
    with anthropic_client(ep) as client:
        r = client.post("/v1/messages", json=messages_body(ep, max_tokens))
    assert r.status_code == 200, f"/v1/messages: HTTP {r.status_code}: {r.text[:300]}"
    body = r.json()
    assert body.get("type") == "message" and body.get("role") == "assistant", f"not a message: {body}"
    assert body["stop_reason"] in ("end_turn", "max_tokens"), f"stop_reason {body['stop_reason']!r}"
    text = "".join(b.get("text", "") for b in body["content"] if b["type"] == "text")
    assert text.strip(), f"no text: {body['content']}"
    return {"output_tokens": body["usage"]["output_tokens"]}


def count_tokens(ep: Endpoint) -> dict:
    """/v1/messages/count_tokens counts: a longer conversation has more tokens."""
    counts = []
    with anthropic_client(ep) as client:
        for text in (SAY_HI, SAY_HI + " And then tell me about the weather in Paris, in detail."):
            r = client.post("/v1/messages/count_tokens",
                            json={"model": ep.model or "default", "messages": [{"role": "user", "content": text}]})
            assert r.status_code == 200, f"count_tokens: HTTP {r.status_code}: {r.text[:300]}"
            counts.append(r.json().get("input_tokens"))
    assert all(isinstance(c, int) and c > 0 for c in counts) and counts[1] > counts[0], f"counts {counts}"
    return {"input_tokens": counts}


def anthropic_auth(ep: Endpoint) -> dict:
    """The key is taken as x-api-key and as a Bearer token on the Anthropic API; a wrong or missing
    key gets 401 in Anthropic's error shape there and in OpenAI's on the OpenAI APIs."""
    seen = {}
    for bearer in (False, True):
        how = "bearer" if bearer else "x-api-key"
        with anthropic_client(ep, bearer=bearer) as client:
            r = client.post("/v1/messages/count_tokens", json=messages_body(ep, 1))
        assert r.status_code == 200, f"the right key as {how}: HTTP {r.status_code}: {r.text[:200]}"
        with anthropic_client(ep, key=BAD_KEY, bearer=bearer) as client:
            r = client.post("/v1/messages/count_tokens", json=messages_body(ep, 1))
        assert r.status_code == 401, f"a wrong key as {how}: HTTP {r.status_code}, expected 401"
        conforms(r.json(), ANTHROPIC_ERROR_SCHEMA, "a 401 on the Messages API")
        seen[how] = "200/401"
    with ep.client(auth=False) as anon:
        r = anon.post("/v1/messages", json=messages_body(ep, 1))
        assert r.status_code == 401, f"no key on /v1/messages: HTTP {r.status_code}"
        conforms(r.json(), ANTHROPIC_ERROR_SCHEMA, "a 401 on the Messages API")
        r = anon.post("/v1/responses", json={"input": SAY_HI}, headers={"x-api-key": BAD_KEY})
        assert r.status_code == 401, f"a wrong key on /v1/responses: HTTP {r.status_code}"
        conforms(r.json(), OPENAI_ERROR_SCHEMA, "a 401 on the Responses API")
    return seen


# -- Tool calls ---------------------------------------------------------------------------------

def valid_arguments(arguments: str | dict, where: str) -> dict:
    try:
        args = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError as err:
        raise AssertionError(f"{where}: arguments are not JSON ({err}): {arguments!r}") from None
    conforms(args, TOOL_SCHEMA, f"{where}: the arguments break the tool's schema")
    return args


def chat_tool_body(ep: Endpoint) -> dict:
    return {"model": ep.model or "default", "max_tokens": TOOL_TOKENS, "temperature": 0, "tool_choice": "required",
            "tools": [{"type": "function", "function": {"name": TOOL_NAME, "description": TOOL_DESCRIPTION,
                                                        "parameters": TOOL_SCHEMA}}],
            "messages": [{"role": "user", "content": TOOL_ASK}, {"role": "assistant", "content": TOOL_PREFILL}]}


def tool_calls_chat(ep: Endpoint) -> dict:
    """A required tool call on chat completions comes back as tool_calls with schema-valid
    arguments, whole and streamed (the pieces concatenate to the same kind of JSON)."""
    body = chat_tool_body(ep)
    with ep.client() as client:
        r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, f"chat with tools: HTTP {r.status_code}: {r.text[:300]}"
    choice = r.json()["choices"][0]
    calls = choice["message"].get("tool_calls") or []
    assert calls, f"no tool_calls: the model answered {choice['message'].get('content')!r} (tools dropped?)"
    assert choice["finish_reason"] == "tool_calls", f"finish_reason {choice['finish_reason']!r}"
    for call in calls:
        assert call["function"]["name"] == TOOL_NAME and call.get("id"), f"call {call}"
        valid_arguments(call["function"]["arguments"], "chat")
    s = stream_events(ep, "/v1/chat/completions", {**body, "stream": True})
    assert s.status == 200, f"streamed chat with tools: HTTP {s.status}: {s.body[:300]}"
    streamed = s.tool_calls
    assert streamed, "the stream carried no tool_calls deltas"
    for index, call in enumerate(streamed):
        valid_arguments(call["function"]["arguments"], f"streamed call {index}")
    finish = next((c["finish_reason"] for chunk in reversed(s.chunks) for c in chunk.get("choices") or []
                   if c.get("finish_reason")), None)
    assert finish == "tool_calls", f"stream finish_reason {finish!r}"
    return {"calls": len(calls), "streamed_calls": len(streamed)}


def models_list_capabilities(ep: Endpoint) -> dict:
    """/v1/models says what agents size and plan by, and says it truly: the served context as
    context_length (the engine's n_ctx), and whether the model calls tools (OpenRouter's
    supported_parameters, Ollama's capabilities), which must be what a forced call shows."""
    with ep.client() as client:
        listing = client.get("/v1/models")
        assert listing.status_code == 200, f"/v1/models: HTTP {listing.status_code}"
        called = client.post("/v1/chat/completions", json=chat_tool_body(ep))
    assert called.status_code == 200, f"chat with tools: HTTP {called.status_code}: {called.text[:300]}"
    body = listing.json()
    model = body["data"][0]
    assert model.get("context_length") == model["meta"]["n_ctx"], \
        f"context_length {model.get('context_length')!r}, but the engine serves n_ctx {model['meta']['n_ctx']}"
    assert "supported_parameters" in model, "/v1/models does not say whether the model calls tools"
    listed = "tools" in model["supported_parameters"]
    ollama = "tools" in body["models"][0]["capabilities"]
    assert ollama == listed, f"supported_parameters and capabilities disagree on tools: {body}"
    calls = bool(called.json()["choices"][0]["message"].get("tool_calls"))
    assert listed == calls, (f"/v1/models lists tools as {'supported' if listed else 'unsupported'}, but a forced "
                             f"call came back {'as tool_calls' if calls else 'as text'}")
    return {"context_length": model["context_length"], "tools": listed}


def tool_calls_responses(ep: Endpoint) -> dict:
    """The same on the Responses API: function_call items, and argument deltas when streamed."""
    body = {"model": ep.model or "default", "max_output_tokens": TOOL_TOKENS, "temperature": 0,
            "tool_choice": "required",
            "tools": [{"type": "function", "name": TOOL_NAME, "description": TOOL_DESCRIPTION,
                       "parameters": TOOL_SCHEMA}],
            "input": [{"role": "user", "content": TOOL_ASK},
                      {"type": "message", "role": "assistant",
                       "content": [{"type": "output_text", "text": TOOL_PREFILL}]}]}
    with ep.client() as client:
        r = client.post("/v1/responses", json=body)
    assert r.status_code == 200, f"responses with tools: HTTP {r.status_code}: {r.text[:300]}"
    calls = [o for o in r.json()["output"] if o["type"] == "function_call"]
    assert calls, f"no function_call items: {r.json()['output']}"
    for call in calls:
        assert call["name"] == TOOL_NAME and call.get("call_id"), f"call {call}"
        valid_arguments(call["arguments"], "responses")
    s = stream_events(ep, "/v1/responses", {**body, "stream": True})
    datas = typed_events(s)
    pieces: dict[str, str] = {}
    for d in datas:
        conforms(d, RESPONSES_STREAM_SCHEMA, "responses event")
        if d["type"] == "response.function_call_arguments.delta":
            pieces[d["item_id"]] = pieces.get(d["item_id"], "") + d["delta"]
    assert pieces, f"the stream carried no argument deltas: {sorted(set(s.names))}"
    for item, arguments in pieces.items():
        valid_arguments(arguments, f"streamed item {item}")
    return {"calls": len(calls), "streamed_calls": len(pieces)}


def tool_calls_messages(ep: Endpoint) -> dict:
    """The same on the Messages API: tool_use blocks with an input object, input_json_delta pieces
    when streamed, stop_reason tool_use."""
    body = {"model": ep.model or "default", "max_tokens": TOOL_TOKENS, "temperature": 0,
            "tool_choice": {"type": "any"},
            "tools": [{"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "input_schema": TOOL_SCHEMA}],
            "messages": [{"role": "user", "content": TOOL_ASK}, {"role": "assistant", "content": TOOL_PREFILL}]}
    with anthropic_client(ep) as client:
        r = client.post("/v1/messages", json=body)
    assert r.status_code == 200, f"messages with tools: HTTP {r.status_code}: {r.text[:300]}"
    uses = [b for b in r.json()["content"] if b["type"] == "tool_use"]
    assert uses, f"no tool_use blocks: {r.json()['content']}"
    assert r.json()["stop_reason"] == "tool_use", f"stop_reason {r.json()['stop_reason']!r}"
    for use in uses:
        assert use["name"] == TOOL_NAME and use.get("id"), f"block {use}"
        valid_arguments(use["input"], "messages")
    s = stream_events(ep, "/v1/messages", {**body, "stream": True}, auth=False, headers=anthropic_headers(ep))
    datas = typed_events(s)
    pieces: dict[int, str] = {}
    for d in datas:
        conforms(d, MESSAGES_STREAM_SCHEMA, "messages event")
        if d["type"] == "content_block_delta" and d["delta"]["type"] == "input_json_delta":
            pieces[d["index"]] = pieces.get(d["index"], "") + d["delta"]["partial_json"]
    assert pieces, f"the stream carried no input_json_delta: {sorted(set(s.names))}"
    for index, arguments in pieces.items():
        valid_arguments(arguments, f"streamed block {index}")
    return {"calls": len(uses), "streamed_calls": len(pieces)}


def tool_results_accepted(ep: Endpoint) -> dict:
    """A tool's result fed back in each API's own shape is taken and reaches the model: the prompt
    with the result is longer than the same conversation without it by about the result's size."""
    call_args = json.dumps({"path": "hello.py"})
    result = "def hello():\n    return 'a greeting from the tool result, long enough to count'\n" * 3
    tool = {"name": TOOL_NAME, "description": TOOL_DESCRIPTION}

    def conversations(fed_back: str) -> dict[str, tuple[str, dict, tuple[str, ...]]]:
        # (path, body, where the prompt's token count is in the answer)
        return {
            "chat": ("/v1/chat/completions", {
                "max_tokens": 1, "tools": [{"type": "function", "function": {**tool, "parameters": TOOL_SCHEMA}}],
                "messages": [{"role": "user", "content": TOOL_ASK},
                             {"role": "assistant", "content": None, "tool_calls": [
                                 {"id": "call_1", "type": "function",
                                  "function": {"name": TOOL_NAME, "arguments": call_args}}]},
                             {"role": "tool", "tool_call_id": "call_1", "content": fed_back}]},
                     ("usage", "prompt_tokens")),
            "responses": ("/v1/responses", {
                "max_output_tokens": 1, "tools": [{"type": "function", **tool, "parameters": TOOL_SCHEMA}],
                "input": [{"role": "user", "content": TOOL_ASK},
                          {"type": "function_call", "call_id": "call_1", "name": TOOL_NAME, "arguments": call_args},
                          {"type": "function_call_output", "call_id": "call_1", "output": fed_back}]},
                          ("usage", "input_tokens")),
            "messages": ("/v1/messages/count_tokens", {
                "tools": [{**tool, "input_schema": TOOL_SCHEMA}],
                "messages": [{"role": "user", "content": TOOL_ASK},
                             {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1",
                                                                "name": TOOL_NAME, "input": {"path": "hello.py"}}]},
                             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1",
                                                           "content": fed_back}]}]},
                         ("input_tokens",)),
        }

    def prompt_tokens(client, path: str, body: dict, where: tuple[str, ...], api: str) -> int:
        r = client.post(path, json={"model": ep.model or "default", **body})
        assert r.status_code == 200, f"{api}: a tool result fed back: HTTP {r.status_code}: {r.text[:300]}"
        value = r.json()
        for key in where:
            value = value[key]
        return value

    grown = {}
    with ep.client(headers={"x-api-key": ep.api_key}) as client:
        full, empty = conversations(result), conversations("")
        for api, (path, body, where) in full.items():
            with_result = prompt_tokens(client, path, body, where, api)
            without = prompt_tokens(client, empty[api][0], empty[api][1], where, api)
            grown[api] = with_result - without
            # about 4 characters a token for this text; a result dropped by the template adds none
            assert grown[api] >= len(result) // 8, \
                f"{api}: the tool result added {grown[api]} prompt tokens: it does not reach the model"
    return {f"{api}_result_tokens": n for api, n in grown.items()}


# -- The SDKs, as the README tells users to configure them --------------------------------------
# Each runs in its own interpreter with only the environment the README gives: the SDK reads its
# base URL and key from there, and SSL_CERT_FILE makes it trust the appliance CA (never verify=False).

OPENAI_SDK_SCRIPT = """
import json, sys, openai
client = openai.OpenAI()  # OPENAI_BASE_URL, OPENAI_API_KEY
tools = [{"type": "function", "function": {"name": "read_file", "description": "Read a file",
          "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}]
stream = client.chat.completions.create(model=sys.argv[1], max_tokens=int(sys.argv[2]), stream=True, tools=tools,
                                        messages=[{"role": "user", "content": "Say hi."}])
choices = [c.choices[0] for c in stream if c.choices]
print(json.dumps({"text": "".join(c.delta.content or "" for c in choices),
                  "calls": sum(bool(c.delta.tool_calls) for c in choices),
                  "end": choices[-1].finish_reason if choices else None, "deltas": len(choices)}))
"""
ANTHROPIC_SDK_SCRIPT = """
import json, sys, anthropic
client = anthropic.Anthropic()  # ANTHROPIC_BASE_URL (no /v1), ANTHROPIC_API_KEY
with client.messages.stream(model=sys.argv[1], max_tokens=int(sys.argv[2]),
                            messages=[{"role": "user", "content": "Say hi."}]) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
print(json.dumps({"text": text, "calls": 0, "end": final.stop_reason, "deltas": final.usage.output_tokens}))
"""


def run_sdk(ep: Endpoint, script: str, env: dict[str, str], max_tokens: int) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "SSL_CERT"))}
    if ep.ca_file:
        clean["SSL_CERT_FILE"] = str(ep.ca_file)
    run = subprocess.run([sys.executable, "-c", script, ep.model or "default", str(max_tokens)],
                         env={**clean, **env}, capture_output=True, text=True, timeout=600)
    # The last line of a traceback names the error (a TLS failure says CERTIFICATE_VERIFY_FAILED
    # under the SDK's "Connection error."); the key is in the environment, never on the command line.
    assert run.returncode == 0, f"the SDK failed: {run.stderr.strip().splitlines()[-1:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


def openai_sdk(ep: Endpoint) -> dict:
    """The openai SDK, configured as the README says, streams an answer to its end with `tools` in
    the request as coding agents send them."""
    out = run_sdk(ep, OPENAI_SDK_SCRIPT, {"OPENAI_BASE_URL": f"{ep.base_url}/v1", "OPENAI_API_KEY": ep.api_key},
                  max_tokens=8)
    assert out["text"].strip() or out["calls"], f"the SDK stream carried no answer: {out}"
    assert out["end"] in ("stop", "length", "tool_calls"), f"the SDK stream ended with finish_reason {out['end']!r}"
    return {"deltas": out["deltas"], "finish_reason": out["end"]}


def anthropic_sdk(ep: Endpoint) -> dict:
    """The anthropic SDK, configured as the README says, streams a message to its end."""
    out = run_sdk(ep, ANTHROPIC_SDK_SCRIPT, {"ANTHROPIC_BASE_URL": ep.base_url, "ANTHROPIC_API_KEY": ep.api_key},
                  max_tokens=6)
    assert out["text"].strip(), f"the SDK streamed no text: {out}"
    assert out["end"] in ("end_turn", "max_tokens"), f"stop_reason {out['end']!r}"
    return {"output_tokens": out["deltas"], "stop_reason": out["end"]}
