"""appliance/: the bring-your-own-model parameters and the GGUF header reader.

Validation runs before anything is fetched: a hostile or malformed value is refused by name, never
reaches curl or a shell, and leaves the last good configuration. Fetching itself (real nginx, real
downloads, interruptions) is the conformance suite's (conformance/test_model_source.py).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artifacts.cache import sha256_file
from conformance.model_source import with_a_layer_too_many
from conformance.stack import LocalStack
from conformance.support import REPO

READER = REPO / "appliance" / "lib" / "gguf_facts.py"
SHA = "ab" * 32
URL = "https://huggingface.co/org/repo/resolve/main/Model-Q4_K_M.gguf"


@pytest.fixture
def stack(artifacts, tmp_path):
    return LocalStack(artifacts, root=tmp_path / "root")


def refused(stack: LocalStack, context: dict[str, str]) -> str:
    stack.context = context
    result = stack.configure(check=False)
    assert result.returncode != 0, f"accepted {context}:\n{result.stdout}"
    assert (stack.root / "etc/one-appliance/status").read_text().strip() == "configure_failure"
    return result.stdout


@pytest.mark.parametrize("url", [
    "ftp://example.com/model.gguf", "file:///etc/shadow", "https://user:pw@example.com/m.gguf",
    "https://example.com/m.gguf; touch /tmp/pwned", "https://example.com/$(touch /tmp/pwned).gguf",
    "https://example.com/`id`.gguf", "https://example.com/a b.gguf", "https://example.com/m.gguf\n--output=/etc/x",
    "https://example.com/m.gguf' -o '/etc/passwd", "example.com/model.gguf", "https://exa mple.com/m.gguf",
])
def test_hostile_or_malformed_url_refused_by_name(stack, url, tmp_path):
    out = refused(stack, {"ONEAPP_SLM_MODEL_URL": url, "ONEAPP_SLM_MODEL_SHA256": SHA})
    assert "ONEAPP_SLM_MODEL_URL=" in out and "is invalid: expected an http:// or https:// URL" in out, out
    assert not Path("/tmp/pwned").exists()
    assert not stack.path("/var/lib/slm-copilot-models").exists(), "something was fetched for a refused URL"


@pytest.mark.parametrize("sha", ["", "xyz", "ab" * 31, "ab" * 33, "g" * 64, SHA + "\n" + SHA, f"{SHA}; id"])
def test_url_without_a_valid_sha256_refused(stack, sha):
    out = refused(stack, {"ONEAPP_SLM_MODEL_URL": URL, "ONEAPP_SLM_MODEL_SHA256": sha})
    assert "ONEAPP_SLM_MODEL_SHA256=" in out and "64 hex digits" in out, out


def test_sha256_without_url_refused(stack):
    out = refused(stack, {"ONEAPP_SLM_MODEL_SHA256": SHA})
    assert "ONEAPP_SLM_MODEL_SHA256=" in out and "without ONEAPP_SLM_MODEL_URL" in out, out


@pytest.mark.parametrize("model_id", ["-leading-dash", "has space", "quote'd", "a" * 129, "semi;colon", "$(id)"])
def test_bad_model_id_refused(stack, model_id):
    out = refused(stack, {"ONEAPP_SLM_MODEL_ID": model_id})
    assert "ONEAPP_SLM_MODEL_ID=" in out, out


@pytest.mark.parametrize("template", ["not base64 !!", base64.b64encode(b"no jinja here").decode(), ""
                                      + base64.b64encode(b"{{ x }}" * 10000).decode()])
def test_bad_chat_template_refused(stack, template):
    out = refused(stack, {"ONEAPP_SLM_MODEL_CHAT_TEMPLATE": template})
    assert "ONEAPP_SLM_MODEL_CHAT_TEMPLATE=" in out, out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from("$`;|&<>()'\" \\\n*?{}!#"), min_size=1, max_size=4),
       st.sampled_from(["host", "path", "query"]))
def test_shell_metacharacters_anywhere_in_the_url_are_refused(stack, evil, where):
    parts = {"host": f"https://ex{evil}ample.com/m.gguf", "path": f"https://example.com/m{evil}.gguf",
             "query": f"https://example.com/m.gguf?x={evil}"}
    out = refused(stack, {"ONEAPP_SLM_MODEL_URL": parts[where], "ONEAPP_SLM_MODEL_SHA256": SHA})
    assert "ONEAPP_SLM_MODEL_URL=" in out


def test_url_query_never_printed(stack):
    """A signed URL carries its credential in the query: messages show the URL without it."""
    signature = "X-Amz-Signature=deadbeefcafe0123456789"
    out = refused(stack, {"ONEAPP_SLM_MODEL_URL": f"http://127.0.0.1:9/m.gguf?{signature}",
                          "ONEAPP_SLM_MODEL_SHA256": SHA})
    assert "unreachable" in out and "(query hidden)" in out, out
    logs = "".join(p.read_text() for p in stack.root.rglob("*") if p.is_file() and p.suffix in (".log", ".rejected"))
    assert signature not in out and signature not in logs


def test_only_other_values_wrong_fetches_nothing(stack):
    """A context refused for another variable never starts a download."""
    out = refused(stack, {"ONEAPP_SLM_MODEL_URL": "http://127.0.0.1:9/m.gguf", "ONEAPP_SLM_MODEL_SHA256": SHA,
                          "ONEAPP_SLM_THREADS": "lots"})
    assert "ONEAPP_SLM_THREADS" in out and "unreachable" not in out, out


# -- the header reader --------------------------------------------------------------------------

def read(path: Path) -> tuple[int, dict[str, str], str]:
    run = subprocess.run([sys.executable, READER, path], capture_output=True, text=True, timeout=60)
    return run.returncode, dict(line.split("=", 1) for line in run.stdout.splitlines()), run.stderr


def test_reader_agrees_with_the_gguf_package(artifacts):
    """The appliance's reader (standard library) against the gguf package, field by field."""
    from gguf import GGUFReader

    code, found, err = read(artifacts / "model.gguf")
    assert code == 0, err
    fields = GGUFReader(artifacts / "model.gguf").fields

    def value(key):
        field = fields[key]
        part = field.parts[field.data[0]]
        return bytes(part).decode() if field.types[0].name == "STRING" else int(part[0])

    arch = value("general.architecture")
    head_dim = value(f"{arch}.embedding_length") // value(f"{arch}.attention.head_count")
    assert found["MODEL_ARCH"] == arch
    assert int(found["MODEL_CTX_TRAIN"]) == value(f"{arch}.context_length")
    assert int(found["MODEL_KV_BYTES_PER_TOKEN"]) == \
        2 * 2 * value(f"{arch}.block_count") * value(f"{arch}.attention.head_count_kv") * head_dim
    assert found["MODEL_HAS_CHAT_TEMPLATE"] == "1"
    assert int(found["MODEL_BYTES"]) == (artifacts / "model.gguf").stat().st_size


