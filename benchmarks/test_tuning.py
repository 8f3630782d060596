"""Engine settings tried against the appliance's own (`--workload tuning`), each as an in-run ratio
on the same engine, model and machine, interleaved: n-gram speculative decoding on a code-edit turn
(the answer repeats much of its input) and batch sizes on a cold prompt. What wins goes into the
appliance with these figures in the README; what does not is reported and left off.

Speculation must not change the answer: at temperature 0 the tuned engine's text must equal the
plain one's, or the setting is wrong however fast it is. These are explorations, not gates: each
row says whether the setting could be adopted and why not; nothing here fails the run."""

from __future__ import annotations

import os
import random

import pytest

from . import measure, sessions
from .conftest import direct, engine_with

SPECULATION = {  # the pinned engine's draft-model-free kinds (common/speculative.cpp)
    "ngram-simple": "--spec-type ngram-simple",
    "ngram-mod": "--spec-type ngram-mod",
}
BATCHES = {"ubatch-128": "-ub 128", "ubatch-256": "-ub 256", "ubatch-1024": "-b 2048 -ub 1024",
           "threads-batch-all": f"-tb {os.cpu_count()}"}  # every CPU for prompts, decode threads as set
EDIT_TOKENS = 256  # an answer long enough to repeat a good part of the file


def code_edit(tokens: int) -> list[dict]:
    """A rename across a module: the whole file back, most of it unchanged."""
    source = sessions.python_file(random.Random(7), tokens, "src/parser.py")
    return [{"role": "system", "content": "You are a careful coding assistant. Answer with the whole file only."},
            {"role": "user", "content": "Rename every parameter called `path` to `file_path` in this file and "
                                        f"output the whole file:\n```python\n{source}\n```"}]


def side_by_side(local_stack, flags: str, messages: list[dict], max_tokens: int, rounds: int) -> list:
    """The same engine with `flags` and as the appliance configures it, interleaved: (tuned, plain) per
    round; each answer ends where the model ends it (an edit's speed-up is in the file it repeats)."""
    with engine_with(local_stack, lambda a: f"{a} {flags}") as tuned, engine_with(local_stack, lambda a: a) as plain:
        return measure.interleaved(direct(tuned), direct(plain), rounds, max_tokens, messages, ignore_eos=False)


FRESH = [{"role": "user", "content": "Explain, in plain prose, three trade-offs between threads and processes "
                                     "for a Python web server."}]  # an answer that repeats nothing


@pytest.mark.parametrize("turn", ["code-edit", "fresh"])
@pytest.mark.parametrize("kind", SPECULATION)
def test_ngram_speculation(local_stack, results, rounds, kind, turn):
    """Faster where the answer repeats its input, and never slower where it does not."""
    messages = code_edit(EDIT_TOKENS * 2) if turn == "code-edit" else FRESH
    pairs = side_by_side(local_stack, SPECULATION[kind], messages, EDIT_TOKENS, rounds)
    decode, timings = measure.pair_ratio(pairs, "engine_decode_tps"), pairs[-1][0].timings
    row = {"flags": SPECULATION[kind], "decode_ratio": round(decode["ratio_median"], 3),
           "plain_decode_tps": decode["b_median"], "tuned_decode_tps": decode["a_median"],
           "draft_n": timings.get("draft_n"), "draft_accepted": timings.get("draft_n_accepted"),
           "identical": all(t.text == p.text for t, p in pairs),
           "rounds": rounds}
    row["verdict"] = ("changes the answer at temperature 0" if not row["identical"] else
                      "faster" if row["decode_ratio"] >= 1.05 else "no faster")
    results.setdefault("tuning", {})[f"{kind}, {turn}"] = row


@pytest.mark.parametrize("kind", BATCHES)
def test_batch_size_on_a_cold_prompt(local_stack, results, rounds, kind):
    session = sessions.ClineSession(seed=3, shape=sessions.SHAPES["ci"])
    pairs = side_by_side(local_stack, BATCHES[kind], session.messages, 1, rounds)
    prompt = measure.pair_ratio(pairs, "engine_prompt_tps")
    results.setdefault("tuning", {})[kind] = {
        "flags": BATCHES[kind], "prompt_ratio": round(prompt["ratio_median"], 3), "prompt_n": pairs[0][1].prompt_tokens,
        "plain_prompt_tps": prompt["b_median"], "tuned_prompt_tps": prompt["a_median"], "rounds": rounds}
    row = results["tuning"][kind]
    row["verdict"] = "faster" if row["prompt_ratio"] >= 1.05 else "no faster"
