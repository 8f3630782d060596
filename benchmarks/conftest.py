"""`nox -s benchmark -- [--bench-target local|vm|url] [--save-baseline] [--rounds N] [--compare OLD NEW]
[--workload sessions [--sessions-shape ci|full]]`

Results accumulate in one dict over the session; at the end: machine context and host key, a line in
the history file, JSON + Markdown + plots in reports/benchmark/. The regression gate compares with
this host's baseline (benchmarks/baselines/); `--compare` runs only the side-by-side comparison."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
from pathlib import Path

import pytest

from artifacts.cache import heavy_job
from conformance.endpoint import Endpoint
from conformance.settings import Settings
from conformance.stack import LocalStack
from conformance.support import REPO, not_applicable, prune_cpu_variants, teardown_on_sigterm
from conformance.targets import Target, Unsupported, target_class
from vm_fixtures.layout import layout

from . import gate, history, machine, report

OUT = REPO / "reports" / "benchmark"
WORKLOADS = {"sessions": "test_sessions.py", "tuning": "test_tuning.py"}  # beside the default, throughput


def pytest_addoption(parser):
    group = parser.getgroup("slm-copilot benchmarks")
    group.addoption("--bench-target", default=None,
                    help="local (default) | vm | url; or SLM_CONFORMANCE_TARGET / the config file's target")
    group.addoption("--save-baseline", action="store_true",
                    help="write this run as this host's baseline, benchmarks/baselines/<host key>.json")
    group.addoption("--rounds", type=int, default=5, help="interleaved A/B rounds and single-stream rounds")
    group.addoption("--compare", nargs=2, metavar=("OLD", "NEW"), default=None,
                    help="only compare two builds side by side: staged artifacts folders, `.` or git refs "
                         "(local target), images (vm target)")
    group.addoption("--workload", default="throughput", choices=("throughput", *WORKLOADS),
                    help="throughput: short chats, the regression gate (default); sessions: agentic coding "
                         "sessions replayed by several developers at once (benchmarks/sessions.py); tuning: "
                         "engine settings tried against the appliance's own (benchmarks/test_tuning.py)")
    group.addoption("--sessions-shape", default="ci", choices=("ci", "full"),
                    help="session size: ci (a 1,500-token system prompt) or full (10,000 tokens, 8 turns)")
    group.addoption("--history", default=None,
                    help="the JSON-lines history file (default: SLM_BENCHMARK_HISTORY or "
                         "~/.local/state/slm-copilot/benchmark-history.jsonl)")


def pytest_collection_modifyitems(config, items):
    """--compare asks one question: only test_compare runs; without it, test_compare is left out.
    --workload sessions or tuning runs its own module (WORKLOADS) and nothing else."""
    if config.getoption("--compare") is not None:
        keep = [i for i in items if i.name == "test_compare"]
    else:
        module = WORKLOADS.get(config.getoption("--workload"))
        keep = [i for i in items if i.name != "test_compare" and (
            i.path.name == module if module else i.path.name not in WORKLOADS.values())]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = beside_their_anchor(keep)


def beside_their_anchor(items: list) -> list:
    """Each replay against llama-server's defaults (the anchor) right after the appliance's replay
    with as many developers: this host's pace drifts over minutes (the engine's prompt rate moved
    0.84-1.24 between runs of one check), and the two are compared as a ratio."""
    anchor = "test_sessions_on_engine_defaults"
    anchors = {i.callspec.params["developers"]: i for i in items if i.originalname == anchor}
    ordered = []
    for item in items:
        if item.originalname != anchor:
            ordered.append(item)
        if item.originalname == "test_sessions" and item.callspec.params["developers"] in anchors:
            ordered.append(anchors.pop(item.callspec.params["developers"]))
    return ordered + list(anchors.values())


RESULTS = pytest.StashKey[dict]()
ITL = pytest.StashKey[list]()
SETTINGS = pytest.StashKey[Settings]()
GATE_ROWS = pytest.StashKey[list]()  # the regression gate's table, for the report


def pytest_configure(config):
    """Target, CPU models and url settings resolved once, by the conformance settings."""
    teardown_on_sigterm()
    settings = Settings.load(defaults={"target": "local"}, target=config.getoption("--bench-target"))
    config.stash[SETTINGS] = settings
    config.stash[RESULTS] = {"target": settings.target, "workload": config.getoption("--workload")}
    config.stash[ITL] = []
    config.stash[GATE_ROWS] = []


@pytest.fixture(scope="session")
def machine_context(results) -> dict:
    """This machine's CPU, cores, memory and measured bandwidth, in the results (the host key's input)."""
    return describe_machine(results)


def describe_machine(results: dict) -> dict:
    if "machine" not in results:
        info = machine.cpu_info()
        info["bandwidth_gbs"] = machine.memory_bandwidth_gbs()
        results["machine"] = info
    return results["machine"]


@pytest.fixture(scope="session")
def gate_rows(request) -> list:
    return request.config.stash[GATE_ROWS]


def regression_gate(settings, results: dict, gate_rows: list) -> None:
    """A workload's last test: this run against this host's baseline (every rule), or another host's
    (the portable ratios only); fails naming every rule that broke. No baseline is no failure."""
    key = gate.host_key(results, settings.target, settings.url)
    own, portable = gate.load(key), gate.any_of_target(settings.target, results)
    if own is None and portable is None:
        pytest.skip(f"not applicable: no {results['workload']} baseline for the {settings.target} target")
    ok, rows = gate.compare(results, own, portable)
    gate_rows[:] = rows
    if own is None:
        print(f"benchmark: no baseline for host {key}: absolute figures reported, not judged "
              "(--save-baseline to keep this run as its baseline)")
    broken = [f"{r['metric']}: {r['current']} against {r['baseline']} (limit {r['limit']})" for r in rows
              if r["verdict"] == "REGRESSION"]
    assert ok, "regression:\n" + "\n".join(broken) + "\n\n" + gate.table(rows)


@pytest.fixture(scope="session")
def settings(request) -> Settings:
    return request.config.stash[SETTINGS]


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
def heavy():
    with heavy_job("benchmarks"):
        yield


def engine_subset(artifacts: Path, keep: list[str], into: Path) -> Path:
    """A copy of the staged artifacts whose engine ships only the `keep` CPU variants."""
    shutil.copytree(artifacts, into, copy_function=os.link)
    prune_cpu_variants(into / "engine", keep)
    return into


@pytest.fixture(scope="session")
def target(heavy, settings, results) -> Target:
    """The appliance measured (local, url); the vm target is measured per CPU model (test_cpu_models)."""
    cls = target_class(settings)
    if cls.per_cpu_model:
        not_applicable(f"the {settings.target} target is measured per CPU model only (test_cpu_models)")
    appliance = cls(settings, settings.target).start()
    with contextlib.suppress(Unsupported):
        results["engine_variant"] = machine.loaded_variant(appliance.engine_proc("maps"))
    yield appliance
    appliance.stop()


@pytest.fixture(scope="session")
def local_stack(target, results) -> LocalStack:
    """The rendered appliance on loopback, for what only it allows: the engine directly, variants."""
    stack = getattr(target, "stack", None)
    if stack is None:
        not_applicable(f"needs the local target (this run: {target.name})")
    results["model_bytes"] = (stack.artifacts / "model.gguf").stat().st_size
    return stack


def configured_with(local_stack, edits: dict) -> LocalStack:
    """The appliance as configure renders it, then files of its configuration (by name, in its
    configuration directory) passed through their edits: a setting or a defect planted after the
    appliance's own validation."""
    stack = LocalStack(local_stack.artifacts)
    stack.configure()
    for name, edit in edits.items():
        path = stack.path(f"{layout().conf_dir}/{name}")
        path.write_text(edit(path.read_text()))
    return stack


