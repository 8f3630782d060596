"""Agentic coding sessions, generated and replayed: the workload the appliance exists for.

Three clients' sessions, as each builds its requests (KINDS):
- Cline: a long system prompt (tool descriptions in XML, rules, environment) sent with every
  request; each turn adds the model's previous answer and a tool result (file contents).
- Continue (agent mode): a short system message and native `tools` (JSON schemas, its built-in
  tools and a team's MCP servers') in every request; each turn adds the answer with its tool call
  and the tool's result as a `tool` message.
- aider: its edit-format instructions, the files added to the chat, the repository map, the
  history, then the new request with a reminder of the edit rules (aider's own order). Each answer
  edits a file, which comes before the map and the history: the next turn recomputes everything
  from the edit on whatever the engine caches, so its excess is reported, not gated.
On a CPU the prompt is the slow part, so what matters is that a warm turn computes only what is new.
Everything is generated from a seed (no downloaded data); `Shape` scales it so a TCG guest gets a
small version and a native run the full one.

Several developers replay their own sessions at once, each with think time between turns, and every
turn is measured from the client (TTFT, ITL, end-to-end) and from the engine's own timings (prompt
tokens computed vs taken from the cache). After a replay, each developer's last request is sent again
alone: at temperature 0 its answer must be the one it got under load (no streams mixed up).
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import ClassVar

from conformance.endpoint import Endpoint, stream_chat

from .measure import percentiles, run_at_once

# The targets a turn must meet to count as good (goodput, as AIPerf defines it: the requests per second
# that meet every target): a warm turn's first token within 5 s, a cold one's before Cline gives up on
# a request (5 minutes), and decode at least at reading speed (5 tokens/s: TPOT 0.2 s).
NAN = float("nan")  # a figure the engine did not send
SLO = {"warm_ttft_s": 5.0, "cold_ttft_s": 300.0, "tpot_s": 0.2}
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


# What a session's estimate leaves for what it does not count: the chat template's own tokens and the
# error of CHARS_PER_TOKEN on other text (measured: sessions whose estimate was 3,747 tokens (Cline's)
# and 3,774 (aider's) reached 3,860 and about 4,300).
FIT_MARGIN = 0.85
TEMPLATE_TOKENS = 4  # per message: ChatML's role and delimiters

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
class ClineSession:
    """One developer's Cline session: the shared system prompt, a task, then tool results turn by turn."""
    seed: int
    shape: Shape
    messages: list[dict] = field(default_factory=list)
    tools: list[dict] | None = None  # native tools sent with every request (Continue's)
    gated: ClassVar[bool] = True  # whether a warm turn must compute only what it added (module docstring)

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        module = f"src/module_{self.seed}.py"
        self.messages = [{"role": "system", "content": system_prompt(self.shape.system_tokens)},
                         {"role": "user", "content": f"<task>\nFix the failing test for {module}: the parser drops "
                                                     f"empty fields.\n</task>\n<environment_details>\n# Current "
                                                     f"Working Directory (/home/dev/project) Files\n{module}\n"
                                                     "tests/\n</environment_details>"}]

    def request(self) -> dict:
        """What the next request sends besides its messages."""
        return {"tools": self.tools} if self.tools else {}

    def next_turn(self, answer: str, turn: int, calls: list[dict] | None = None) -> None:
        """The model's answer, then the result of the tool it would have called."""
        name = f"src/module_{self.seed}_{turn}.py"
        self.messages += [{"role": "assistant", "content": answer},
                          {"role": "user", "content": f"[read_file for '{name}'] Result:\n"
                                                      + python_file(self.rng, self.shape.turn_tokens, name)}]


CONTINUE_TOOLS = ("read_file", "edit_existing_file", "create_new_file", "run_terminal_command", "grep_search",
                  "file_glob_search", "ls", "view_diff", "read_currently_open_file", "view_subdirectory",
                  "view_repo_map", "codebase", "fetch_url_content", "search_web", "create_rule_block")


