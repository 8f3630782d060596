"""Agentic coding sessions, generated and replayed: the workload the appliance exists for.

A Cline-style session is a long system prompt (tool descriptions, rules, environment) sent with
every request, and turns that each add a tool result (file contents) to the history together with
the model's own previous answer. On a CPU the prompt is the slow part, so what matters is that a
warm turn computes only what is new. Everything is generated from a seed (no downloaded data);
`Shape` scales it so a TCG guest gets a small version and a native run the full one.

Several developers replay their own sessions at once, each with think time between turns, and every
turn is measured from the client (TTFT, ITL, end-to-end) and from the engine's own timings (prompt
tokens computed vs taken from the cache). After a replay, each developer's last request is sent again
alone: at temperature 0 its answer must be the one it got under load (no streams mixed up).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from functools import partial

from conformance.endpoint import Endpoint, stream_chat

from .measure import percentiles, run_at_once

CHARS_PER_TOKEN = 3.6  # SmolLM2's tokenizer on this English and Python mix (measured: prompt_tokens)
TOOLS = ("read_file", "write_to_file", "replace_in_file", "search_files", "list_files", "list_code_definitions",
         "execute_command", "ask_followup_question", "attempt_completion", "browser_action", "new_task",
         "load_mcp_documentation")
WORDS = ("path", "content", "regex", "file_pattern", "recursive", "command", "requires_approval", "question",
         "result", "diff", "line", "block", "workspace", "directory", "pattern", "match", "output", "error")


@dataclass(frozen=True)
class Shape:
    system_tokens: int  # Cline sends 8-12k; the CI size keeps a cold turn inside a minute here
    turns: int  # requests per session, the first included
    turn_tokens: int  # what each later turn adds: a tool result (file contents)
    answer_tokens: int  # max_tokens per turn (the tiny model's answers are not the point)
    think_s: float  # a developer's pause between an answer and the next request (mean)


SHAPES = {
    "ci": Shape(system_tokens=1500, turns=4, turn_tokens=150, answer_tokens=24, think_s=0.5),
    "full": Shape(system_tokens=10000, turns=8, turn_tokens=600, answer_tokens=96, think_s=2.0),
}


def system_prompt(tokens: int) -> str:
    """Cline's system prompt in form: role, tool use with one section per tool, rules, environment.
    The same for every session (same client, same version): a team shares it."""
    rng = random.Random(0)
    head = ("You are Cline, a highly skilled software engineer with extensive knowledge in many programming "
            "languages, frameworks, design patterns, and best practices.\n\n====\n\nTOOL USE\n\nYou have access "
            "to a set of tools that are executed upon the user's approval. You use tools step-by-step to "
            "accomplish a given task, with each tool use informed by the result of the previous tool use.\n")
    rules = "\n====\n\nRULES\n\n" + "".join(
        f"- Rule {i + 1}: always {rng.choice(('read', 'check', 'verify', 'test'))} the {rng.choice(WORDS)} before "
        f"you {rng.choice(('edit', 'write', 'run', 'replace'))} the {rng.choice(WORDS)}.\n"
        for i in range(max(5, tokens // 250)))
    tail = ("\n====\n\nSYSTEM INFORMATION\n\nOperating System: Linux 6.1\nDefault Shell: /bin/bash\n"
            "Home Directory: /home/dev\nCurrent Working Directory: /home/dev/project\n")
    budget = int(tokens * CHARS_PER_TOKEN) - len(head) - len(rules) - len(tail)
    tools, n = "", 0
    while True:
        tool = TOOLS[n % len(TOOLS)] + ("" if n < len(TOOLS) else f"_{n // len(TOOLS)}")
        params = rng.sample(WORDS, 3)
        section = (f"\n## {tool}\nDescription: Request to {tool.replace('_', ' ')} in the current working "
                   f"directory. Use this when you need to work with {params[0]} or {params[1]}; the {params[2]} "
                   "is resolved relative to the workspace root.\nParameters:\n"
                   + "".join(f"- {p}: ({'required' if i == 0 else 'optional'}) The {p} to use, as a string. "
                             f"Defaults to the {WORDS[(i + n) % len(WORDS)]} of the previous step.\n"
                             for i, p in enumerate(params))
                   + f"Usage:\n<{tool}>\n" + "".join(f"<{p}>{p} here</{p}>\n" for p in params) + f"</{tool}>\n")
        if len(tools) + len(section) > budget:
            break
        tools += section
        n += 1
    return head + tools + rules + tail


def python_file(rng: random.Random, tokens: int, name: str) -> str:
    """A plausible module of about `tokens` tokens: what a read_file tool result carries."""
    lines = [f'"""{name}: helpers of the project."""', "", "import os", "import re", ""]
    i = 0
    while len("\n".join(lines)) < tokens * CHARS_PER_TOKEN:
        a, b = rng.sample(WORDS, 2)
        lines += [f"def {a}_{b}_{i}({a}, {b}=None):", f'    """Return the {a} for {b}."""',
                  f"    if {b} is None:", f"        {b} = os.environ.get('{b.upper()}', '')",
                  f"    return re.sub(r'\\s+', ' ', str({a})) + str({b})", ""]
        i += 1
    return "\n".join(lines)


@dataclass
class Session:
    """One developer's session: the shared system prompt, a task, then tool results turn by turn."""
    seed: int
    shape: Shape
    messages: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        module = f"src/module_{self.seed}.py"
        self.messages = [{"role": "system", "content": system_prompt(self.shape.system_tokens)},
                         {"role": "user", "content": f"<task>\nFix the failing test for {module}: the parser drops "
                                                     f"empty fields.\n</task>\n<environment_details>\n# Current "
                                                     f"Working Directory (/home/dev/project) Files\n{module}\n"
                                                     "tests/\n</environment_details>"}]

    def next_turn(self, answer: str, turn: int) -> None:
        """The model's answer, then the result of the tool it would have called."""
        name = f"src/module_{self.seed}_{turn}.py"
        self.messages += [{"role": "assistant", "content": answer},
                          {"role": "user", "content": f"[read_file for '{name}'] Result:\n"
                                                      + python_file(self.rng, self.shape.turn_tokens, name)}]


