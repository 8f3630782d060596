"""Numerical equivalence: the engine computes the same function on every CPU model and variant.

Greedy text cannot be the check: the CPU variants (x64, sse42, haswell, skylakex) round floats
differently, and a tiny quantized model's answers part ways after a few dozen characters. What must
hold is the next-token distribution: for fixed short prompts, the top-k log-probabilities of each
generated position, compared with a reference computed natively on this host by the same engine
build restricted to one variant. A broken SIMD kernel, a corrupted or different model, or a wrong
chat template moves them far beyond rounding.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from vm_fixtures.util import free_port, wait_healthy

from .support import prune_cpu_variants

VARIANTS = ("x64", "sse42", "haswell", "skylakex")  # what the engine build ships, baseline first
# What each variant needs of the CPU (ggml's own score functions ask for these, /proc/cpuinfo names).
VARIANT_FLAGS = {"x64": set(), "sse42": {"sse4_2", "ssse3"}, "haswell": {"avx2", "fma", "f16c", "bmi2"},
                 "skylakex": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}}
# Short enough for a TCG guest emulating AVX2 (about 3 s a prompt token): a system message of our
# own keeps the chat template from adding its default one.
PROMPTS = (
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def add(a, b):"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
)
POSITIONS, TOP_K = 3, 8
# Thresholds, from measurements (README, "Numerical equivalence"): natively, one variant gives the
# same log-probabilities to the last digit run after run and at any thread count (0.0); variants
# differ from each other by up to 0.44 nats (x64/sse42/haswell/skylakex, 6 pairs, 48 tokens); the
# model with one norm scaled by 2% moves them by 0.19, by 5% by 0.47.
SAME_VARIANT_MAX_DIFF = 0.05  # nats: the same kernels natively and in a guest (TCG's floats are exact)
CROSS_VARIANT_MAX_DIFF = 0.75  # nats: other SIMD widths round otherwise
# Across variants the likeliest token must agree wherever the reference's choice is clear (its lead
# over the runner-up beyond rounding); within a variant, everywhere.

@dataclass(frozen=True)
class Position:
    token: str  # the one generated (greedy)
    top: dict[str, float]  # token -> log-probability, the TOP_K likeliest


Profile = list[list[Position]]  # per prompt, per generated position


def profile(base_url: str, headers: dict | None = None, verify=True) -> Profile:
    """The greedy continuation of every prompt with its top-k log-probabilities, prompt cache off."""
    out = []
    with httpx.Client(base_url=base_url, headers=headers or {}, verify=verify, timeout=900) as client:
        for messages in PROMPTS:
            r = client.post("/v1/chat/completions", json={
                "messages": messages, "max_tokens": POSITIONS, "temperature": 0, "logprobs": True,
                "top_logprobs": TOP_K, "cache_prompt": False, "ignore_eos": True, "seed": 42})
            assert r.status_code == 200, f"logprobs request: HTTP {r.status_code}: {r.text[:200]}"
            content = r.json()["choices"][0]["logprobs"]["content"]
            out.append([Position(c["token"], {t["token"]: t["logprob"] for t in c["top_logprobs"]}) for c in content])
    return out


def compare(served: Profile, reference: Profile, clear_lead: float = 0.0) -> dict:
    """Top-1 agreement (over positions whose reference top-1 leads by more than `clear_lead`) and
    the largest log-probability difference, over the positions where both generated the same text
    so far (after the first different token the contexts differ)."""
    agree = judged = total = 0
    max_diff = 0.0
    for got, want in zip(served, reference, strict=True):
        for g, w in zip(got, want, strict=False):
            total += 1
            first, second = sorted(w.top.values(), reverse=True)[:2]
            if first - second > clear_lead:
                judged += 1
                agree += max(g.top, key=g.top.get) == max(w.top, key=w.top.get)
            max_diff = max([max_diff, *_differences(g.top, w.top), *_differences(w.top, g.top)])
            if g.token != w.token:
                break
    return {"positions": total, "top1_agreement": round(agree / judged, 3) if judged else 1.0,
            "max_logprob_diff": round(max_diff, 4)}


def _differences(a: dict[str, float], b: dict[str, float]) -> list[float]:
    """|a - b| per token of a; a token missing from b's top-k is at most b's k-th value there."""
    floor = min(b.values())
    return [abs(a[t] - b[t]) if t in b else a[t] - floor for t in a if t in b or a[t] > floor]


def assert_equivalent(served: Profile, references: dict[str, Profile], variant: str) -> dict:
    """Within the same-variant limits of the native reference for `variant`, and within the
    cross-variant ones of every other variant's."""
    figures = {}
    for name, reference in references.items():
        same = name == variant
        limit = SAME_VARIANT_MAX_DIFF if same else CROSS_VARIANT_MAX_DIFF
        result = figures[name] = compare(served, reference, clear_lead=0.0 if same else CROSS_VARIANT_MAX_DIFF)
        assert result["top1_agreement"] == 1.0 and result["max_logprob_diff"] <= limit, \
            f"served by {variant}, against the native {name} reference: {result} (limit {limit} nats)"
    return figures


def host_variants(cpuinfo: str | None = None) -> list[str]:
    """The variants this host's CPU can run natively (a reference needs the real instructions)."""
    text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return [v for v in VARIANTS if VARIANT_FLAGS[v] <= flags]


class ReferenceEngine:
    """llama-server natively with one CPU variant only (its own folder holds just that variant's
    library, so the runtime dispatch has nothing else to pick), on loopback, no proxy."""

    def __init__(self, engine_dir: Path, model: Path, variant: str):
        self.engine_dir, self.model, self.variant = engine_dir, model, variant
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"slm-ref-{variant}-"))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> ReferenceEngine:
        # A copy, not links to the build: $ORIGIN (where the server finds its variants) is its own folder.
        engine = prune_cpu_variants(Path(shutil.copytree(self.engine_dir, self.workdir / "engine")), [self.variant])
        self.log = open(self.workdir / "engine.log", "wb")  # noqa: SIM115 (owned by the process)
        self.proc = subprocess.Popen(
            [engine / "llama-server", "-m", self.model, "--host", "127.0.0.1", "--port", str(self.port),
             "-t", "1", "-c", "1024", "-np", "1", "--jinja", "-lv", "3"], stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_healthy(self.proc, f"{self.base_url}/health", timeout, f"reference engine ({self.variant})",
                     lambda: (self.workdir / "engine.log").read_text(errors="replace"))
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ReferenceEngine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def native_references(engine_dir: Path, model: Path, variants: list[str] | None = None) -> dict[str, Profile]:
    out = {}
    for variant in variants or host_variants():
        with ReferenceEngine(engine_dir, model, variant) as ref:
            out[variant] = profile(ref.base_url)
    return out


def perturbed_model(model: Path, dest: Path, scale: float = 1.05) -> Path:
    """A copy of `model` with one tensor scaled slightly (the output norm's weights, +5%): the
    same file format, metadata and template, a slightly different function."""
    from gguf import GGUFReader

    shutil.copy(model, dest)
    reader = GGUFReader(dest, "r+")
    tensor = next(t for t in reader.tensors if t.name == "output_norm.weight")
    tensor.data[:] = tensor.data * scale
    reader.data.flush()
    return dest
