"""Targets, profiles and reports of the conformance suite.

    pytest conformance --target local|vm|url --profile ci|release [--config FILE]

Settings come from defaults, then the config file, then SLM_CONFORMANCE_* variables, then these
options; the report echoes them with secrets redacted. The target (targets.py) is the one thing
that knows local from vm from url; everything here asks it.
"""

from __future__ import annotations

import pytest

from .endpoint import Endpoint
from .report import Reporter, claim_of
from .settings import Settings
from .support import REPO, not_applicable, teardown_on_sigterm
from .targets import Target, capability, parse_facts, target_class

SETTINGS = pytest.StashKey[Settings]()
TARGETS_STARTED = pytest.StashKey[dict]()  # column -> Target, for the report
DEFAULT_BUDGET_S = 300


def pytest_addoption(parser):
    group = parser.getgroup("slm-copilot conformance")
    group.addoption("--target", default=None, help="local | vm | url")
    group.addoption("--profile", default=None, help="ci | release (release allows no skips)")
    group.addoption("--config", default=None, help="TOML file with a [conformance] table")


def pytest_configure(config):
    teardown_on_sigterm()
    settings = Settings.load(config.getoption("--config"), target=config.getoption("--target"),
                             profile=config.getoption("--profile"))
    config.stash[SETTINGS] = settings
    config.stash[TARGETS_STARTED] = {}
    reports = REPO / settings.reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    if not config.option.xmlpath:
        config.option.xmlpath = str(reports / f"junit-{settings.target}.xml")
    columns = target_class(settings).columns(settings)
    config.pluginmanager.register(Reporter(settings, columns, config.stash[TARGETS_STARTED]), "slm-reporter")


@pytest.fixture(scope="session")
def settings(request) -> Settings:
    return request.config.stash[SETTINGS]


def pytest_generate_tests(metafunc):
    """Every check runs once per column: per CPU model on the vm target (the report's matrix)."""
    if "cpu_model" in metafunc.fixturenames:
        settings = metafunc.config.stash[SETTINGS]
        metafunc.parametrize("cpu_model", target_class(settings).columns(settings), scope="session")


def cpu_model_of(item) -> str | None:
    return item.callspec.params.get("cpu_model") if hasattr(item, "callspec") else None


def pytest_collection_modifyitems(config, items):
    """Checks marked for other targets are deselected. On a per-CPU-model target the ci profile runs
    the whole suite on ci_full_model and the boot/stream/auth core on the others (TCG makes them
    slow); release runs everything everywhere."""
    settings: Settings = config.stash[SETTINGS]
    per_model = target_class(settings).per_cpu_model and settings.profile == "ci"
    keep, drop = [], []
    for item in items:
        only = item.get_closest_marker("target")
        if only and settings.target not in only.args:
            drop.append(item)  # an image's metadata, a broken local stack: nothing to do elsewhere
        elif item.get_closest_marker("release") and settings.profile != "release":
            drop.append(item)
        elif not per_model or item.get_closest_marker("core") or cpu_model_of(item) in (None, settings.ci_full_model):
            keep.append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_destructive_last(items):
    """Destructive checks last on each CPU model: they reboot and reconfigure (a new key) the VM the
    others share. Stable, and grouped by model as pytest grouped them, so no VM boots twice."""
    models = list(dict.fromkeys(cpu_model_of(item) for item in items))
    items.sort(key=lambda item: (models.index(cpu_model_of(item)), item.get_closest_marker("destructive") is not None))


def known_keys(config) -> list[str]:
    """Every API key this run has seen: the settings' and each started appliance's current one."""
    keys = {config.stash[SETTINGS].api_key}
    for appliance in config.stash[TARGETS_STARTED].values():
        if appliance.endpoint is not None:
            keys.add(appliance.endpoint.api_key)
    return sorted(k for k in keys if k)


def redact(text: str, keys: list[str]) -> str:
    for key in keys:
        text = text.replace(key, "[REDACTED API KEY]")
    return text


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Every report (JUnit, JSON, Markdown, the terminal) is built from this object: whatever a failing
    check printed or raised, the appliance's key leaves here masked."""
    report = yield
    keys = known_keys(item.config)
    if report.failed and keys and any(key in str(report.longrepr) for key in keys):
        report.longrepr = redact(str(report.longrepr), keys)
    report.sections = [(title, redact(content, keys)) for title, content in report.sections]
    report.user_properties = [(k, redact(v, keys) if isinstance(v, str) else v) for k, v in report.user_properties]
    setattr(item, f"report_{report.when}", report)
    report.slm_column = cpu_model_of(item)  # for the report's matrix: one row per claim, a column per model
    report.slm_claim = claim_of(item, report.slm_column)
    return report


