"""Coding agents as their users run them: pinned releases, installed apart from the suite's
virtualenv (npm, into the cache), configured exactly as the README tells users to, each given one
coding task against the target. Judged on protocol, not on the answer: the model is tiny.

One entry per client in CLIENTS; a client's recipe is the README's, with its negative control
(the same run with a wrong key must end on an authentication error).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from artifacts.cache import cache_root
from vm_fixtures.layout import layout

from .endpoint import Endpoint

TASK = "Add a function add(a, b) that returns a + b to hello.py"
HELLO = 'def hello():\n    return "hi"\n'
TIMEOUT_S = 900  # a coding agent's first turn is a prompt of several thousand tokens


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    env: dict[str, str]
    files: dict[str, str]  # written under the client's home before it runs
    setup: tuple[list[str], ...] = ()  # the client's own configuration commands, run first


@dataclass(frozen=True)
class Client:
    name: str
    package: str  # pinned: an npm spec (name@version) or a PyPI requirement (name==version)
    user_agent: str  # how its requests look in the access log
    prompt_tokens: int  # its first turn's prompt, measured: what the time box is judged by
    invocation: Callable[[Endpoint, str, Path, Path], Invocation]  # (endpoint, key, bin dir, home)
    auth_error: str  # what it prints when the key is refused
    # What it prints, exiting non-zero, when the model's answer reached the client's own length
    # limit: the tiny model sometimes runs on, and that is an answer through the appliance.
    answer_cut: str = ""
    # The longest answer it lets the model write: its own limit, or the appliance's default answer
    # length for a client that sets none (the tiny model sometimes runs on to it: aider did, 19
    # minutes in a TCG guest before that default existed). What its time box is judged by.
    answer_tokens: int = field(default_factory=lambda: layout().default_max_tokens)


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
                       # it asks for answers of 32,000 tokens: a model that runs on fills the context,
                       # and every later turn is refused as too long (seen once in 276 s)
                       "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "1024",
                       # a refused key is final: no minutes of retries in the negative control
                       "CLAUDE_CODE_MAX_RETRIES": "0" if key != ep.api_key else "3"},
                      {})


def aider(ep: Endpoint, key: str, bin_dir: Path, home: Path) -> Invocation:
    """aider: an OpenAI-compatible model named openai/MODEL, base URL and key from the environment,
    the CA through SSL_CERT_FILE; one message, edits applied, no git."""
    return Invocation([str(bin_dir / "aider"), "--model", f"openai/{served_model(ep)}", "--message", TASK,
                       "--yes-always", "--no-git", "--no-check-update", "--no-show-model-warnings", "--no-analytics",
                       "hello.py"],
                      {"OPENAI_API_BASE": f"{ep.base_url}/v1", "OPENAI_API_KEY": key, "SSL_CERT_FILE": ca(ep)}, {})


def continue_cli(ep: Endpoint, key: str, bin_dir: Path, home: Path) -> Invocation:
    """Continue CLI (cn): a config.yaml with an openai-provider model at the appliance's /v1 (name,
    version and schema are required at the top), the CA through NODE_EXTRA_CA_CERTS; -p runs one
    task headless and exits non-zero on an error."""
    config = ("name: SLM-Copilot\nversion: 1.0.0\nschema: v1\nmodels:\n  - name: SLM-Copilot\n"
              f"    provider: openai\n    model: {served_model(ep)}\n    apiBase: {ep.base_url}/v1\n"
              f"    apiKey: {key}\n    roles: [chat, edit, apply]\n")
    return Invocation([str(bin_dir / "cn"), "-p", "--config", str(home / ".continue" / "config.yaml"), TASK],
                      {"NODE_EXTRA_CA_CERTS": ca(ep), "CONTINUE_TELEMETRY_ENABLED": "0"},
                      {".continue/config.yaml": config})


def cline(ep: Endpoint, key: str, bin_dir: Path, home: Path) -> Invocation:
    """Cline CLI: `cline auth` stores an OpenAI-compatible provider (base URL, key, model id), the CA
    through NODE_EXTRA_CA_CERTS; a task given as the argument runs headless in act mode with its
    tools auto-approved. The local session backend keeps it from leaving its hub daemon running
    after the task, and no update is looked for."""
    return Invocation([str(bin_dir / "cline"), TASK],
                      {"NODE_EXTRA_CA_CERTS": ca(ep), "CLINE_SESSION_BACKEND_MODE": "local",
                       "CLINE_NO_AUTO_UPDATE": "1"},
                      {},
                      ([str(bin_dir / "cline"), "auth", "-p", "openai", "-k", key, "-m", served_model(ep),
                        "-b", f"{ep.base_url}/v1"],))


def llm_cli(ep: Endpoint, key: str, bin_dir: Path, home: Path) -> Invocation:
    """Simon Willison's llm CLI: an extra OpenAI-compatible model in extra-openai-models.yaml, its key
    stored under the model's api_key_name (what `llm keys set slm-copilot` writes), the CA through
    SSL_CERT_FILE; the file given as a fragment, the answer streamed."""
    models = (f"- model_id: slm-copilot\n  model_name: {served_model(ep)}\n  api_base: {ep.base_url}/v1\n"
              "  api_key_name: slm-copilot\n  supports_tools: true\n")
    return Invocation([str(bin_dir / "llm"), "-m", "slm-copilot", "-f", "hello.py", TASK],
                      {"LLM_USER_PATH": str(home / "llm"), "SSL_CERT_FILE": ca(ep)},
                      {"llm/extra-openai-models.yaml": models, "llm/keys.json": json.dumps({"slm-copilot": key})})


CLIENTS = {c.name: c for c in (
    Client("codex", "@openai/codex@0.169.0", "codex_exec/", 6500, codex, "401 Unauthorized"),
    Client("claude-code", "@anthropic-ai/claude-code@2.1.330", "claude-cli/", 5000, claude_code, "401",
           answer_cut="response exceeded the 1024 output token maximum", answer_tokens=1024),
    # aider exits 0 even when the key is refused: its output and the access log tell.
    Client("aider", "aider-chat==0.86.2", "OpenAI/Python", 700, aider, "AuthenticationError"),
    # Its requests say "ls/JS 5.23.2" (the OpenAI JS SDK's agent, as this release sends it).
    Client("continue", "@continuedev/cli@1.5.47", "ls/JS", 1400, continue_cli, "401 Missing or invalid API key"),
    Client("llm", "llm==0.36", "OpenAI/Python", 100, llm_cli, "Error code: 401"),
    # Its first turn: a 5,400-token system prompt of tools and rules (measured in the access log).
    Client("cline", "cline@3.0.65", "ai-sdk/openai-compatible", 5400, cline, "Missing or invalid API key"),
)}


def served_model(ep: Endpoint) -> str:
    """The id clients are told to use: the one /v1/models lists."""
    if ep.model:
        return ep.model
    with ep.client() as client:
        return client.get("/v1/models").json()["data"][0]["id"]


def ca(ep: Endpoint) -> str:
    return str(ep.ca_file) if ep.ca_file else ""


def install(client: Client) -> Path:
    """The bin directory of a pinned client (see install_package)."""
    return install_package(client.name, client.package)


def install_package(name: str, package: str) -> Path:
    """The bin directory of a pinned tool, installed once per pin outside the clone: npm packages
    with npm, PyPI ones (`package` may list several requirements) into a virtualenv of their own
    (aider's or aiperf's dependencies are not the suite's)."""
    digest = hashlib.sha256(package.encode()).hexdigest()[:16]
    dest = cache_root() / "clients" / f"{name}-{digest}"
    npm = "==" not in package
    if not (dest / ".installed").exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        if npm:
            if shutil.which("npm") is None:
                raise RuntimeError(f"npm is not installed (./dev installs nodejs and npm): {name} cannot run")
            steps = [["npm", "install", "--prefix", str(dest), "--no-audit", "--no-fund", "--loglevel=error",
                      package]]
        else:
            steps = [[sys.executable, "-m", "venv", str(dest / "venv")],
                     [str(dest / "venv" / "bin" / "pip"), "install", "-q", *package.split()]]
        for step in steps:
            subprocess.run(step, check=True, capture_output=True, text=True, timeout=900)
        (dest / ".installed").touch()
    return dest / "node_modules" / ".bin" if npm else dest / "venv" / "bin"


@dataclass
class Outcome:
    returncode: int
    output: str  # stdout and stderr, the key masked
    seconds: float


def run(client: Client, ep: Endpoint, bin_dir: Path, work: Path, key: str, timeout_s: float = TIMEOUT_S) -> Outcome:
    """The client's coding task in a fresh project directory with a home of its own."""
    home, project = work / "home", work / "project"
    project.mkdir(parents=True)
    (project / "hello.py").write_text(HELLO)
    inv = client.invocation(ep, key, bin_dir, home)
    for rel, text in inv.files.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).touch(mode=0o600)  # a client's config may hold the key
        (home / rel).write_text(text)
    base = {k: os.environ[k] for k in ("PATH", "LANG", "TERM") if k in os.environ}
    env = {**base, "HOME": str(home), **inv.env}
    for step in inv.setup:
        done = subprocess.run(step, cwd=project, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:  # the command line may hold the key: only its masked output is told
            raise RuntimeError(f"{client.name}'s configuration step {step[1:2]} exited {done.returncode}: "
                               + (done.stdout + done.stderr).replace(key, "<key>")[-500:])
    started = time.monotonic()
    try:
        done = subprocess.run(inv.argv, cwd=project, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout_s)
        returncode, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as late:  # a fail with what the client printed, not a bare error
        printed = [p.decode(errors="replace") if isinstance(p, bytes) else p or "" for p in (late.stdout, late.stderr)]
        returncode, output = -1, "".join(printed) + f"\n(stopped: no end within {timeout_s:.0f} s)"
    return Outcome(returncode, output.replace(key, "<key>"), round(time.monotonic() - started, 1))