def header_only(path: Path, arch: str = "llama", template: str | None = "{{ messages }}", **numbers) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch)
    values = {"context_length": 4096, "block_count": 2, "embedding_length": 64, "head_count": 4, **numbers}
    writer.add_context_length(values["context_length"])
    writer.add_block_count(values["block_count"])
    writer.add_embedding_length(values["embedding_length"])
    writer.add_head_count(values["head_count"])
    if template is not None:
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def test_reader_facts_of_a_written_header(tmp_path):
    code, found, err = read(header_only(tmp_path / "m.gguf"))
    assert code == 0, err
    assert found["MODEL_ARCH"] == "llama" and found["MODEL_CTX_TRAIN"] == "4096"
    assert found["MODEL_KV_BYTES_PER_TOKEN"] == str(2 * 2 * 4 * (64 // 4) * 2)  # f16, K+V, 2 layers, 4 heads
    code, found, _ = read(header_only(tmp_path / "n.gguf", template=None))
    assert code == 0 and found["MODEL_HAS_CHAT_TEMPLATE"] == "0"


@pytest.mark.parametrize("damage", ["not_gguf", "truncated", "empty"])
def test_reader_refuses_what_is_not_a_model(tmp_path, damage):
    path = header_only(tmp_path / "m.gguf")
    data = path.read_bytes()
    path.write_bytes({"not_gguf": b"<html>404</html>" + data, "truncated": data[:40], "empty": b""}[damage])
    code, _, err = read(path)
    assert code == 1 and err.strip(), (code, err)


def test_built_in_model_reported_and_renamed(stack, artifacts):
    """Without a URL the built-in model serves, under ONEAPP_SLM_MODEL_ID when given, and engine.env
    says which file and hash it is (the report repeats it)."""
    pinned = dict(line.split("=", 1) for line in (artifacts / "model.env").read_text().splitlines())
    stack.configure()
    env = stack.path("/etc/slm-copilot/engine.env").read_text()
    assert f"SLM_MODEL_SHA256={pinned['MODEL_SHA256']}\n" in env and "SLM_MODEL_SOURCE=built-in\n" in env
    assert f"--alias {pinned['MODEL_ID']} " in env and "/opt/slm-copilot/models/model.gguf " in env
    stack.context = {"ONEAPP_SLM_MODEL_ID": "team-coder"}
    stack.configure()
    env = stack.path("/etc/slm-copilot/engine.env").read_text()
    assert "--alias team-coder " in env and "SLM_MODEL_ID=team-coder\n" in env


# -- the engine's trial load: what the header cannot tell -----------------------------------------

def stored(stack: LocalStack, model: Path) -> str:
    """`model` placed in the store as a verified download of it (configure serves it from there)."""
    sha = sha256_file(model)
    store = stack.path("/var/lib/slm-copilot-models")
    store.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, store / f"sha256-{sha}.gguf")
    return sha


def test_model_the_engine_cannot_load_refused_and_the_last_good_kept(stack, artifacts, tmp_path):
    """A GGUF whose header reads well (a layer more than it holds) is refused with the engine's own
    reason, and the configuration that served stays, byte for byte."""
    stack.configure()
    before = stack.path("/etc/slm-copilot/engine.env").read_text()
    with_a_layer_too_many(artifacts / "model.gguf", tmp_path / "broken.gguf")
    sha = stored(stack, tmp_path / "broken.gguf")
    out = refused(stack, {"ONEAPP_SLM_MODEL_URL": URL, "ONEAPP_SLM_MODEL_SHA256": sha})
    assert "ONEAPP_SLM_MODEL_URL=" in out and "the engine cannot load this model" in out, out
    assert "tensor 'blk." in out, out  # the engine's reason, not a guess
    assert stack.path("/etc/slm-copilot/engine.env").read_text() == before


def test_chat_template_the_engine_cannot_parse_refused(stack):
    template = base64.b64encode(b"{% for message in messages %}{{ message.content }}").decode()
    out = refused(stack, {"ONEAPP_SLM_MODEL_CHAT_TEMPLATE": template})
    assert "ONEAPP_SLM_MODEL_CHAT_TEMPLATE=" in out and "the engine cannot use this template" in out, out
    assert "without an error line" not in out and "failed to open" not in out, out  # the engine's reason


def test_trial_only_when_the_model_or_template_changes(stack, artifacts):
    """A reconfiguration that keeps model and template does not load the model a second time."""
    template = (REPO / "artifacts" / "chat_templates" / "chatml-tools.jinja").read_bytes()
    stack.context = {"ONEAPP_SLM_MODEL_CHAT_TEMPLATE": base64.b64encode(template).decode()}
    first = stack.configure().stdout
    stack.context["ONEAPP_SLM_RATE_LIMIT"] = "20"
    second = stack.configure().stdout
    assert "a trial of" in first and "a trial of" not in second, (first, second)
