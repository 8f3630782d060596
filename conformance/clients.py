"""Coding agents as their users run them: pinned releases, installed apart from the suite's
virtualenv (npm, into the cache), configured exactly as the README tells users to, each given one
coding task against the target. Judged on protocol, not on the answer: the model is tiny.

One entry per client in CLIENTS; a client's recipe is the README's, with its negative control
(the same run with a wrong key must end on an authentication error).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from artifacts.cache import cache_root

from .endpoint import Endpoint

TASK = "Add a function add(a, b) that returns a + b to hello.py"
HELLO = 'def hello():\n    return "hi"\n'
TIMEOUT_S = 900  # a coding agent's first turn is a prompt of several thousand tokens


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    env: dict[str, str]
    files: dict[str, str]  # written under the client's home before it runs


@dataclass(frozen=True)
class Client:
    name: str
    package: str  # npm spec, pinned
    user_agent: str  # how its requests look in the access log
    prompt_tokens: int  # its first turn's prompt, measured: what the time box is judged by
    invocation: Callable[[Endpoint, str, Path, Path], Invocation]  # (endpoint, key, bin dir, home)
    auth_error: str  # what it prints when the key is refused


def codex(ep: Endpoint, key: str, bin_dir: Path, home: Path) -> Invocation:
    """OpenAI Codex CLI: a model provider speaking the Responses API, the key from an environment
    variable, the appliance CA through SSL_CERT_FILE."""
    config = (f'model = "{served_model(ep)}"\nmodel_provider = "slm-copilot"\n\n[model_providers.slm-copilot]\n'
              f'name = "SLM-Copilot"\nbase_url = "{ep.base_url}/v1"\nenv_key = "SLM_COPILOT_API_KEY"\n'
              'wire_api = "responses"\n')
    return Invocation([str(bin_dir / "codex"), "exec", "--skip-git-repo-check", TASK],
                      {"CODEX_HOME": str(home / ".codex"), "SLM_COPILOT_API_KEY": key, "SSL_CERT_FILE": ca(ep)},
                      {".codex/config.toml": config})


def claude_code(ep: Endpoint, key: str, bin_dir: Path, home: Path) -> Invocation:
    """Claude Code: the Messages API at the appliance's root URL, the key as a Bearer token
    (ANTHROPIC_AUTH_TOKEN), the CA through NODE_EXTRA_CA_CERTS. --bare and two tools keep its
    prompt inside the test model's 8,192 tokens (its full prompt is about 12,000)."""
    return Invocation([str(bin_dir / "claude"), "-p", "--bare", "--tools", "Read,Edit", "--", TASK],
                      {"ANTHROPIC_BASE_URL": ep.base_url, "ANTHROPIC_AUTH_TOKEN": key,
                       "ANTHROPIC_MODEL": served_model(ep), "NODE_EXTRA_CA_CERTS": ca(ep),
                       # a refused key is final: no minutes of retries in the negative control
                       "CLAUDE_CODE_MAX_RETRIES": "0" if key != ep.api_key else "3"},
                      {})


CLIENTS = {c.name: c for c in (
    Client("codex", "@openai/codex@0.169.0", "codex_exec/", 6500, codex, "401 Unauthorized"),
    Client("claude-code", "@anthropic-ai/claude-code@2.1.330", "claude-cli/", 5000, claude_code, "401"),
)}


def served_model(ep: Endpoint) -> str:
    """The id clients are told to use: the one /v1/models lists."""
    if ep.model:
        return ep.model
    with ep.client() as client:
        return client.get("/v1/models").json()["data"][0]["id"]


def ca(ep: Endpoint) -> str:
    return str(ep.ca_file) if ep.ca_file else ""


def install() -> Path:
    """The pinned clients' bin directory, installed once per set of pins (npm, outside the clone)."""
    specs = sorted(c.package for c in CLIENTS.values())
    dest = cache_root() / "clients" / hashlib.sha256("\n".join(specs).encode()).hexdigest()[:16]
    if not (dest / ".installed").exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not installed (./dev installs nodejs and npm): the coding agents cannot run")
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--prefix", str(dest), "--no-audit", "--no-fund", "--loglevel=error",
                        *specs], check=True, capture_output=True, text=True, timeout=900)
        (dest / ".installed").touch()
    return dest / "node_modules" / ".bin"


@dataclass
class Outcome:
    returncode: int
    output: str  # stdout and stderr, the key masked
    seconds: float


def run(client: Client, ep: Endpoint, bin_dir: Path, work: Path, key: str) -> Outcome:
    """The client's coding task in a fresh project directory with a home of its own."""
    import time

    home, project = work / "home", work / "project"
    project.mkdir(parents=True)
    (project / "hello.py").write_text(HELLO)
    inv = client.invocation(ep, key, bin_dir, home)
    for rel, text in inv.files.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text(text)
    base = {k: os.environ[k] for k in ("PATH", "LANG", "TERM") if k in os.environ}
    started = time.monotonic()
    done = subprocess.run(inv.argv, cwd=project, env={**base, "HOME": str(home), **inv.env}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    output = (done.stdout + done.stderr).replace(key, "<key>")
    return Outcome(done.returncode, output, round(time.monotonic() - started, 1))
