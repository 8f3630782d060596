"""One streamed request, measured from the client's side and from the engine's own timings."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from conformance.endpoint import Endpoint, stream_chat

PROMPT = [{"role": "user", "content": "Write a Python function that parses an ISO 8601 date, with tests."}]


@dataclass
class Sample:
    ttft_s: float  # request sent -> first content event
    e2e_s: float  # request sent -> [DONE]
    itl_s: list[float]  # gaps between content events, as the client saw them
    tokens: int  # completion tokens (usage)
    prompt_tokens: int
    client_decode_tps: float  # (tokens - 1) / (last event - first event)
    engine_decode_tps: float  # the engine's predicted_per_second
    engine_prompt_tps: float  # the engine's prompt_per_second
    text: str = ""  # the answer (temperature 0: what a setting that must not change it is held to)
    timings: dict = field(default_factory=dict)  # the engine's own, as sent (draft_n with speculation)

    def as_dict(self) -> dict:
        d = asdict(self)
        for bulky in ("itl_s", "text", "timings"):
            d.pop(bulky)
        return d


def one_request(ep: Endpoint, max_tokens: int, prompt: list[dict] = PROMPT, ignore_eos: bool = True) -> Sample:
    """One streamed request at temperature 0, its prompt computed anew (no cache). `ignore_eos`: decode
    exactly `max_tokens` (throughput), or stop where the model does (what an answer really is)."""
    s = stream_chat(ep, prompt, max_tokens=max_tokens, temperature=0, cache_prompt=False, ignore_eos=ignore_eos)
    if s.status != 200:
        raise RuntimeError(f"HTTP {s.status}: {s.body[:200]}")
    times = s.content_times
    last = s.chunks[-1]
    timings, usage = last.get("timings") or {}, last.get("usage") or {}
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    return Sample(
        ttft_s=(times[0] if times else s.events[-1][0]) - s.started, e2e_s=s.events[-1][0] - s.started,
        itl_s=[b - a for a, b in zip(times, times[1:], strict=False)],
        tokens=usage.get("completion_tokens", len(times)), prompt_tokens=usage.get("prompt_tokens", 0),
        client_decode_tps=(len(times) - 1) / span if span else float("nan"),
        engine_decode_tps=timings.get("predicted_per_second", float("nan")),
        engine_prompt_tps=timings.get("prompt_per_second", float("nan")),
        text=s.content, timings=timings,
    )


def concurrent(ep: Endpoint, streams: int, max_tokens: int) -> dict:
    """`streams` clients at once: aggregate and per-stream throughput."""
    samples: list[Sample] = []
    errors: list[str] = []

    def client():
        try:
            samples.append(one_request(ep, max_tokens))
        except Exception as err:  # noqa: BLE001 (reported, not swallowed)
            errors.append(repr(err))

    wall = run_at_once([client] * streams)
    if errors:
        raise RuntimeError(f"{len(errors)} of {streams} streams failed: {errors[:2]}")
    return {"streams": streams, "wall_s": wall,
            "aggregate_tps": sum(s.tokens for s in samples) / wall,
            "per_stream_tps": statistics.median(s.client_decode_tps for s in samples),
            "ttft_s": statistics.median(s.ttft_s for s in samples)}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    qs = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return {"p50": qs[49], "p95": qs[94], "p99": qs[98], "mean": statistics.fmean(values)}


def summarize(samples: list[Sample]) -> dict:
    out = {k: percentiles([getattr(s, k) for s in samples])
           for k in ("ttft_s", "e2e_s", "client_decode_tps", "engine_decode_tps", "engine_prompt_tps")}
    out["itl_s"] = percentiles([g for s in samples for g in s.itl_s])
    out["tokens_per_request"] = statistics.fmean(s.tokens for s in samples)
    out["n"] = len(samples)
    return out


def interleaved(a: Endpoint, b: Endpoint, rounds: int, max_tokens: int, prompt: list[dict] = PROMPT,
                ignore_eos: bool = True) -> list[tuple[Sample, Sample]]:
    """A/B/A/B in one run: the noise of a busy machine hits both sides alike. (a, b) per round."""
    return [(one_request(a, max_tokens, prompt, ignore_eos), one_request(b, max_tokens, prompt, ignore_eos))
            for _ in range(rounds)]


def pair_ratio(pairs: list[tuple[Sample, Sample]], metric: str) -> dict:
    """a / b of `metric`, round by round: its median, range and each side's median."""
    ratios = [getattr(a, metric) / getattr(b, metric) for a, b in pairs]
    return {"metric": metric, "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "a_median": statistics.median(getattr(a, metric) for a, _ in pairs),
            "b_median": statistics.median(getattr(b, metric) for _, b in pairs), "rounds": len(pairs)}


def interleaved_ratio(a: Endpoint, b: Endpoint, rounds: int, max_tokens: int, metric: str) -> dict:
    return pair_ratio(interleaved(a, b, rounds, max_tokens), metric)


def run_at_once(jobs: list) -> float:
    """Each job in a thread of its own, all started together; seconds until the last is done."""
    threads = [threading.Thread(target=job) for job in jobs]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - t0


@contextmanager
def sampled(read: Callable[[], float | None], interval: float) -> Iterator[list[tuple[float, float]]]:
    """`read()` every `interval` seconds, in a thread, while the block runs: (seconds since its start,
    value) pairs; a None (nothing to read) is left out."""
    samples: list[tuple[float, float]] = []
    stop, t0 = threading.Event(), time.monotonic()

    def loop() -> None:
        while True:
            value = read()
            if value is not None:
                samples.append((round(time.monotonic() - t0, 1), value))
            if stop.wait(interval):
                return

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()