@dataclass
class Turn:
    developer: int
    turn: int
    started_s: float  # since the replay began
    ttft_s: float
    e2e_s: float
    prompt_tokens: int  # sent (usage)
    computed: int  # prompt tokens the engine processed (timings.prompt_n)
    cached: int  # taken from its cache (timings.cache_n)
    new_tokens: int  # what this turn added to the previous request and its answer (0 on a first turn)
    completion_tokens: int
    decode_tps: float  # the engine's predicted_per_second
    itl_s: list[float]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["itl_s"] = percentiles(self.itl_s)
        return d


@dataclass
class LastRequest:
    """A developer's last request and the answer it streamed under load: the crosstalk check's input."""
    developer: int
    messages: list[dict]
    answer: str


def run_session(ep: Endpoint, developer: int, seed: int, shape: Shape, t0: float, turns: list[Turn],
                errors: list[str], last: list[LastRequest]) -> None:
    session = Session(seed=seed, shape=shape)
    pauses = think_times(seed, shape)
    previous = 0
    for k in range(shape.turns):
        if k:
            time.sleep(pauses[k - 1])
        started = time.monotonic()
        s = stream_chat(ep, session.messages, max_tokens=shape.answer_tokens, temperature=0)
        failed = stream_failure(s)
        if failed:
            errors.append(f"developer {developer} turn {k}: {failed}")
            return
        final = s.chunks[-1]
        timings, usage = final.get("timings") or {}, final["usage"]
        times = s.content_times
        answer = s.content
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        turns.append(Turn(developer, k, round(started - t0, 2), (times[0] if times else s.events[-1][0]) - started,
                          s.events[-1][0] - started, prompt, timings.get("prompt_n", prompt),
                          timings.get("cache_n", 0), prompt - previous if k else 0, completion,
                          timings.get("predicted_per_second", float("nan")),
                          [b - a for a, b in zip(times, times[1:], strict=False)]))
        previous = prompt + completion
        if k == shape.turns - 1:
            last.append(LastRequest(developer, list(session.messages), answer))
        session.next_turn(answer, k + 1)


def think_times(seed: int, shape: Shape) -> list[float]:
    """A developer's pauses before each turn after the first (seconds): the same for a seed whoever
    replays the session (this replay, or AIPerf's)."""
    rng = random.Random(1000 + seed)
    return [rng.expovariate(1 / shape.think_s) for _ in range(shape.turns - 1)]


def stream_failure(s) -> str | None:
    """What went wrong with a streamed turn, if anything: an HTTP error, or a 200 whose stream carries
    an error event or ends without its usage chunk (the engine's "context size exceeded" arrives so,
    after the headers have said 200)."""
    if s.status != 200 or not s.chunks:
        return f"HTTP {s.status} {s.body[:200]}"
    error = next((c["error"] for c in s.chunks if "error" in c), None)
    if error:
        return f"HTTP 200, then an error event: {str(error)[:200]}"
    if not s.chunks[-1].get("usage"):
        return "HTTP 200, the stream ended without its usage chunk"
    return None


