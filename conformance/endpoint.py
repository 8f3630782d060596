"""An appliance endpoint as a client sees it, and the HTTP helpers every check uses."""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

TIMEOUT = httpx.Timeout(connect=10, read=600, write=30, pool=10)


@dataclass
class Endpoint:
    base_url: str  # https://host:port, no trailing /v1
    api_key: str
    ca_file: Path | None  # trust this CA; never verify=False
    model: str = ""
    emulated: bool = False  # a TCG guest decodes at 0.2-2 tok/s: checks ask for fewer tokens
    http_url: str = ""  # the plain-HTTP port (redirects and ACME), when the target exposes it

    @classmethod
    def of_guest(cls, guest) -> Endpoint:
        """The appliance on a vm_fixtures Guest as a client reaches it, with its current key."""
        return cls(guest.https_url, guest.read_file("/var/lib/slm-copilot/api_key").strip(), guest.trusted_ca(),
                   emulated=guest.emulated, http_url=guest.http_url)

    @classmethod
    def of_stack(cls, stack) -> Endpoint:
        """A LocalStack's front, through TLS, with its plain-HTTP port."""
        return cls(stack.base_url, stack.api_key, stack.ca_file, http_url=f"http://127.0.0.1:{stack.ports['http']}")

    @classmethod
    def of_settings(cls, settings, emulated: bool = False) -> Endpoint:
        """A deployed appliance as the url target's settings name it."""
        return cls(settings.url.rstrip("/"), settings.api_key, Path(settings.ca_file) if settings.ca_file else None,
                   emulated=emulated, http_url=settings.http_url or f"http://{httpx.URL(settings.url).host}")

    def client(self, auth: bool = True, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if auth else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx.Client(base_url=self.base_url, headers=headers, verify=self.tls_context(), timeout=TIMEOUT,
                            **kwargs)

    def wait_serving(self, timeout: float, interval: float = 1.0) -> float:
        """Seconds until an authenticated /v1/models answers 200; AssertionError after `timeout`."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                with self.client() as client:
                    if client.get("/v1/models").status_code == 200:
                        return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(interval)
        raise AssertionError(f"{self.base_url} did not serve within {timeout}s")

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)


@dataclass
class SSEStream:
    status: int
    headers: httpx.Headers
    started: float
    events: list[tuple[float, str]] = field(default_factory=list)  # (arrival time, data)
    body: str = ""

    @property
    def chunks(self) -> list[dict]:
        return [json.loads(data) for _, data in self.events if data != "[DONE]"]

    @property
    def content_times(self) -> list[float]:
        out = []
        for t, data in self.events:
            if data != "[DONE]":
                choices = json.loads(data).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    out.append(t)
        return out


def stream_chat(endpoint: Endpoint, messages: list[dict], max_tokens: int = 32, **extra) -> SSEStream:
    body = {"model": endpoint.model or "default", "messages": messages, "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}, "seed": 42, **extra}
    with endpoint.client() as client:
        started = time.monotonic()
        with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            result = SSEStream(resp.status_code, resp.headers, started)
            if resp.status_code != 200:
                result.body = resp.read().decode(errors="replace")
                return result
            # iter_lines yields as bytes arrive, so arrival times are the client's real view.
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    result.events.append((time.monotonic(), line[5:].strip()))
    return result
