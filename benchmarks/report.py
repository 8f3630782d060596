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
    if results.get("sessions") and sessions_plot(results["sessions"], out / "sessions_ttft.png"):
        plots.append("sessions_ttft.png")
    runs = [*(results.get("sessions") or {}).values(), *(results.get("session_kinds") or {}).values()]
    if rss_plot(runs, out / "sessions_rss.png"):
        plots.append("sessions_rss.png")
    entries = history.read(past)
    if entries and history.plot(entries, out / "history.png"):
        plots.append("history.png")
    (out / "benchmark.md").write_text(markdown(results, gate_rows, plots) + "\n".join(history.markdown(entries, past)))


def sessions_plot(runs: dict, path: Path) -> bool:
    """Time to first token per turn, one line per developer, one panel per developer count: the
    cold first turn against the warm ones is what a user of the appliance feels."""
    counts = sorted(runs, key=int)
    fig, axes = plt.subplots(1, len(counts), figsize=(4 * len(counts), 3.5), sharey=True, squeeze=False)
    for ax, count in zip(axes[0], counts, strict=True):
        turns = runs[count]["turns"]
        for dev in sorted({t["developer"] for t in turns}):
            mine = [t for t in turns if t["developer"] == dev]
            ax.plot([t["turn"] + 1 for t in mine], [t["ttft_s"] for t in mine], "o-", label=f"developer {dev + 1}")
        ax.set(xlabel="turn", title=f"{count} developer(s)")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("time to first token (s)")
    axes[0][-1].legend(fontsize="small")
    fig.suptitle("Agentic sessions: TTFT per turn (turn 1 cold, later turns warm)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def rss_plot(runs: list[dict], path: Path) -> bool:
    """The engine's resident memory through each replay, against the budget configure gave it."""
    runs = [r for r in runs if (r.get("engine_rss_mib") or {}).get("samples")]
    if not runs:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for r in runs:
        t, mib = zip(*r["engine_rss_mib"]["samples"], strict=True)
        ax.plot(t, mib, label=f"{r.get('kind', 'cline')}, {r['developers']} developer(s)")
    budget = next((r["engine_rss_mib"]["budget"] for r in runs if r["engine_rss_mib"].get("budget")), None)
    peak = max(r["engine_rss_mib"]["peak"] for r in runs)
    if budget and budget <= 2 * peak:  # drawn where it would not flatten the curves to the axis
        ax.axhline(budget, color="red", linestyle="--", label=f"budget {budget} MiB")
    ax.set(xlabel="seconds into the replay", ylabel="engine RSS (MiB)",
           title=f"Engine memory during the sessions (budget {budget or '?'} MiB)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def shape_line(shape: dict | None) -> list[str]:
    """Which session shape ran, and how it was fitted to the served context when it did not fit."""
    if not shape:
        return []
    ran, asked = shape["ran"], shape["asked"]
    said = (f"Shape `{shape['name']}`: a {ran['system_tokens']:,}-token system prompt, {ran['turns']} turns of "
            f"+{ran['turn_tokens']:,} tokens, answers of up to {ran['answer_tokens']}")
    if ran != asked:
        said += (f"; asked for {asked['system_tokens']:,} and +{asked['turn_tokens']:,}, fitted to a slot's share of "
                 f"the served context ({shape['context']:,} tokens on {shape['slots']} slots)")
    return [said + ".", ""]


def sessions_table(runs: dict, anchor: dict | None = None, kinds: dict | None = None) -> list[str]:
    lines = ["## Agentic sessions", "", "Figures named as the field names them (TTFT, ITL, TPOT, E2EL). A warm "
             "turn's excess is the prompt tokens it computed over those it added (1.0 is ideal; the gate allows "
             "1.05). A cold turn is a session's first: its system prompt may be cached by another session, as "
             "in a team. Crosstalk: of the developers' last answers under load, how many equal the same request "
             "sent alone at temperature 0.", ""]
    lines += session_rows(runs)
    if kinds:
        lines += ["", "### Other clients' sessions", "", "Continue (native tools in every request, `tool` "
                  "messages) and aider (an edit changes a chat file, which comes before the repository map and the "
                  "history, so the next turn recomputes them: reported, not gated), same shape. Goodput: the share "
                  "of turns meeting every "
                  f"target ({goodput_targets(kinds)}).", ""]
        lines += session_rows(kinds)
    if anchor:
        lines += ["", "### Against llama-server's defaults", "", "The same replay, in the same run, against the "
                  "same engine and model with none of the appliance's settings (no proxy either): "
                  f"`{' '.join(next(iter(anchor.values())).get('engine_args', []))}`.", ""]
        lines += session_rows(anchor)
        lines += ["", "Appliance over defaults (above 1: the appliance is better; times as defaults / appliance):", "",
                  "| developers | TTFT cold | TTFT warm | E2EL | cache hit ratio | output tok/s | engine prompt tok/s "
                  "| outside the engine p50 s (appliance, defaults) |", "|---" * 8 + "|"]
        for count, r in sorted(anchor.items(), key=lambda kv: int(kv[0])):
            v = r.get("appliance_vs_defaults") or {}
            figures = (v.get(k) for k in ("cold_ttft", "warm_ttft", "e2el", "cache_hit", "output_tps",
                                          "engine_prompt_tps"))
            outside = (((runs.get(count) or {}).get("outside_engine_s") or {}).get("p50"),
                       (r.get("outside_engine_s") or {}).get("p50"))
            lines.append(f"| {count} | " + " | ".join(_fmt(f) for f in figures) +
                         f" | {_fmt(outside[0])}, {_fmt(outside[1])} |")
    return lines + [""]


def session_rows(runs: dict) -> list[str]:
    lines = ["| client | developers | engine slots | turns | TTFT cold p50 s | TTFT warm p50 s | TTFT warm p99 s | "
             "ITL p50 s | E2EL p50 s | cache hit ratio | worst warm excess | goodput | output tok/s | wall s | "
             "engine RSS peak MiB (budget) | crosstalk | failed sessions |", "|---" * 17 + "|"]
    for r in sorted(runs.values(), key=lambda r: (r.get("kind", "cline"), r["developers"])):
        same = sum(1 for x in r.get("crosstalk", []) if x["identical"])
        good = (r.get("goodput") or {}).get("share")
        rss = r.get("engine_rss_mib") or {}
        lines.append(f"| {r.get('kind', 'cline')} | {r['developers']} | {r.get('slots') or '?'} | {len(r['turns'])} | "
                     f"{_fmt(r['cold_ttft_s'].get('p50'))} | "
                     f"{_fmt(r['warm_ttft_s'].get('p50'))} | {_fmt(r['warm_ttft_s'].get('p99'))} | "
                     f"{_fmt(r['itl_s'].get('p50'))} | {_fmt(r['e2el_s'].get('p50'))} | {_fmt(r['cache_hit_ratio'])} | "
                     f"{_fmt(r['worst_warm_excess'])} | {_fmt(good)} | {_fmt(r['output_tps'])} | {_fmt(r['wall_s'])} | "
                     f"{_fmt(rss.get('peak'))} ({_fmt(rss.get('budget'))}) | "
                     f"{same} of {len(r.get('crosstalk', []))} identical | {len(r.get('errors', []))}"
                     f"{': ' + r['errors'][0][:90] if r.get('errors') else ''} |")
    return lines


def goodput_targets(runs: dict) -> str:
    slo = next((r["goodput"]["slo"] for r in runs.values() if r.get("goodput")), {})
    return ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} at most {v} s" for k, v in slo.items())


def aiperf_table(check: dict) -> list[str]:
    ours, theirs = check["ours"], check["aiperf"]
    ours_paced, theirs_paced = ours.get("paced", {}), theirs.get("paced", {})
    rows = (("TTFT, warm turns, p50 s", ours["warm_ttft_s"].get("p50"), theirs["warm_ttft_s"].get("p50"),
             "warm TTFT p50", "warm_ttft", "warm TTFT over the engine's"),
            ("ITL pooled, s per token", ours["pooled_itl_s"], theirs["pooled_itl_s"], "ITL pooled", "itl",
             "ITL over the engine's"),
            ("E2EL p50 s", ours["e2el_s"].get("p50"), theirs["e2el_s"].get("p50"), "E2EL p50", "e2el",
             "E2EL over the engine's"))
    return ["## Cross-check: AIPerf on sessions of the same shape", "",
            f"{check['developers']} developers each side, back to back, distinct sessions. Agreement: AIPerf / ours "
            f"within {check['band'][0]}-{check['band'][1]} for each tool's time over the engine's own for the same "
            f"requests (paced); the plain ratio moves with the engine's pace between the two runs. Load generator "
            f"CPU: ours {_fmt(ours.get('cpu_s'))} s, AIPerf {_fmt(theirs.get('cpu_s'))} s.", "",
            "| figure | ours | AIPerf | AIPerf / ours | ours paced | AIPerf paced | paced ratio |",
            "|---|---|---|---|---|---|---|"] + [
        f"| {name} | {_fmt(a)} | {_fmt(b)} | {_fmt(check['ratios'].get(key))} | {_fmt(ours_paced.get(pk))} | "
        f"{_fmt(theirs_paced.get(pk))} | {_fmt(check.get('paced_ratios', {}).get(rk))} |"
        for name, a, b, key, pk, rk in rows] + [""]


def tuning_table(rows: dict) -> list[str]:
    lines = ["## Engine settings tried (tuned / the appliance's own, same engine, interleaved)", "",
             "| setting | flags | figure | ratio (median) | appliance | tuned | answer unchanged | drafts accepted | "
             "verdict |", "|---" * 9 + "|"]
    for name, r in rows.items():
        speculative = "decode_ratio" in r
        figure = "decode tok/s" if speculative else f"prompt tok/s ({r.get('prompt_n')} tokens)"
        kind = "decode" if speculative else "prompt"
        drafts = f"{r.get('draft_accepted')} of {r.get('draft_n')}" if speculative else ""
        lines.append(f"| {name} | `{r['flags']}` | {figure} | {_fmt(r[f'{kind}_ratio'])} | "
                     f"{_fmt(r[f'plain_{kind}_tps'])} | {_fmt(r[f'tuned_{kind}_tps'])} | "
                     f"{r.get('identical', '') if speculative else ''} | {drafts} | {r.get('verdict', '')} |")
    return lines + [""]


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
    if results.get("sessions"):
        lines += sessions_table(results["sessions"], results.get("sessions_anchor"), results.get("session_kinds"))
        lines += shape_line(results.get("sessions_shape"))
    if results.get("aiperf"):
        lines += aiperf_table(results["aiperf"])
    if results.get("tuning"):
        lines += tuning_table(results["tuning"])
    for comparison in (results.get("compare") or {}).values():
        lines.append(comparison["markdown"])
    if gate_rows:
        from .gate import table

        lines += ["## Regression gate", "", "Figures the hardware sets are judged only against a baseline of "
                  "this host's key; the in-run ratios against any host's.", "", table(gate_rows), ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