def replay(ep: Endpoint, developers: int, shape: Shape, seed_base: int | None = None) -> dict:
    """`developers` sessions at once, each its own; the figures of every turn and of the run.
    Sessions differ from one replay to the next (seeds by developer count unless `seed_base` says),
    so no turn finds its own history cached by an earlier replay; the system prompt may be, as it is
    in a team. A session whose turn fails stops there; the failures are in "errors"."""
    seed_base = 100 * developers if seed_base is None else seed_base
    turns: list[Turn] = []
    errors: list[str] = []
    last: list[LastRequest] = []
    t0 = time.monotonic()
    wall = run_at_once([partial(run_session, ep, d, seed_base + d, shape, t0, turns, errors, last)
                        for d in range(developers)])
    return {"developers": developers, "shape": asdict(shape), "wall_s": round(wall, 1), "errors": sorted(errors),
            "turns": [t.as_dict() for t in sorted(turns, key=lambda t: (t.developer, t.turn))],
            **summary(turns, wall), "crosstalk": crosstalk(ep, last, shape)}


def crosstalk(ep: Endpoint, last: list[LastRequest], shape: Shape) -> list[dict]:
    """Each developer's last request again, alone, at temperature 0: the answer it got under load
    must be this one, character for character (a stream given another's tokens differs at once)."""
    rows = []
    for req in sorted(last, key=lambda r: r.developer):
        s = stream_chat(ep, req.messages, max_tokens=shape.answer_tokens, temperature=0)
        alone = s.content
        same = next((i for i, (a, b) in enumerate(zip(req.answer, alone, strict=False)) if a != b),
                    min(len(req.answer), len(alone)))
        rows.append({"developer": req.developer, "status": s.status,
                     "identical": s.status == 200 and alone == req.answer, "common_prefix_chars": same,
                     "under_load": req.answer[:80], "alone": alone[:80]})
    return rows


def summary(turns: list[Turn], wall: float) -> dict:
    warm = [t for t in turns if t.turn]
    cold = [t for t in turns if not t.turn]
    sent = sum(t.prompt_tokens for t in warm)
    return {
        "cold_ttft_s": percentiles([t.ttft_s for t in cold]),
        "warm_ttft_s": percentiles([t.ttft_s for t in warm]),
        "e2el_s": percentiles([t.e2e_s for t in turns]),
        "itl_s": percentiles([g for t in turns for g in t.itl_s]),
        # As AIPerf and GenAI-Perf define ITL (a request's decode span over the gaps it holds), pooled
        # over the run: with several developers one's decode overlaps another's prompt, so single
        # requests' ITL is bimodal and their median jumps between the modes.
        "pooled_itl_s": pooled_itl([(t.ttft_s, t.e2e_s, t.completion_tokens) for t in turns]),
        "tpot_s": percentiles([1 / t.decode_tps for t in turns if t.decode_tps and t.decode_tps == t.decode_tps]),
        # Of the prompt tokens warm turns sent, the share the engine took from its cache.
        "cache_hit_ratio": round(sum(t.cached for t in warm) / sent, 4) if sent else None,
        # A warm turn's computed tokens over what it added: 1.0 is ideal, the whole prompt is a miss.
        "warm_excess": [round(t.computed / max(t.new_tokens, 1), 3) for t in warm],
        "worst_warm_excess": max((t.computed / max(t.new_tokens, 1) for t in warm), default=None),
        "output_tps": round(sum(t.completion_tokens for t in turns) / wall, 2),
        "request_throughput": round(len(turns) / wall, 3),
        "decode_tps_p50": statistics.median(t.decode_tps for t in turns),
    }


def pooled_itl(requests: list[tuple[float, float, int]]) -> float | None:
    """(TTFT, E2EL, output tokens) per request -> seconds per generated token after the first."""
    gaps = sum(n - 1 for _, _, n in requests if n > 1)
    return round(sum(e2e - ttft for ttft, e2e, n in requests if n > 1) / gaps, 5) if gaps else None


def versus(tuned: dict, anchor: dict) -> dict:
    """The tuned run's figures against the anchor's, each as a speed-up (above 1: the tuned one is
    better): times as anchor / tuned, ratios and rates as tuned / anchor."""
    def ratio(a, b):
        return round(a / b, 3) if a and b else None
    return {"cold_ttft": ratio(anchor["cold_ttft_s"].get("p50"), tuned["cold_ttft_s"].get("p50")),
            "warm_ttft": ratio(anchor["warm_ttft_s"].get("p50"), tuned["warm_ttft_s"].get("p50")),
            "e2el": ratio(anchor["e2el_s"].get("p50"), tuned["e2el_s"].get("p50")),
            "cache_hit": ratio(tuned["cache_hit_ratio"], anchor["cache_hit_ratio"]),
            "output_tps": ratio(tuned["output_tps"], anchor["output_tps"])}