def tool_schemas(tokens: int) -> list[dict]:
    """Continue's built-in tools as OpenAI function schemas, then a team's MCP servers' tools until
    the schemas hold about `tokens` tokens. The same for every session (same client and servers)."""
    rng = random.Random(1)
    tools, size, n = [], 0, 0
    while True:
        name = CONTINUE_TOOLS[n] if n < len(CONTINUE_TOOLS) else f"mcp_server{n // 8}_{rng.choice(WORDS)}_{n}"
        params = rng.sample(WORDS, 3)
        tool = {"type": "function", "function": {
            "name": name,
            "description": f"Use this tool to {name.replace('_', ' ')} in the workspace. Pass the {params[0]} "
                           f"relative to the root; the {params[1]} is optional and defaults to the {params[2]}.",
            "parameters": {"type": "object", "required": [params[0]], "properties": {
                p: {"type": "string", "description": f"The {p} to use: a path, pattern or text as the user "
                                                     f"wrote it ({'required' if i == 0 else 'optional'})."}
                for i, p in enumerate(params)}}}}
        cost = len(json.dumps(tool)) / CHARS_PER_TOKEN
        if tools and size + cost > tokens:
            return tools
        tools.append(tool)
        size += cost
        n += 1


@dataclass
class ContinueSession(ClineSession):
    """One developer's Continue agent session: native tools in every request, tool calls answered
    with `tool` messages."""

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        self.tools = tool_schemas(self.shape.system_tokens)
        module = f"src/module_{self.seed}.py"
        self.messages = [{"role": "system", "content": (
                             "<important_rules>\n  You are in agent mode.\n  Always include the language and "
                             "file name in the info string when you write code blocks.\n  Use the tools to read "
                             "files before you edit them.\n</important_rules>")},
                         {"role": "user", "content": f"The test for {module} fails: the parser drops empty "
                                                     "fields. Find the cause and fix it."}]

    def next_turn(self, answer: str, turn: int, calls: list[dict] | None = None) -> None:
        """The answer with its tool calls (the model's own when it made some, as a client sends them
        back; else the read_file call it would have made), then each tool's result (a file). A call cut
        off at the answer's length has arguments that are not JSON: no client can run it, and the engine
        answers a history holding one with HTTP 500 (seen in the full shape), so it is left out."""
        name = f"src/module_{self.seed}_{turn}.py"
        calls = [c for c in calls or () if parses(c["function"]["arguments"])] or [
            {"id": f"call_{self.seed}_{turn}", "type": "function",
             "function": {"name": "read_file", "arguments": json.dumps({"filepath": name})}}]
        self.messages.append({"role": "assistant", "content": answer, "tool_calls": calls})
        self.messages += [{"role": "tool", "tool_call_id": call["id"],
                           "content": python_file(self.rng, self.shape.turn_tokens // len(calls), f"{name}:{k}")}
                          for k, call in enumerate(calls)]


def parses(arguments: str) -> bool:
    try:
        json.loads(arguments)
    except ValueError:
        return False
    return True


@dataclass
class AiderSession(ClineSession):
    """One developer's aider session (diff edit format), in aider's order (coders/chat_chunks.py):
    instructions, the files added to the chat, the repository map, the history, the new request
    with the edit rules' reminder appended. Each answer edits the file, as aider applies it."""
    gated: ClassVar[bool] = False

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        half = self.shape.system_tokens // 2
        self.instructions = aider_instructions(half)
        self.map = repo_map(half)
        self.done: list[dict] = []
        self.file = f"src/module_{self.seed}.py"
        self.content = python_file(self.rng, self.shape.turn_tokens * 2, self.file)
        self.ask = f"The parser in {self.file} drops empty fields: fix it."
        self.compose()

    def compose(self) -> None:
        self.messages = [
            {"role": "system", "content": self.instructions},
            {"role": "user", "content": "I have *added these files to the chat* so you can go ahead and edit them."
                                        f"\n\n{self.file}\n```\n{self.content}\n```"},
            {"role": "assistant", "content": "Ok, any changes I propose will be to those files."},
            {"role": "user", "content": f"Here are summaries of some files present in my git repository.\n{self.map}"},
            {"role": "assistant", "content": "Ok, I won't try and edit those files without asking first."},
            *self.done,
            {"role": "user", "content": f"{self.ask}\n\n{AIDER_REMINDER}"}]

    def next_turn(self, answer: str, turn: int, calls: list[dict] | None = None) -> None:
        """The exchange joins the history (the request without its reminder); the edit lands in the
        file, somewhere in its second half; a new request follows."""
        self.done += [{"role": "user", "content": self.ask}, {"role": "assistant", "content": answer}]
        lines = self.content.split("\n")
        at = self.rng.randrange(len(lines) // 2, len(lines))
        edit = python_file(self.rng, self.shape.turn_tokens // 4, f"{self.file} edit {turn}").split("\n")[5:]
        self.content = "\n".join(lines[:at] + edit + lines[at:])
        self.ask = f"Now {self.rng.choice(('add a test for', 'document', 'simplify', 'type-annotate'))} " \
                   f"the function you changed, step {turn}."
        self.compose()


AIDER_REMINDER = ("# *SEARCH/REPLACE block* Rules:\nEvery *SEARCH/REPLACE block* must use this format: the file "
                  "path alone on a line, the opening fence, <<<<<<< SEARCH, the lines to find, =======, the lines to "
                  "put instead, >>>>>>> REPLACE, the closing fence. Only create *SEARCH/REPLACE blocks* for files "
                  "that the user has added to the chat!")


def aider_instructions(tokens: int) -> str:
    """aider's diff edit format: the role, the SEARCH/REPLACE rules, worked examples to fill `tokens`."""
    text = ("Act as an expert software developer.\nAlways use best practices when coding.\nRespect and use "
            "existing conventions, libraries, etc that are already present in the code base.\n\nEvery *SEARCH/"
            "REPLACE block* must use this format:\n1. The *FULL* file path alone on a line\n2. The opening fence "
            "and code language\n3. The start of search block: <<<<<<< SEARCH\n4. A contiguous chunk of lines to "
            "search for in the existing source code\n5. The dividing line: =======\n6. The lines to replace into "
            "the source code\n7. The end of the replace block: >>>>>>> REPLACE\n8. The closing fence\n")
    rng, i = random.Random(2), 0
    while len(text) < tokens * CHARS_PER_TOKEN:
        a, b = rng.sample(WORDS, 2)
        text += (f"\nExample {i}:\nsrc/{a}.py\n```python\n<<<<<<< SEARCH\ndef {a}({b}):\n    return {b}\n=======\n"
                 f"def {a}({b}=None):\n    return {b} or ''\n>>>>>>> REPLACE\n```\n")
        i += 1
    return text


def repo_map(tokens: int) -> str:
    """aider's repository map: files and the signatures in them, about `tokens` tokens; the same for
    a team working on one repository."""
    rng, lines, i = random.Random(3), [], 0
    while len("\n".join(lines)) < tokens * CHARS_PER_TOKEN:
        lines.append(f"\nsrc/{rng.choice(WORDS)}_{i}.py:")
        lines += [f"│def {a}_{b}({a}, {b}=None):" for a, b in (rng.sample(WORDS, 2) for _ in range(3))]
        i += 1
    return "\n".join(lines)


KINDS = {"cline": ClineSession, "continue": ContinueSession, "aider": AiderSession}


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
    engine_prompt_s: float = NAN  # the engine's own time on the prompt (timings.prompt_ms)
    engine_decode_s: float = NAN  # and on the answer (timings.predicted_ms)
    completion_id: str = ""  # the answer's `id`: every completion has its own

    def as_dict(self) -> dict:
        d = asdict(self)
        d["itl_s"] = percentiles(self.itl_s)
        return d


@dataclass
class LastRequest:
    """A developer's last request and the answer it streamed under load: the crosstalk check's input."""
    developer: int
    messages: list[dict]
    extra: dict  # tools, for a client that sends them
    answer: str


def run_session(ep: Endpoint, developer: int, seed: int, shape: Shape, t0: float, turns: list[Turn],
                errors: list[str], last: list[LastRequest], kind: str = "cline") -> None:
    session = KINDS[kind](seed=seed, shape=shape)
    pauses = think_times(seed, shape)
    previous = 0
    for k in range(shape.turns):
        if k:
            time.sleep(pauses[k - 1])
        started = time.monotonic()
        s = stream_chat(ep, session.messages, max_tokens=shape.answer_tokens, temperature=0, **session.request())
        failed = stream_failure(s)
        if failed:
            errors.append(f"developer {developer} turn {k}: {failed}")
            return
        final = s.chunks[-1]
        timings, usage = final.get("timings") or {}, final["usage"]
        times = s.delta_times("content", "tool_calls")  # a turn may answer with a call alone
        answer = s.content
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        turns.append(Turn(developer, k, round(started - t0, 2), (times[0] if times else s.events[-1][0]) - started,
                          s.events[-1][0] - started, prompt, timings.get("prompt_n", prompt),
                          timings.get("cache_n", 0), prompt - previous if k else 0, completion,
                          timings.get("predicted_per_second", NAN),
                          [b - a for a, b in zip(times, times[1:], strict=False)],
                          timings.get("prompt_ms", NAN) / 1000, timings.get("predicted_ms", NAN) / 1000,
                          final.get("id", "")))
        previous = prompt + completion
        if k == shape.turns - 1:
            last.append(LastRequest(developer, list(session.messages), session.request(), said(s)))
        session.next_turn(answer, k + 1, s.tool_calls)


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


def replay(ep: Endpoint, developers: int, shape: Shape, seed_base: int | None = None, kind: str = "cline") -> dict:
    """`developers` sessions at once, each its own; the figures of every turn and of the run.
    Sessions differ from one replay to the next (seeds by developer count unless `seed_base` says),
    so no turn finds its own history cached by an earlier replay; the system prompt may be, as it is
    in a team. A session whose turn fails stops there; the failures are in "errors"."""
    seed_base = 100 * developers if seed_base is None else seed_base
    turns: list[Turn] = []
    errors: list[str] = []
    last: list[LastRequest] = []
    t0 = time.monotonic()
    wall = run_at_once([partial(run_session, ep, d, seed_base + d, shape, t0, turns, errors, last, kind)
                        for d in range(developers)])
    ids = completion_ids(turns)
    return {"developers": developers, "kind": kind, "gated": KINDS[kind].gated, "shape": asdict(shape),
            "wall_s": round(wall, 1), "errors": sorted(errors),
            "turns": [t.as_dict() for t in sorted(turns, key=lambda t: (t.developer, t.turn))],
            **summary(turns, wall), "crosstalk": crosstalk(ep, last, shape, set(ids)),
            "answers_served_twice": served_twice(ids)}


def said(s) -> str:
    """What a streamed answer says: its text and its tool calls (the calls' ids are random per answer)."""
    return s.content + "".join(f"<call {c['function']['name']} {c['function']['arguments']}>" for c in s.tool_calls)


def completion_ids(turns: list[Turn]) -> list[str]:
    """The turns' answer ids, where they have one (another server behind a url target may send none)."""
    return [t.completion_id for t in turns if t.completion_id]


def served_twice(ids: list[str]) -> int:
    """How many answers carried the id of another: each completion has its own (a random one from
    llama-server), so a repeat is one response delivered twice, as by a cache in the path that keys
    requests by URI alone (nginx's default cache key leaves the body out)."""
    return len(ids) - len(set(ids))


def crosstalk(ep: Endpoint, last: list[LastRequest], shape: Shape, ids_under_load: set[str]) -> list[dict]:
    """Each developer's last request again, alone, at temperature 0: the answer it got under load
    must be this one, character for character (a stream given another's tokens differs at once),
    and a new completion (a cache would hand both requests the same stored answer, equal and wrong)."""
    rows = []
    for req in sorted(last, key=lambda r: r.developer):
        s = stream_chat(ep, req.messages, max_tokens=shape.answer_tokens, temperature=0, **req.extra)
        alone = said(s)
        same = next((i for i, (a, b) in enumerate(zip(req.answer, alone, strict=False)) if a != b),
                    min(len(req.answer), len(alone)))
        rows.append({"developer": req.developer, "status": s.status,
                     "identical": s.status == 200 and alone == req.answer, "common_prefix_chars": same,
                     "new_completion": not s.chunks or s.chunks[-1].get("id", "") not in ids_under_load,
                     "under_load": req.answer[:80], "alone": alone[:80]})
    return rows


def summary(turns: list[Turn], wall: float) -> dict:
    warm = [t for t in turns if t.turn]
    cold = [t for t in turns if not t.turn]
    timed = [t for t in turns if not math.isnan(t.engine_prompt_s + t.engine_decode_s)]
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
        # What separates the engine's pace from the rest of a request's path (proxy, TLS, queueing):
        # prompt tokens per second of the engine's own prompt time, and each turn's time outside
        # the engine's prompt and decode.
        "engine_prompt_tps": engine_prompt_tps(timed),
        "outside_engine_s": percentiles([t.e2e_s - t.engine_prompt_s - t.engine_decode_s for t in timed]),
        "goodput": goodput(turns, wall),
    }


def goodput(turns: list[Turn], wall: float) -> dict:
    """The turns that met every SLO target: how many, their share, and per second (AIPerf's goodput)."""
    good = sum(1 for t in turns
               if t.ttft_s <= SLO["warm_ttft_s" if t.turn else "cold_ttft_s"] and t.decode_tps >= 1 / SLO["tpot_s"])
    return {"slo": SLO, "good_turns": good, "share": round(good / len(turns), 3) if turns else None,
            "per_s": round(good / wall, 4) if wall else None}


def pooled_itl(requests: list[tuple[float, float, int]]) -> float | None:
    """(TTFT, E2EL, output tokens) per request -> seconds per generated token after the first."""
    gaps = sum(n - 1 for _, _, n in requests if n > 1)
    return round(sum(e2e - ttft for ttft, e2e, n in requests if n > 1) / gaps, 5) if gaps else None


def engine_prompt_tps(turns: list[Turn]) -> float | None:
    seconds = sum(t.engine_prompt_s for t in turns)
    return round(sum(t.computed for t in turns) / seconds, 1) if seconds else None


def versus(tuned: dict, anchor: dict) -> dict:
    """The tuned run's figures against the anchor's, each as a speed-up (above 1: the tuned one is
    better): times as anchor / tuned, ratios and rates as tuned / anchor."""
    def ratio(a, b):
        return round(a / b, 3) if a and b else None
    return {"cold_ttft": ratio(anchor["cold_ttft_s"].get("p50"), tuned["cold_ttft_s"].get("p50")),
            "warm_ttft": ratio(anchor["warm_ttft_s"].get("p50"), tuned["warm_ttft_s"].get("p50")),
            "e2el": ratio(anchor["e2el_s"].get("p50"), tuned["e2el_s"].get("p50")),
            "cache_hit": ratio(tuned["cache_hit_ratio"], anchor["cache_hit_ratio"]),
            "output_tps": ratio(tuned["output_tps"], anchor["output_tps"]),
            "engine_prompt_tps": ratio(tuned.get("engine_prompt_tps"), anchor.get("engine_prompt_tps"))}


def session_tokens(kind: str, shape: Shape) -> int:
    """About how many tokens a whole session of `kind` holds at its last answer: its requests generated
    with answers of full length, counted at CHARS_PER_TOKEN."""
    session = KINDS[kind](seed=0, shape=shape)
    answer = "x" * int(shape.answer_tokens * CHARS_PER_TOKEN)
    for turn in range(1, shape.turns):
        session.next_turn(answer, turn)
    chars = sum(len(m["content"]) + len(json.dumps(m.get("tool_calls", ""))) for m in session.messages)
    chars += len(json.dumps(session.tools or ""))
    return int(chars / CHARS_PER_TOKEN) + TEMPLATE_TOKENS * len(session.messages) + shape.answer_tokens


def fitted(shape: Shape, tokens: int) -> Shape:
    """`shape` as far as `tokens` (a slot's share of the served context) holds every client's session:
    the system prompt and the turns' additions scaled down alike, the turns and answers kept. A
    session that outgrows its share ends in "context size exceeded", which measures nothing."""
    room = tokens * FIT_MARGIN
    for _ in range(8):  # what does not scale (a client's fixed instructions, the answers) takes a few rounds
        need = max(session_tokens(kind, shape) for kind in KINDS)
        if need <= room:
            return shape
        scale = room / need
        shape = replace(shape, system_tokens=int(shape.system_tokens * scale),
                        turn_tokens=int(shape.turn_tokens * scale))
    raise ValueError(f"{tokens} tokens per slot cannot hold sessions of {shape.turns} answers of "
                     f"{shape.answer_tokens} tokens: give the appliance more context or fewer slots")