def edited_engine_args(edit):
    """An edit of engine.env: the engine's arguments passed through `edit`."""
    def engine_env(text: str) -> str:
        return "".join(f"SLM_ENGINE_ARGS={shlex.quote(edit(shlex.split(x.partition('=')[2])[0]))}\n"
                       if x.startswith("SLM_ENGINE_ARGS=") else f"{x}\n" for x in text.splitlines())
    return engine_env


@contextlib.contextmanager
def engine_with(local_stack, edit):
    """The appliance's engine, configured as the appliance configures it, then its arguments passed
    through `edit`; served directly on loopback."""
    stack = configured_with(local_stack, {"engine.env": edited_engine_args(edit)})
    stack.start_engine()
    try:
        yield stack
    finally:
        stack.stop()


@contextlib.contextmanager
def appliance_with(local_stack, edits: dict):
    """The whole appliance (engine and nginx) with its rendered configuration edited (configured_with)."""
    stack = configured_with(local_stack, edits)
    try:
        stack.start_engine()
        stack.start_nginx()
        yield stack
    finally:
        stack.stop()


def direct(stack: LocalStack) -> Endpoint:
    return Endpoint(f"http://127.0.0.1:{stack.ports['engine']}", stack.api_key, None)


def proxied(stack: LocalStack) -> Endpoint:
    return Endpoint.of_stack(stack)


@pytest.fixture(scope="session")
def endpoint(target) -> Endpoint:
    return target.endpoint


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
    if len(results) <= 2:  # target and workload: nothing ran
        return
    info = describe_machine(results)
    settings = config.stash[SETTINGS]
    key = results["host_key"] = gate.host_key(results, settings.target, settings.url)
    decode = ((results.get("single") or {}).get("engine_decode_tps") or {}).get("p50")
    if decode and results.get("model_bytes"):
        results["roofline"] = machine.roofline(decode, results["model_bytes"], info["bandwidth_gbs"])
    rows = config.stash.get(GATE_ROWS, [])
    if config.getoption("--save-baseline"):
        print(f"benchmark: baseline written to {gate.save(key, results)}")
    past = Path(config.getoption("--history") or history.default_path())
    if not config.getoption("--compare") and history.figures(results):
        history.append(past, results, key, history.build_id(REPO / settings.artifacts))
    report.write(results, rows, OUT, config.stash[ITL], past)
    print(f"benchmark: {OUT / 'benchmark.md'}")
