"""The field's own load generator on the same workload: AIPerf (NVIDIA's successor to GenAI-Perf)
replays sessions of the same shape as benchmarks/sessions.py against the same target, so the
project's TTFT, ITL and E2EL can be checked against an independent measurement.

AIPerf runs from a virtualenv of its own (its dependencies are not the suite's) and fully offline:
its tokenizer is built from the served model's own GGUF (gguf_tokenizer.py), and token counts come
from the server's `usage`. It trusts the appliance's CA through SSL_CERT_FILE, as any
aiohttp client does, and reads the key from its environment (never from its command line).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from conformance.clients import install_package, served_model
from conformance.endpoint import Endpoint

from .measure import percentiles
from .sessions import ClineSession, Shape, pooled_itl, think_times

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
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:  # its output is told with the key masked, whatever it echoes
        told = (done.stdout + done.stderr).replace(ep.api_key, "<key>") if ep.api_key else done.stdout + done.stderr
        raise RuntimeError(f"aiperf exited {done.returncode}: {told[-1500:]}")
    return figures(out)


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
        "artifacts": {"dir": str(out), "summary": ["json"], "records": ["jsonl"]},
        "gpuTelemetry": {"enabled": False}, "serverMetrics": {"enabled": False},
        "runtime": {"ui": "none", "workers": developers, "recordProcessors": 1}}}


def figures(out: Path) -> dict:
    """AIPerf's own summary (ms) and, from its per-request records, warm turns only (a session's
    later turns), in seconds like benchmarks/sessions.py's."""
    summary = json.loads(next(out.rglob("profile_export_aiperf.json")).read_text())
    records = [json.loads(line) for line in next(out.rglob("profile_export.jsonl")).read_text().splitlines()]
    errors = [r for r in records if r.get("error")]
    if errors:
        raise RuntimeError(f"aiperf: {len(errors)} of {len(records)} requests failed: {errors[0]['error']}")

    metrics = [r["metrics"] for r in records]

    def values(metric: str, warm: bool | None = None) -> list[float]:
        return [r["metrics"][metric]["value"] / 1000 for r in records if metric in r.get("metrics", {})
                and (warm is None or (r["metadata"]["turn_index"] > 0) == warm)]

    return {"requests": len(records),
            "warm_ttft_s": percentiles(values("time_to_first_token", warm=True)),
            "cold_ttft_s": percentiles(values("time_to_first_token", warm=False)),
            "e2el_s": percentiles(values("request_latency")),
            "pooled_itl_s": pooled_itl([(m["time_to_first_token"]["value"] / 1000, m["request_latency"]["value"] / 1000,
                                         int(m["output_sequence_length"]["value"])) for m in metrics]),
            "summary": {k: summary[k] for k in ("time_to_first_token", "inter_token_latency", "request_latency",
                                                "output_token_throughput", "request_throughput") if k in summary}}
