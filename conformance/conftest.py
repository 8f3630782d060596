"""Targets, profiles and reports of the conformance suite.

    pytest conformance --target local|vm|url --profile ci|release [--config FILE]

Settings come from defaults, then the config file, then SLM_CONFORMANCE_* variables, then these
options; the report echoes them with secrets redacted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from artifacts.cache import heavy_job

from .endpoint import Endpoint
from .settings import Settings
from .stack import LocalStack
from .support import REPO, not_applicable


def pytest_addoption(parser):
    group = parser.getgroup("slm-copilot conformance")
    group.addoption("--target", default=None, help="local | vm | url")
    group.addoption("--profile", default=None, help="ci | release (release allows no skips)")
    group.addoption("--config", default=None, help="TOML file with a [conformance] table")


def pytest_configure(config):
    settings = Settings.load(config.getoption("--config"), target=config.getoption("--target"),
                             profile=config.getoption("--profile"))
    config.stash[SETTINGS] = settings
    config.stash[DECISIONS], config.stash[SPEEDS] = {}, {}
    reports = REPO / settings.reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    if not config.option.xmlpath:
        config.option.xmlpath = str(reports / f"junit-{settings.target}.xml")
    config.pluginmanager.register(Reporter(settings, config.stash[DECISIONS], config.stash[SPEEDS]), "slm-reporter")


SETTINGS = pytest.StashKey[Settings]()
DECISIONS = pytest.StashKey[dict]()  # CPU model -> vm_fixtures.accel.Decision, for the report
SPEEDS = pytest.StashKey[dict]()  # CPU model (or target) -> its Endpoint, whose measured speed the report shows


@pytest.fixture(scope="session")
def settings(request) -> Settings:
    return request.config.stash[SETTINGS]


def pytest_generate_tests(metafunc):
    """Every check runs once per CPU model on the vm target (the report's matrix)."""
    if "cpu_model" in metafunc.fixturenames:
        settings = metafunc.config.stash[SETTINGS]
        models = settings.cpu_models if settings.target == "vm" else [settings.target]
        metafunc.parametrize("cpu_model", models, scope="session")


def cpu_model_of(item) -> str | None:
    return item.callspec.params.get("cpu_model") if hasattr(item, "callspec") else None


def pytest_collection_modifyitems(config, items):
    """The ci profile runs the whole suite on the CPU model named by ci_full_model and only the
    boot/stream/auth core on the others (TCG makes them slow); release runs everything everywhere."""
    settings: Settings = config.stash[SETTINGS]
    keep, drop = [], []
    for item in items:
        if settings.target != "local" and item.get_closest_marker("negative_control"):
            drop.append(item)  # they break a local stack on purpose; the checks are the same code
            continue
        only = item.get_closest_marker("target")
        if only and settings.target not in only.args:
            drop.append(item)  # an image's metadata or first boot: nothing to check on a deployed one
            continue
        if settings.profile != "ci" or settings.target != "vm":
            keep.append(item)
            continue
        core = item.get_closest_marker("core") is not None
        (keep if core or cpu_model_of(item) in (None, settings.ci_full_model) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_destructive_last(items):
    """Destructive checks last on each CPU model: they reboot and reconfigure (a new key) the VM the
    others share. Stable, and grouped by model as pytest grouped them, so no VM boots twice."""
    models = list(dict.fromkeys(cpu_model_of(item) for item in items))
    items.sort(key=lambda item: (models.index(cpu_model_of(item)), item.get_closest_marker("destructive") is not None))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def destructive_is_opt_in(request, settings):
    """A deployed appliance is only killed, rebooted or reconfigured when the operator says so."""
    if request.node.get_closest_marker("destructive") and settings.target == "url" and not settings.destructive:
        not_applicable("destructive: opt in with SLM_CONFORMANCE_DESTRUCTIVE=1 (and SLM_CONFORMANCE_SSH)")


DEFAULT_BUDGET_S = 300


@pytest.fixture(autouse=True)
def time_budget(request):
    """The wall time a check is sized to fit (marker `budget`), shown in the report beside its actual
    time: a check that outgrows it on some host is visible before it eats the CI limit. Never a failure."""
    marker = request.node.get_closest_marker("budget")
    request.node.user_properties.append(("budget_s", marker.args[0] if marker else DEFAULT_BUDGET_S))


@pytest.fixture(autouse=True)
def collect_logs_on_failure(request, settings):
    yield
    failed = any(getattr(getattr(request.node, f"report_{w}", None), "failed", False) for w in ("setup", "call"))
    if failed and "guest" in request.fixturenames:
        guest = request.getfixturevalue("guest")
        guest.collect_logs(REPO / settings.reports_dir / "logs" / request.node.name.replace("/", "_"))


@pytest.fixture(scope="session")
def platform(settings):
    if settings.target != "vm":
        not_applicable(f"needs the vm target (this run: {settings.target})")
    from vm_fixtures import LibvirtPlatform

    with heavy_job("conformance VMs"):
        libvirt_platform = LibvirtPlatform()
        libvirt_platform.reap()
        yield libvirt_platform


@pytest.fixture(scope="session")
def vm(settings, platform, cpu_model, request):
    """One VM per CPU model. A boot that fails errors this model's checks with the cause (console
    tail, domain state) and leaves the other models' VMs to run."""
    image = REPO / settings.image
    if not image.exists():
        pytest.fail(f"no image at {image}: run `nox -s build` (or set SLM_CONFORMANCE_IMAGE)")
    request.config.stash[DECISIONS][cpu_model] = platform.decision(image, cpu_model)
    with platform.booted(image, cpu_model, logs=REPO / settings.reports_dir / "logs" / f"boot-{cpu_model}") as vm:
        yield vm


@pytest.fixture(scope="session")
def guest(settings, request, cpu_model):
    """The appliance's host: the booted VM, or a deployed appliance reached with the `ssh` setting."""
    if settings.target == "vm":
        return request.getfixturevalue("vm")
    if settings.target == "url" and settings.ssh:
        from vm_fixtures import Guest

        return Guest.from_ssh(settings.ssh, settings.ssh_key, https_url=settings.url, http_url=settings.http_url,
                              engine_url=settings.engine_url, ca_file=settings.ca_file)
    not_applicable(f"host checks need the vm target or ssh with the url target (this run: {settings.target})")


@pytest.fixture(scope="session")
def local_stack(settings):
    if settings.target != "local":
        not_applicable(f"needs the local target (this run: {settings.target})")
    stack = LocalStack(REPO / settings.artifacts).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def endpoint(settings, request, cpu_model) -> Endpoint:
    """The appliance as clients reach it; its speed is measured by the first check that sizes itself
    (not here: a destructive check's opt-in must be asked before anything is contacted)."""
    if settings.target == "vm":
        ep = Endpoint.of_guest(request.getfixturevalue("guest"))
    elif settings.target == "local":
        ep = Endpoint.of_stack(request.getfixturevalue("local_stack"))
    else:
        ep = Endpoint.of_settings(settings)
    request.config.stash[SPEEDS][cpu_model] = ep
    return ep


@pytest.fixture(scope="session")
def native_references(settings, endpoint) -> dict:
    """The equivalence references: the engine build and model of this checkout, run natively here
    once per CPU variant this host can run."""
    from . import equivalence

    artifacts = REPO / settings.artifacts
    facts = dict(line.split("=", 1) for line in (artifacts / "model.env").read_text().split()) \
        if (artifacts / "model.env").exists() else {}
    if not facts:
        not_applicable(f"no engine build and model in {artifacts}: run `nox -s artifacts`")
    with endpoint.client() as client:
        served = [m["id"] for m in client.get("/v1/models").json()["data"]]
    if facts["MODEL_ID"] not in served:
        not_applicable(f"the appliance serves {served}, the references would be {facts['MODEL_ID']}")
    return equivalence.native_references(artifacts / "engine", artifacts / "model.gguf")


@pytest.fixture(scope="session")
def served_variant(settings, request, cpu_model) -> str:
    """The engine CPU variant (libggml-cpu-<variant>.so) that serves, read from the engine's memory map."""
    from .checks import engine_variants

    if settings.target == "local":
        maps = (Path("/proc") / str(request.getfixturevalue("local_stack").engine.pid) / "maps").read_text()
    elif settings.target == "vm" or settings.ssh:
        maps = request.getfixturevalue("guest").engine_proc("maps")
    else:
        not_applicable("the serving CPU variant is read on the host: set ssh (SLM_CONFORMANCE_SSH)")
    variants = engine_variants(maps)
    assert len(variants) == 1, f"the engine has mapped {variants}"
    return variants[0]


class EngineControl:
    """Stop and start the engine behind the front, whatever the target."""

    def __init__(self, stop, start):
        self.stop, self.start = stop, start


@pytest.fixture
def engine_control(settings, request, endpoint):
    if settings.target == "local":
        stack = request.getfixturevalue("local_stack")
        return EngineControl(stack.stop_engine, stack.start_engine)
    guest = request.getfixturevalue("guest")

    def start():
        guest.execute("systemctl start slm-copilot-engine")
        endpoint.wait_serving(timeout=600)

    return EngineControl(lambda: guest.execute("systemctl stop slm-copilot-engine"), start)


@pytest.fixture
def record(request):
    """Figures a check measured, for the JSON and Markdown reports."""
    def _record(figures: dict | None):
        for key, value in (figures or {}).items():
            request.node.user_properties.append((key, value))
    return _record


class Reporter:
    """Collects each check's outcome and figures; writes JSON and Markdown at the end."""

    def __init__(self, settings: Settings, decisions: dict, speeds: dict):
        self.settings, self.decisions, self.speeds = settings, decisions, speeds
        self.results: list[dict] = []
        self.started = time.time()

    def pytest_runtest_logreport(self, report):
        if report.when != "call" and report.outcome == "passed":
            return
        reason = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = report.longrepr[-1]
        elif report.failed:  # the exception's own first line: the assertion, or a boot's cause
            crash = getattr(report.longrepr, "reprcrash", None)
            reason = (crash.message if crash else report.longreprtext or "").strip().splitlines()[0][:500]
        # pass / fail / skip, and error where the machinery failed (a fixture: a VM that did not boot)
        outcome = "error" if report.failed and report.when != "call" else report.outcome
        self.results.append({"check": report.nodeid, "phase": report.when, "outcome": outcome,
                             "seconds": round(report.duration, 2), "figures": dict(report.user_properties),
                             "reason": reason})

    def matrix(self) -> list[str]:
        """check x CPU model (or target): what release engineers read first."""
        cells: dict[str, dict[str, str]] = {}
        columns: list[str] = []
        models = self.settings.cpu_models if self.settings.target == "vm" else [self.settings.target]
        for r in self.results:
            test = r["check"].split("::", 1)[-1]
            check, _, column = test.partition("[")
            column = column.rstrip("]")
            if column not in models:
                check, column = test, "-"
            if column not in columns:
                columns.append(column)
            mark = {"passed": "pass", "failed": "**FAIL**", "error": "**ERROR**", "skipped": "n/a"}[r["outcome"]]
            cells.setdefault(check, {})[column] = mark
        lines = ["| check | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += [f"| {check} | " + " | ".join(row.get(c, "") for c in columns) + " |" for check, row in cells.items()]
        return lines

    def measured_speeds(self) -> dict:
        return {model: ep.measured_speed for model, ep in self.speeds.items() if ep.measured_speed}

    def context_lines(self) -> list[str]:
        lines = []
        image = REPO / self.settings.image
        manifest = image.parent / "manifest.json"
        if self.settings.target == "vm" and manifest.exists():
            m = json.loads(manifest.read_text())
            lines.append(f"Image `{image.name}` sha256 `{m['image']['sha256']}`, appliance "
                         f"{m['appliance']['version']}, engine {' '.join(m['artifacts']['engine']['version'])}.")
        if self.decisions:
            host = next(iter(self.decisions.values())).host
            lines += [f"Host: {host.get('cpu')}; KVM modules: {', '.join(host.get('kvm_modules', [])) or 'none'}; "
                      f"/dev/kvm: {host.get('kvm_device')}; {host.get('qemu')}.", "", "Accelerator per CPU model:"]
            lines += [f"- {d.line()}" for d in self.decisions.values()]
            lines.append("")
        speeds = self.measured_speeds()
        if speeds:
            lines.append("Measured speed (engine ms per prompt / generated token; checks size themselves by it):")
            lines += [f"- {model}: {s.prompt_ms:.1f} / {s.decode_ms:.1f}" for model, s in speeds.items()]
            lines.append("")
        for r in self.results:
            figures, test = r["figures"], r["check"].split("::", 1)[-1]
            if "variant" in figures and "cpu_flags" in figures:
                lines.append(f"- `{test}`: engine CPU variant `{figures['variant']}` (flags: {figures['cpu_flags']})")
            if "ready_s" in figures and "boot_s" in figures and "boot_reaches_ready" in test:
                lines.append(f"- `{test}`: SSH after {figures['boot_s']} s, ready after {figures['ready_s']} s")
        return lines

    def pytest_sessionfinish(self, session):
        skipped = [r for r in self.results if r["outcome"] == "skipped"]
        if self.settings.profile == "release" and skipped and session.exitstatus == 0:
            session.exitstatus = 1  # a release is certified only with every check run
        reports = REPO / self.settings.reports_dir
        verdict = "pass" if session.exitstatus == 0 else "fail"
        doc = {"settings": self.settings.redacted(), "started": self.started,
               "accelerators": {model: d.as_dict() for model, d in self.decisions.items()},
               "speeds": {model: s.as_dict() for model, s in self.measured_speeds().items()},
               "seconds": round(time.time() - self.started, 1), "verdict": verdict, "results": self.results}
        name = self.settings.target
        (reports / f"results-{name}.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
        lines = [f"# SLM-Copilot conformance: target `{name}`, profile `{self.settings.profile}`: **{verdict}**",
                 "", *self.context_lines(), "", *self.matrix(), "", "## Figures", "",
                 "| check | outcome | s | budget s | figures |", "|---|---|---|---|---|"]
        for r in self.results:
            shown = {k: v for k, v in r["figures"].items() if k != "budget_s"}
            figures = ", ".join(f"{k}={v}" for k, v in shown.items()) or r["reason"]
            budget = r["figures"].get("budget_s", "")
            over = " **over**" if budget and r["seconds"] > budget else ""
            lines.append(f"| `{r['check'].split('::', 1)[-1]}` | {r['outcome']} | {r['seconds']} | {budget}{over} "
                         f"| {figures} |")
        lines += ["", "Settings (secrets redacted):", "", "```json", json.dumps(doc["settings"], indent=1), "```", ""]
        (reports / f"summary-{name}.md").write_text("\n".join(lines))
