"""Every coding agent a team uses, run for real against the target (conformance/clients.py).

A client passes when it got a model answer through the appliance: exit 0 (or the client's own
"answer too long" exit: the tiny model sometimes runs on to the client's limit), its requests in
the access log answered 200 under a key id, no TLS, auth or stream error. Its negative control is the
same run with a wrong key, which must end on an authentication error.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from . import clients
from .agent_apis import BAD_KEY
from .support import time_boxed
from .targets import Unsupported

CI_BOX_S = 240  # in the ci profile a client's first turn must fit this at the measured speed
FAILURE_WORDS = ("certificate", "SSL", "TLS", "Unauthorized", "AuthenticationError", "stream error",
                 "Connection error", "APIConnectionError")


@pytest.fixture(scope="session")
def client_bins() -> dict:
    return {}


@pytest.fixture
def client_bin(name, client_bins):
    """The client's pinned install (once per run); a failed install is a setup error, not a fail."""
    if name not in client_bins:
        try:
            client_bins[name] = clients.install(clients.CLIENTS[name])
        except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
            detail = getattr(err, "stderr", "") or err
            raise RuntimeError(f"installing {name} ({clients.CLIENTS[name].package}) failed: {detail}") from err
    return client_bins[name]


def log_lines(target) -> list[str] | None:
    try:
        return target.access_log().splitlines()
    except Unsupported:
        return None


def agent_answers(client: clients.Client, endpoint, target, client_bin, work, key: str,
                  timeout_s: float = clients.TIMEOUT_S) -> dict:
    """The check: the client ran its task to an answer through the appliance."""
    before = log_lines(target)
    out = clients.run(client, endpoint, client_bin, work, key, timeout_s)
    tail = "\n".join(out.output.strip().splitlines()[-4:])
    cut = bool(client.answer_cut) and client.answer_cut in out.output
    assert out.returncode == 0 or cut, f"{client.name} exited {out.returncode} after {out.seconds} s: {tail}"
    errors = [w for w in FAILURE_WORDS if w in out.output]
    assert not errors, f"{client.name} printed {errors}: {tail}"
    figures = {"seconds": out.seconds, **({"answer_cut_at_client_limit": True} if cut else {})}
    if before is not None:
        mine = [line for line in log_lines(target)[len(before):] if client.user_agent in line]
        assert mine, f"no request of {client.name} ({client.user_agent}) in the access log"
        answered = [line for line in mine if '" 200 ' in line and re.search(r" key=[^\s-]", line)]
        assert answered, f"{client.name}'s requests were not answered 200 under a key: {mine[-3:]}"
        figures["requests"] = len(mine)
    return figures


@pytest.mark.parametrize("name", sorted(clients.CLIENTS))
def test_coding_agent_completes_a_task(name, settings, target, endpoint, client_bin, tmp_path, record):
    client = clients.CLIENTS[name]
    need_s = endpoint.speed.seconds(client.prompt_tokens, client.answer_tokens)
    time_boxed(settings, need_s, CI_BOX_S, f"{client.name}'s first turn ({client.prompt_tokens} prompt tokens)")
    # The release profile runs a client the ci profile boxes out, so its time limit grows with the
    # target's measured speed (a TCG guest); twice the estimate leaves room for a second request.
    record(agent_answers(client, endpoint, target, client_bin, tmp_path, endpoint.api_key,
                         max(clients.TIMEOUT_S, 2 * need_s)))


@pytest.mark.parametrize("name", sorted(clients.CLIENTS))
def test_coding_agent_with_a_wrong_key_fails_on_auth(name, target, endpoint, client_bin, tmp_path, record):
    """The negative control of the check above: it must fail, and the client must say why."""
    client = clients.CLIENTS[name]
    with pytest.raises(AssertionError) as caught:
        agent_answers(client, endpoint, target, client_bin, tmp_path, BAD_KEY)
    assert client.auth_error in str(caught.value), f"{name} failed, but not on authentication: {caught.value}"
    record({"caught": str(caught.value).splitlines()[0][:120]})
