"""`nox -s benchmark -- [--bench-target local|vm|url] [--save-baseline] [--rounds N]`

Results accumulate in one dict over the session; at the end: machine context, JSON + Markdown +
plots in reports/benchmark/, and the regression gate against benchmarks/baseline.json."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from artifacts.cache import heavy_job
from conformance.endpoint import Endpoint
from conformance.settings import Settings
from conformance.stack import LocalStack

from . import gate, machine, report

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "reports" / "benchmark"


def pytest_addoption(parser):
    group = parser.getgroup("slm-copilot benchmarks")
    group.addoption("--bench-target", default="local", help="local | vm | url (url: SLM_CONFORMANCE_* settings)")
    group.addoption("--save-baseline", action="store_true", help="write this run as benchmarks/baseline.json")
    group.addoption("--rounds", type=int, default=5, help="interleaved A/B rounds and single-stream rounds")


RESULTS = pytest.StashKey[dict]()
ITL = pytest.StashKey[list]()


def pytest_configure(config):
    config.stash[RESULTS] = {"target": config.getoption("--bench-target")}
    config.stash[ITL] = []


@pytest.fixture(scope="session")
def results(request) -> dict:
    return request.config.stash[RESULTS]


@pytest.fixture(scope="session")
def itl_samples(request) -> list:
    return request.config.stash[ITL]


@pytest.fixture(scope="session")
def rounds(request) -> int:
    return request.config.getoption("--rounds")


@pytest.fixture(scope="session")
def target(request) -> str:
    return request.config.getoption("--bench-target")


@pytest.fixture(scope="session")
def heavy():
    with heavy_job("benchmarks"):
        yield


def engine_subset(artifacts: Path, keep: list[str], into: Path) -> Path:
    """A copy of the staged artifacts whose engine ships only the `keep` CPU variants."""
    shutil.copytree(artifacts, into, copy_function=os.link)
    for lib in (into / "engine").glob("libggml-cpu-*.so"):
        if lib.name.removeprefix("libggml-cpu-").removesuffix(".so") not in keep:
            lib.unlink()
    return into


@pytest.fixture(scope="session")
def local_stack(heavy, target, results):
    if target != "local":
        pytest.skip(f"not applicable: needs the local target (this run: {target})")
    artifacts = REPO / "build" / "artifacts"
    stack = LocalStack(artifacts).start()
    results["engine_variant"] = machine.loaded_variant(stack.engine.pid)
    results["model_bytes"] = (artifacts / "model.gguf").stat().st_size
    yield stack
    stack.stop()


def direct(stack: LocalStack) -> Endpoint:
    return Endpoint(f"http://127.0.0.1:{stack.ports['engine']}", stack.api_key, None)


def proxied(stack: LocalStack) -> Endpoint:
    return Endpoint.of_stack(stack)


@pytest.fixture(scope="session")
def endpoint(target, request) -> Endpoint:
    if target == "local":
        return proxied(request.getfixturevalue("local_stack"))
    if target == "url":
        return Endpoint.of_settings(Settings.load(target="url"))
    pytest.skip("not applicable: the vm target measures per CPU model only (test_cpu_models)")


@pytest.fixture(scope="session")
def baseline_stack(local_stack):
    """The same appliance with only the baseline x64 variant: what a qemu64-class CPU runs."""
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(engine_subset(local_stack.artifacts, ["x64"], Path(tmp) / "artifacts"))
        stack.configure()
        stack.start_engine()
        yield stack
        stack.stop()


def pytest_sessionfinish(session):
    config = session.config
    results = config.stash[RESULTS]
    if len(results) <= 1:
        return
    info = machine.cpu_info()
    info["bandwidth_gbs"] = machine.memory_bandwidth_gbs()
    results["machine"] = info
    decode = ((results.get("single") or {}).get("engine_decode_tps") or {}).get("p50")
    if decode and results.get("model_bytes"):
        results["roofline"] = machine.roofline(decode, results["model_bytes"], info["bandwidth_gbs"])
    rows = []
    if config.getoption("--save-baseline"):
        gate.BASELINE.write_text(json.dumps(results, indent=2, default=str) + "\n")
    elif (baseline := gate.load_baseline()) and results["target"] == baseline.get("target"):
        ok, rows = gate.compare(baseline, results)
        print("\n" + gate.table(rows))
        if not ok and session.exitstatus == 0:
            session.exitstatus = 1
    report.write(results, rows, OUT, config.stash[ITL])
    print(f"benchmark: {OUT / 'benchmark.md'}")
