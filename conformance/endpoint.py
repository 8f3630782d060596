"""An appliance endpoint as a client sees it, and the HTTP helpers every check uses."""

from __future__ import annotations

import contextlib
import json
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from vm_fixtures.util import wait_until

TIMEOUT = httpx.Timeout(connect=10, read=600, write=30, pool=10)
FULL_SIZE_S = 20  # a check asks for its full-size request only where the measured speed serves it in this
SPEED_PROMPT = [{"role": "user", "content": "Say hi."}]


@dataclass(frozen=True)
class Speed:
    """The engine's own milliseconds per prompt token and per generated token, from one short request.

    Checks are sized from it, not from the target's kind: the same image decodes at about 90 tok/s
    natively here and 1.6-3 tok/s in a TCG guest (measured 2026-11-23), and a KVM guest anywhere between."""

    prompt_ms: float
    decode_ms: float

    def seconds(self, prompt_tokens: int, tokens: int) -> float:
        return (prompt_tokens * self.prompt_ms + tokens * self.decode_ms) / 1000

    def as_dict(self) -> dict:
        return {"prompt_ms_per_token": round(self.prompt_ms, 1), "decode_ms_per_token": round(self.decode_ms, 1)}


def approx_tokens(messages: list[dict]) -> int:
    """A request's prompt tokens, roughly: 3 characters a token, plus the chat template's own."""
    return sum(len(m["content"]) for m in messages) // 3 + 30


@dataclass
class Endpoint:
    base_url: str  # https://host:port, no trailing /v1
    api_key: str = field(repr=False)  # never in a report: a deployed appliance's real key
    ca_file: Path | None  # trust this CA; never verify=False
    model: str = ""
    http_url: str = ""  # the plain-HTTP port (redirects and ACME), when the target exposes it
    _speed: Speed | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of_guest(cls, guest) -> Endpoint:
        """The appliance on a vm_fixtures Guest as a client reaches it, with its current key."""
        return cls(guest.https_url, guest.api_key(), guest.trusted_ca(), http_url=guest.http_url)

    @classmethod
    def of_stack(cls, stack, speed: Speed | None = None) -> Endpoint:
        """A LocalStack's front, through TLS, with its plain-HTTP port; `speed` when already known (a
        deliberately broken stack must not be judged by whether its speed can be measured)."""
        return cls(stack.base_url, stack.api_key, stack.ca_file, http_url=f"http://127.0.0.1:{stack.ports['http']}",
                   _speed=speed)

    @classmethod
    def of_settings(cls, settings) -> Endpoint:
        """A deployed appliance as the url target's settings name it."""
        return cls(settings.url.rstrip("/"), settings.api_key, Path(settings.ca_file) if settings.ca_file else None,
                   http_url=settings.http_url or f"http://{httpx.URL(settings.url).host}")

    def client(self, auth: bool = True, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if auth else {}
        headers.update(kwargs.pop("headers", {}))
        kwargs.setdefault("timeout", TIMEOUT)
        return httpx.Client(base_url=self.base_url, headers=headers, verify=self.tls_context(), **kwargs)

    def wait_serving(self, timeout: float, interval: float = 1.0) -> float:
        """Seconds until an authenticated /v1/models answers 200; AssertionError after `timeout`."""
        start = time.monotonic()

        def serving() -> bool:
            with contextlib.suppress(httpx.HTTPError), self.client() as client:
                return client.get("/v1/models").status_code == 200
            return False

        try:
            wait_until(serving, timeout, interval, what=f"{self.base_url} serving")
        except TimeoutError as err:
            raise AssertionError(str(err)) from None
        return time.monotonic() - start

    @property
    def speed(self) -> Speed:
        """Measured once, by a short greedy request with the prompt cache off (the engine's timings)."""
        if self._speed is None:
            with self.client() as client:
                r = client.post("/v1/chat/completions", json={"messages": SPEED_PROMPT, "max_tokens": 4,
                                                              "temperature": 0, "cache_prompt": False,
                                                              "ignore_eos": True})
            timings = r.json().get("timings", {}) if r.status_code == 200 else {}
            if not timings.get("predicted_per_token_ms"):
                raise AssertionError(f"speed probe: HTTP {r.status_code}, no engine timings: {r.text[:200]}")
            self._speed = Speed(timings["prompt_per_token_ms"], timings["predicted_per_token_ms"])
        return self._speed

    @property
    def measured_speed(self) -> Speed | None:
        return self._speed

    def affords(self, prompt_tokens: int, tokens: int, seconds: float = FULL_SIZE_S) -> bool:
        """Whether a request of this size is served within `seconds` at the measured speed."""
        return self.speed.seconds(prompt_tokens, tokens) <= seconds

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)


@dataclass
class SSEStream:
    status: int
    headers: httpx.Headers
    started: float
    events: list[tuple[float, str]] = field(default_factory=list)  # (arrival time, data)
    names: list[str] = field(default_factory=list)  # each event's `event:` field ("" when it has none)
    body: str = ""

    @property
    def chunks(self) -> list[dict]:
        return [json.loads(data) for _, data in self.events if data != "[DONE]"]

    @property
    def content(self) -> str:
        """The chat completion's text: every chunk's delta content, joined."""
        return "".join((c.get("choices") or [{}])[0].get("delta", {}).get("content") or "" for c in self.chunks)

    @property
    def content_times(self) -> list[float]:
        return self.delta_times("content")

    def delta_times(self, *fields: str) -> list[float]:
        """Arrival times of the chunks whose delta carries any of `fields` (content, tool_calls)."""
        out = []
        for t, data in self.events:
            if data != "[DONE]":
                delta = (json.loads(data).get("choices") or [{}])[0].get("delta", {})
                if any(delta.get(f) for f in fields):
                    out.append(t)
        return out

    @property
    def tool_calls(self) -> list[dict]:
        """The calls the stream's tool_calls deltas assemble, as a message's tool_calls list."""
        calls: dict[int, dict] = {}
        for chunk in self.chunks:
            for delta in (chunk.get("choices") or [{}])[0].get("delta", {}).get("tool_calls") or []:
                call = calls.setdefault(delta["index"], {"id": "", "type": "function",
                                                         "function": {"name": "", "arguments": ""}})
                call["id"] = delta.get("id") or call["id"]
                function = delta.get("function") or {}
                call["function"]["name"] += function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
        return [calls[i] for i in sorted(calls)]


def stream_events(endpoint: Endpoint, path: str, body: dict, **client_kwargs) -> SSEStream:
    """POST `body` to `path` and read its server-sent events as they arrive."""
    with endpoint.client(**client_kwargs) as client:
        started = time.monotonic()
        with client.stream("POST", path, json=body) as resp:
            result = SSEStream(resp.status_code, resp.headers, started)
            if resp.status_code != 200:
                result.body = resp.read().decode(errors="replace")
                return result
            name = ""
            # iter_lines yields as bytes arrive, so arrival times are the client's real view.
            for line in resp.iter_lines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    result.events.append((time.monotonic(), line[5:].strip()))
                    result.names.append(name)
                    name = ""
    return result


def stream_chat(endpoint: Endpoint, messages: list[dict], max_tokens: int = 32, **extra) -> SSEStream:
    body = {"model": endpoint.model or "default", "messages": messages, "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}, "seed": 42, **extra}
    return stream_events(endpoint, "/v1/chat/completions", body)
