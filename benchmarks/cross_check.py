"""The field's own load generator on the same workload: AIPerf (NVIDIA's successor to GenAI-Perf)
replays sessions of the same shape as benchmarks/sessions.py against the same target, so the
project's TTFT, ITL and E2EL can be checked against an independent measurement.

On 2 cores AIPerf's own processes take CPU from the engine, so its run can find the engine slower
than the project's did (measured: warm TTFT 1.43 times ours, with the same tokens computed). The
verdict therefore compares each tool's times over the engine's own time for the same requests
(`paced`): what the measuring code adds, whatever pace the engine kept. Raw ratios are reported too.

AIPerf runs from a virtualenv of its own (its dependencies are not the suite's) and fully offline:
its tokenizer is built from the served model's own GGUF (gguf_tokenizer.py), and token counts come
from the server's `usage`. It trusts the appliance's CA through SSL_CERT_FILE, as any
aiohttp client does, and reads the key from its environment (never from its command line).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
from pathlib import Path
from typing import NamedTuple

import yaml

from conformance.clients import install_package, served_model
from conformance.endpoint import Endpoint

from .measure import percentiles
from .sessions import NAN, ClineSession, Shape, pooled_itl, think_times

AIPERF = "aiperf==0.13.0 gguf==0.19.0"  # gguf: the tokenizer is read from the model file


def dataset(developers: int, shape: Shape, seed_base: int) -> list[dict]:
    """AIPerf's multi_turn records for `developers` sessions: the shared system prompt, the task, then
    a tool result per turn, with the think time benchmarks/sessions.py would wait (same seeds, same
    draws). AIPerf sends each turn with the history, the model's real answers included."""
    records = []
    for d in range(developers):
        seed = seed_base + d
        session, pauses = ClineSession(seed=seed, shape=shape), think_times(seed, shape)
        users = [session.messages[1]["content"]]
        for k in range(1, shape.turns):
            session.next_turn("", k)
            users.append(session.messages[-1]["content"])
        turns = [{"role": "system", "text": session.messages[0]["content"]}]
        for k, text in enumerate(users):
            turn = {"text": text, "output_length": shape.answer_tokens}
            if k:
                turn["delay"] = round(pauses[k - 1] * 1000)
            turns.append(turn)
        records.append({"session_id": f"developer-{d}", "turns": turns})
    return records


def tokenizer_dir(bin_dir: Path, model: Path, dest: Path) -> Path:
    if not (dest / "tokenizer.json").exists():
        done = subprocess.run([str(bin_dir / "python"), str(Path(__file__).with_name("gguf_tokenizer.py")),
                               str(model), str(dest)], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"the tokenizer for AIPerf from {model}: {done.stderr[-800:]}")
    return dest


def run(ep: Endpoint, developers: int, shape: Shape, seed_base: int, model: Path, work: Path) -> dict:
    """`developers` sessions at once through AIPerf; its summary and its warm-turn figures."""
    bin_dir = install_package("aiperf", AIPERF)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "sessions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in dataset(developers, shape, seed_base)))
    out = work / "aiperf"
    config = work / "aiperf.yaml"
    config.write_text(yaml.safe_dump(run_config(ep, developers, seed_base, data, out,
                                                tokenizer_dir(bin_dir, model, work / "tokenizer"))))
    argv = [str(bin_dir / "aiperf"), "profile", "--config", str(config)]
    env = {**os.environ, "SLM_BENCH_KEY": ep.api_key or "", "HOME": str(work)}
    if ep.ca_file:
        env["SSL_CERT_FILE"] = str(ep.ca_file)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:  # its output is told with the key masked, whatever it echoes
        told = (done.stdout + done.stderr).replace(ep.api_key, "<key>") if ep.api_key else done.stdout + done.stderr
        raise RuntimeError(f"aiperf exited {done.returncode}: {told[-1500:]}")
    return {**figures(out), "cpu_s": cpu_seconds(before, resource.getrusage(resource.RUSAGE_CHILDREN))}


def cpu_seconds(before, after) -> float:
    """CPU time (user + system) between two getrusage readings: what a load generator cost the host."""
    return round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1)


def run_config(ep: Endpoint, developers: int, seed: int, data: Path, out: Path, tokenizer: Path) -> dict:
    """The run as AIPerf's config file (schema 2.0): the key by name only (AIPerf substitutes ${VAR}),
    the engine's own token counts, `max_tokens` (the pinned engine ignores `max_completion_tokens`),
    no warm-up (it would leave histories cached), no GPU or Prometheus collectors."""
    return {"schemaVersion": "2.0", "randomSeed": seed, "benchmark": {
        "model": served_model(ep),
        "endpoint": {"url": f"{ep.base_url}/v1/chat/completions", "type": "chat", "streaming": True,
                     "apiKey": "${SLM_BENCH_KEY}", "timeout": 3600, "useLegacyMaxTokens": True,
                     "useServerTokenCount": True, "extra": {"temperature": 0}},
        "dataset": {"type": "file", "path": str(data), "format": "multi_turn", "sampling": "sequential"},
        "tokenizer": {"name": str(tokenizer)},
        "profiling": {"type": "concurrency", "concurrency": developers, "sessions": developers},
        "artifacts": {"dir": str(out), "summary": ["json"], "records": ["jsonl"], "raw": True},
        "gpuTelemetry": {"enabled": False}, "serverMetrics": {"enabled": False},
        "runtime": {"ui": "none", "workers": developers, "recordProcessors": 1}}}


