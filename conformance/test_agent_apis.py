"""The APIs coding agents speak besides chat completions (Responses, Messages) and tool calls,
through the same TLS, auth and SSE handling, against whichever target the run points at. One
claim per check function (its docstring says which); the report's row is the function's name."""

import pytest

from . import agent_apis as a
from .support import time_boxed

# A tool request: the tool-declaring prompt (about 200 tokens) and up to 80 tokens of call.
TOOL_REQUEST = (200, a.TOOL_TOKENS)
CI_BOX_S = 60  # per request, in the ci profile

API_CHECKS = [a.responses_stream, a.responses_plain, a.messages_stream, a.messages_plain, a.count_tokens,
              a.anthropic_auth, a.openai_sdk, a.anthropic_sdk]
TOOL_CHECKS = [a.tool_calls_chat, a.tool_calls_responses, a.tool_calls_messages, a.tool_results_accepted,
               a.models_list_capabilities]


@pytest.mark.parametrize("check", API_CHECKS, ids=lambda f: f.__name__)
def test_agent_api(check, endpoint, record):
    record(check(endpoint))


@pytest.mark.parametrize("check", TOOL_CHECKS, ids=lambda f: f.__name__)
def test_tool_calls(check, settings, endpoint, record):
    time_boxed(settings, endpoint.speed.seconds(*TOOL_REQUEST), CI_BOX_S, "a tool-call request")
    record(check(endpoint))
