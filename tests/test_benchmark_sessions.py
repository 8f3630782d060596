"""The session replay's verdicts (benchmarks/test_sessions.py, benchmarks/sessions.py): the crosstalk
check on answers that were swapped between two developers, the anchor's arguments cut from the
appliance's, and the appliance-over-defaults ratios' direction."""

from __future__ import annotations

import shlex

import httpx
import pytest

from benchmarks import cross_check, sessions
from benchmarks.test_sessions import engine_defaults, no_crosstalk
from conformance.endpoint import SSEStream

APPLIANCE_ARGS = ("--host 127.0.0.1 --port 8081 --model /opt/slm-copilot/models/model.gguf --alias smollm2 "
                  "--ctx-size 8192 --threads 2 --parallel 2 --temp 0.2 --kv-unified --cache-ram 512 --jinja "
                  "--chat-template-file /etc/slm-copilot/chat-template.jinja --metrics --no-slots --no-webui "
                  "--log-verbosity 3")


def crosstalk_rows(under_load: list[str], alone: list[str]) -> dict:
    return {"crosstalk": [{"developer": d, "identical": a == b, "common_prefix_chars": 0, "under_load": a,
                           "alone": b} for d, (a, b) in enumerate(zip(under_load, alone, strict=True))]}


def test_answers_equal_alone_pass():
    no_crosstalk(crosstalk_rows(["def f():", "import os"], ["def f():", "import os"]))


def test_answers_swapped_between_developers_fail():
    with pytest.raises(AssertionError, match="2 of 2 answers under load differ"):
        no_crosstalk(crosstalk_rows(["import os", "def f():"], ["def f():", "import os"]))


def test_the_anchor_keeps_only_model_name_address_and_threads():
    kept = shlex.split(engine_defaults(APPLIANCE_ARGS))
    assert kept == ["--host", "127.0.0.1", "--port", "8081", "--model", "/opt/slm-copilot/models/model.gguf",
                    "--alias", "smollm2", "--threads", "2"]


def test_versus_reads_above_one_as_the_appliance_better():
    tuned = {"cold_ttft_s": {"p50": 4.0}, "warm_ttft_s": {"p50": 1.0}, "e2el_s": {"p50": 2.0},
             "cache_hit_ratio": 0.9, "output_tps": 12.0}
    defaults = {"cold_ttft_s": {"p50": 8.0}, "warm_ttft_s": {"p50": 1.0}, "e2el_s": {"p50": 1.0},
                "cache_hit_ratio": 0.45, "output_tps": 12.0}
    assert sessions.versus(tuned, defaults) == {"cold_ttft": 2.0, "warm_ttft": 1.0, "e2el": 0.5, "cache_hit": 2.0,
                                                "output_tps": 1.0}


def test_versus_leaves_a_missing_figure_empty():
    run = {"cold_ttft_s": {}, "warm_ttft_s": {"p50": 1.0}, "e2el_s": {"p50": 1.0}, "cache_hit_ratio": None,
           "output_tps": 1.0}
    assert sessions.versus(run, run)["cold_ttft"] is None and sessions.versus(run, run)["cache_hit"] is None


def test_aiperf_gets_the_sessions_the_replay_sends():
    shape = sessions.SHAPES["ci"]
    records = cross_check.dataset(2, shape, seed_base=700)
    assert [r["session_id"] for r in records] == ["developer-0", "developer-1"]
    mine = sessions.Session(seed=701, shape=shape)
    turns = records[1]["turns"]
    assert turns[0] == {"role": "system", "text": mine.messages[0]["content"]}
    assert turns[1] == {"text": mine.messages[1]["content"], "output_length": shape.answer_tokens}
    mine.next_turn("an answer", 1)
    assert turns[2]["text"] == mine.messages[-1]["content"] and turns[2]["delay"] > 0
    assert len(turns) == 1 + shape.turns


def test_pooled_itl_weighs_requests_by_their_tokens():
    # 1 s over 10 gaps and 3 s over 10 gaps: 0.2 s per token, whatever the medians of either
    assert sessions.pooled_itl([(0.5, 1.5, 11), (1.0, 4.0, 11), (2.0, 2.0, 1)]) == 0.2
    assert sessions.pooled_itl([(0.5, 0.5, 1)]) is None


def sse(status: int, *data: str) -> SSEStream:
    return SSEStream(status, httpx.Headers(), 0.0, [(0.1 * i, d) for i, d in enumerate(data)])


CHUNK = '{"choices": [{"delta": {"content": "def"}}]}'
USAGE = '{"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1}}'


def test_a_complete_stream_is_no_failure():
    assert sessions.stream_failure(sse(200, CHUNK, USAGE, "[DONE]")) is None


@pytest.mark.parametrize(("stream", "said"), [
    (sse(500, '{"error": {"message": "boom"}}'), "HTTP 500"),
    (sse(200, CHUNK, '{"error": {"code": 400, "message": "context size has been exceeded"}}'), "an error event"),
    (sse(200, CHUNK, "[DONE]"), "without its usage chunk"),
])
def test_a_turn_that_failed_after_200_is_a_failure(stream, said):
    assert said in sessions.stream_failure(stream)