# -- the target and what checks take from it ---------------------------------------------------

@pytest.fixture(scope="session")
def target_shared(settings):
    """What every column's appliance shares for the run (vm: libvirt and the heavy-job lock)."""
    with target_class(settings).sharing(settings) as shared:
        yield shared


@pytest.fixture(scope="session")
def target(settings, target_shared, cpu_model, request) -> Target:
    """One appliance per column, started once. A start that fails (a VM that does not boot) errors
    this column's checks with the cause and leaves the other columns to run."""
    appliance = target_class(settings)(settings, cpu_model, target_shared)
    request.config.stash[TARGETS_STARTED][cpu_model] = appliance
    for line in appliance.announce():  # before a start that may take minutes, or fail
        request.config.pluginmanager.get_plugin("terminalreporter").write_line(line)
    try:
        yield appliance.start()
    finally:
        appliance.stop()


@pytest.fixture(scope="session")
def endpoint(target) -> Endpoint:
    """The appliance as clients reach it; its speed is measured by the first check that sizes itself
    (not here: a destructive check's opt-in must be asked before anything is contacted)."""
    return target.endpoint


@pytest.fixture(scope="session")
def guest(target):
    """The appliance's host: the booted VM, or a deployed appliance reached with the `ssh` setting."""
    return capability(target.host)


@pytest.fixture(scope="session")
def platform(target_shared):
    """The libvirt platform, for checks that boot images of their own (marked target("vm"))."""
    return target_shared


@pytest.fixture(autouse=True)
def destructive_is_opt_in(request, settings):
    """A deployed appliance is only killed, rebooted or reconfigured when the operator says so."""
    refusal = target_class(settings).destructive_refusal(settings)
    if refusal and request.node.get_closest_marker("destructive"):
        not_applicable(refusal)


@pytest.fixture(autouse=True)
def time_budget(request):
    """The wall time a check is sized to fit (marker `budget`), shown in the report beside its actual
    time: a check that outgrows it on some host is visible before it eats the CI limit. Never a failure."""
    marker = request.node.get_closest_marker("budget")
    request.node.user_properties.append(("budget_s", marker.args[0] if marker else DEFAULT_BUDGET_S))


@pytest.fixture(autouse=True)
def collect_logs_on_failure(request, settings):
    """Every failing check that has an appliance gets its logs, through the target that owns it."""
    yield
    failed = any(getattr(getattr(request.node, f"report_{w}", None), "failed", False) for w in ("setup", "call"))
    column = cpu_model_of(request.node)
    appliance = request.config.stash[TARGETS_STARTED].get(column)
    if failed and appliance is not None and appliance.endpoint is not None:  # started: it has logs
        appliance.collect_logs(REPO / settings.reports_dir / "logs" / request.node.name.replace("/", "_"))


@pytest.fixture(scope="session")
def native_references(settings, endpoint) -> dict:
    """The equivalence references: the engine build and model of this checkout, run natively here
    once per CPU variant this host can run."""
    from . import equivalence

    artifacts = REPO / settings.artifacts
    if not (artifacts / "model.env").exists():
        not_applicable(f"no engine build and model in {artifacts}: run `nox -s artifacts`")
    facts = parse_facts((artifacts / "model.env").read_text())
    with endpoint.client() as client:
        served = [m["id"] for m in client.get("/v1/models").json()["data"]]
    if facts["MODEL_ID"] not in served:
        not_applicable(f"the appliance serves {served}, the references would be {facts['MODEL_ID']}")
    return equivalence.native_references(artifacts / "engine", artifacts / "model.gguf")


@pytest.fixture(scope="session")
def served_variant(target) -> str:
    """The engine CPU variant (libggml-cpu-<variant>.so) that serves, read from the engine's memory map."""
    from .support import engine_variants

    variants = engine_variants(capability(lambda: target.engine_proc("maps")))
    assert len(variants) == 1, f"the engine has mapped {variants}"
    return variants[0]


@pytest.fixture
def record(request):
    """Figures a check measured, for the JSON and Markdown reports."""
    def _record(figures: dict | None):
        for key, value in (figures or {}).items():
            request.node.user_properties.append((key, value))
    return _record
