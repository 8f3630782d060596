"""JSON, Markdown and PNG plots of a benchmark run."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import history  # noqa: E402


def write(results: dict, gate_rows: list[dict], out: Path, itl_samples: list[float], past: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    plots = []
    conc = results.get("concurrency") or {}
    if conc:
        xs = sorted(int(c) for c in conc)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, [conc[str(c)]["aggregate_tps"] for c in xs], "o-", label="aggregate")
        ax.plot(xs, [conc[str(c)]["per_stream_tps"] for c in xs], "s--", label="per stream")
        ax.set(xlabel="concurrent streams", ylabel="decode tokens/s", title="Throughput vs concurrency")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=100)
        plots.append("throughput.png")
        plt.close(fig)
    if itl_samples:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist([x * 1000 for x in itl_samples], bins=40)
        ax.set(xlabel="inter-token latency at the client (ms)", ylabel="tokens", title="Inter-token latency")
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=100)
        plots.append("latency.png")
        plt.close(fig)
    models = results.get("cpu_models") or {}
    if models:
        fig, ax = plt.subplots(figsize=(6, 4))
        names = sorted(models)
        ax.bar(names, [models[m]["engine_decode_tps"] for m in names])
        ax.set(ylabel="decode tokens/s (emulated)", title="Per CPU model (TCG guest: emulator figures)")
        fig.tight_layout()
        fig.savefig(out / "cpu_models.png", dpi=100)
        plots.append("cpu_models.png")
        plt.close(fig)
    entries = history.read(past)
    if entries and history.plot(entries, out / "history.png"):
        plots.append("history.png")
    (out / "benchmark.md").write_text(markdown(results, gate_rows, plots) + "\n".join(history.markdown(entries, past)))


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def markdown(results: dict, gate_rows: list[dict], plots: list[str]) -> str:
    lines = [f"# SLM-Copilot benchmark: target `{results['target']}`, host `{results.get('host_key')}`", ""]
    m = results.get("machine", {})
    facts = [f"Machine: {m.get('model')} ({m.get('cores')} cores, {m.get('mem_gib')} GiB, flags "
             f"{', '.join(m.get('flags', []))})", f"memory bandwidth {_fmt(m.get('bandwidth_gbs'))} GB/s"]
    if results.get("engine_variant"):
        facts.append(f"engine variant `{results['engine_variant']}`")
    if results.get("model_bytes"):
        facts.append(f"model {results['model_bytes']} bytes")
    if results.get("roofline"):
        facts.append(f"roofline {_fmt(results['roofline'])} of the memory-bound peak")
    lines += ["; ".join(facts) + ".", ""]
    single = results.get("single") or {}
    if single:
        lines += ["## One stream", "", "| metric | p50 | p95 | p99 | mean |", "|---|---|---|---|---|"]
        for k in ("ttft_s", "itl_s", "e2e_s", "client_decode_tps", "engine_decode_tps", "engine_prompt_tps"):
            v = single.get(k) or {}
            lines.append(f"| {k} | {_fmt(v.get('p50'))} | {_fmt(v.get('p95'))} | {_fmt(v.get('p99'))} | "
                         f"{_fmt(v.get('mean'))} |")
        lines.append("")
    if results.get("concurrency"):
        lines += ["## Concurrency", "", "| streams | aggregate tok/s | per-stream tok/s | TTFT s |",
                  "|---|---|---|---|"]
        for c, v in sorted(results["concurrency"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {c} | {_fmt(v['aggregate_tps'])} | {_fmt(v['per_stream_tps'])} | {_fmt(v['ttft_s'])} |")
        lines.append("")
    for key, title in (("proxy_overhead", "Proxy overhead (through nginx+TLS+auth / direct, interleaved)"),):
        if results.get(key):
            lines += [f"## {title}", "", "| metric | median ratio | min | max | rounds |", "|---|---|---|---|---|"]
            for name, v in results[key].items():
                lines.append(f"| {name} | {_fmt(v['ratio_median'])} | {_fmt(v['ratio_min'])} | "
                             f"{_fmt(v['ratio_max'])} | {v['rounds']} |")
            lines.append("")
    if results.get("cpu_variant"):
        v = results["cpu_variant"]
        lines += ["## CPU variant penalty (native, interleaved)", "",
                  f"Best variant `{v['best']}` / baseline `x64` decode tok/s: {_fmt(v['ratio_median'])} "
                  f"(min {_fmt(v['ratio_min'])}, max {_fmt(v['ratio_max'])}): a qemu64-class CPU decodes at "
                  f"{_fmt(1 / v['ratio_median'])} of this host's speed.", ""]
    if results.get("cpu_models"):
        lines += ["## Per CPU model in TCG guests (emulator figures, not CPU figures)", "",
                  "| CPU model | variant | engine decode tok/s | engine prompt tok/s |", "|---|---|---|---|"]
        for name, v in sorted(results["cpu_models"].items()):
            lines.append(f"| {name} | {v['variant']} | {_fmt(v['engine_decode_tps'])} | "
                         f"{_fmt(v['engine_prompt_tps'])} |")
        lines.append("")
    for comparison in (results.get("compare") or {}).values():
        lines.append(comparison["markdown"])
    if gate_rows:
        from .gate import table

        lines += ["## Regression gate", "", "Figures the hardware sets are judged only against a baseline of "
                  "this host's key; the in-run ratios against any host's.", "", table(gate_rows), ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
