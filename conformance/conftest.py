"""Targets, profiles and reports of the conformance suite.

    pytest conformance --target local|vm|url --profile ci|release [--config FILE]

Settings come from defaults, then the config file, then SLM_CONFORMANCE_* variables, then these
options; the report echoes them with secrets redacted.
"""

from __future__ import annotations

import json
import time

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
    reports = REPO / settings.reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    if not config.option.xmlpath:
        config.option.xmlpath = str(reports / f"junit-{settings.target}.xml")
    config.pluginmanager.register(Reporter(settings), "slm-reporter")


SETTINGS = pytest.StashKey[Settings]()


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
def vm(settings, platform, cpu_model):
    image = REPO / settings.image
    if not image.exists():
        pytest.fail(f"no image at {image}: run `nox -s build` (or set SLM_CONFORMANCE_IMAGE)")
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
    if settings.target == "vm":
        return Endpoint.of_guest(request.getfixturevalue("guest"))
    if settings.target == "local":
        return Endpoint.of_stack(request.getfixturevalue("local_stack"))
    return Endpoint.of_settings(settings, emulated=bool(settings.ssh) and request.getfixturevalue("guest").emulated)


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

    def __init__(self, settings: Settings):
        self.settings = settings
        self.results: list[dict] = []
        self.started = time.time()

    def pytest_runtest_logreport(self, report):
        if report.when != "call" and report.outcome == "passed":
            return
        reason = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = report.longrepr[-1]
        elif report.failed and report.longreprtext:
            reason = report.longreprtext.strip().splitlines()[-1]
        self.results.append({"check": report.nodeid, "phase": report.when, "outcome": report.outcome,
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
            mark = {"passed": "pass", "failed": "**FAIL**", "skipped": "n/a"}[r["outcome"]]
            cells.setdefault(check, {})[column] = mark
        lines = ["| check | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += [f"| {check} | " + " | ".join(row.get(c, "") for c in columns) + " |" for check, row in cells.items()]
        return lines

    def context_lines(self) -> list[str]:
        lines = []
        image = REPO / self.settings.image
        manifest = image.parent / "manifest.json"
        if self.settings.target == "vm" and manifest.exists():
            m = json.loads(manifest.read_text())
            lines.append(f"Image `{image.name}` sha256 `{m['image']['sha256']}`, appliance "
                         f"{m['appliance']['version']}, engine {' '.join(m['artifacts']['engine']['version'])}.")
        for r in self.results:
            figures, test = r["figures"], r["check"].split("::", 1)[-1]
            if "variant" in figures:
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
               "seconds": round(time.time() - self.started, 1), "verdict": verdict, "results": self.results}
        name = self.settings.target
        (reports / f"results-{name}.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
        lines = [f"# SLM-Copilot conformance: target `{name}`, profile `{self.settings.profile}`: **{verdict}**",
                 "", *self.context_lines(), "", *self.matrix(), "", "## Figures", "",
                 "| check | outcome | s | figures |", "|---|---|---|---|"]
        for r in self.results:
            figures = ", ".join(f"{k}={v}" for k, v in r["figures"].items()) or r["reason"]
            lines.append(f"| `{r['check'].split('::', 1)[-1]}` | {r['outcome']} | {r['seconds']} | {figures} |")
        lines += ["", "Settings (secrets redacted):", "", "```json", json.dumps(doc["settings"], indent=1), "```", ""]
        (reports / f"summary-{name}.md").write_text("\n".join(lines))