class Timed(NamedTuple):
    """One request as a tool measured it, beside the engine's own timings of the same request."""
    warm: bool
    ttft_s: float
    e2el_s: float
    output_tokens: int
    engine_prompt_s: float
    engine_decode_s: float


def paced(requests: list[Timed]) -> dict:
    """A tool's times over the engine's own for the same requests (p50 of the per-request ratios):
    warm TTFT over prompt time, E2EL over prompt and decode time, the decode span (E2EL less TTFT)
    over decode time. Near 1 for a tool that times what the engine did, whatever its pace."""
    def p50(values: list[float]) -> float | None:
        return percentiles([v for v in values if v == v]).get("p50")  # v == v drops NaN (no timings)

    decoded = [r for r in requests if r.output_tokens > 1]
    return {"warm_ttft": p50([r.ttft_s / r.engine_prompt_s for r in requests if r.warm and r.engine_prompt_s]),
            "e2el": p50([r.e2el_s / (r.engine_prompt_s + r.engine_decode_s) for r in requests
                         if r.engine_prompt_s + r.engine_decode_s]),
            "itl": p50([(r.e2el_s - r.ttft_s) / r.engine_decode_s for r in decoded if r.engine_decode_s])}


def timed_turns(turns: list[dict]) -> list[Timed]:
    """The project's replay (sessions.replay's turns) as `paced` takes it."""
    return [Timed(t["turn"] > 0, t["ttft_s"], t["e2e_s"], t["completion_tokens"], t["engine_prompt_s"],
                  t["engine_decode_s"]) for t in turns]


def engine_timings(out: Path) -> dict[str, dict]:
    """The engine's `timings` of each request (its last SSE chunk), by AIPerf's request id."""
    timings = {}
    for line in next(out.rglob("profile_export_raw.jsonl")).read_text().splitlines():
        raw = json.loads(line)
        chunks = [json.loads(f["value"]) for r in raw.get("responses") or [] for f in r.get("packets") or []
                  if f.get("name") == "data" and f.get("value", "").startswith("{")]
        found = next((c["timings"] for c in reversed(chunks) if "timings" in c), None)
        if found:
            timings[raw["metadata"]["x_request_id"]] = found
    return timings


def figures(out: Path) -> dict:
    """AIPerf's own summary (ms) and, from its per-request records, warm turns only (a session's
    later turns), in seconds like benchmarks/sessions.py's; `paced` beside the engine's timings."""
    summary = json.loads(next(out.rglob("profile_export_aiperf.json")).read_text())
    records = [json.loads(line) for line in next(out.rglob("profile_export.jsonl")).read_text().splitlines()]
    errors = [r for r in records if r.get("error")]
    if errors:
        raise RuntimeError(f"aiperf: {len(errors)} of {len(records)} requests failed: {errors[0]['error']}")

    metrics = [r["metrics"] for r in records]
    engine = engine_timings(out)
    timed = []
    for r, m in zip(records, metrics, strict=True):
        t = engine.get(r["metadata"]["x_request_id"], {})
        timed.append(Timed(r["metadata"]["turn_index"] > 0, m["time_to_first_token"]["value"] / 1000,
                           m["request_latency"]["value"] / 1000, int(m["output_sequence_length"]["value"]),
                           t.get("prompt_ms", NAN) / 1000, t.get("predicted_ms", NAN) / 1000))

    def values(metric: str, warm: bool | None = None) -> list[float]:
        return [r["metrics"][metric]["value"] / 1000 for r in records if metric in r.get("metrics", {})
                and (warm is None or (r["metadata"]["turn_index"] > 0) == warm)]

    return {"requests": len(records),
            "warm_ttft_s": percentiles(values("time_to_first_token", warm=True)),
            "cold_ttft_s": percentiles(values("time_to_first_token", warm=False)),
            "e2el_s": percentiles(values("request_latency")),
            "pooled_itl_s": pooled_itl([(t.ttft_s, t.e2el_s, t.output_tokens) for t in timed]),
            "paced": paced(timed), "with_engine_timings": len(engine),
            "summary": {k: summary[k] for k in ("time_to_first_token", "inter_token_latency", "request_latency",
                                                "output_token_throughput", "request_throughput") if k in summary}}
