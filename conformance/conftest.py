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

from .endpoint import Endpoint
from .settings import Settings
from .stack import LocalStack

REPO = Path(__file__).resolve().parent.parent


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


def not_applicable(reason: str):
    """A check the target cannot run is reported as such (and fails the release profile)."""
    pytest.skip(f"not applicable: {reason}")


@pytest.fixture(scope="session")
def local_stack(settings):
    if settings.target != "local":
        not_applicable(f"needs the local target (this run: {settings.target})")
    stack = LocalStack(REPO / settings.artifacts).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def endpoint(settings, request) -> Endpoint:
    if settings.target == "local":
        stack = request.getfixturevalue("local_stack")
        return Endpoint(stack.base_url, stack.api_key, stack.ca_file, model="")
    if settings.target == "url":
        ca_file = Path(settings.ca_file) if settings.ca_file else None
        return Endpoint(settings.url.rstrip("/"), settings.api_key, ca_file)
    not_applicable("the vm target is not implemented yet (vm_fixtures: issue #7)")


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
                 "", "| check | outcome | s | figures |", "|---|---|---|---|"]
        for r in self.results:
            figures = ", ".join(f"{k}={v}" for k, v in r["figures"].items()) or r["reason"]
            lines.append(f"| `{r['check'].split('::', 1)[-1]}` | {r['outcome']} | {r['seconds']} | {figures} |")
        lines += ["", "Settings (secrets redacted):", "", "```json", json.dumps(doc["settings"], indent=1), "```", ""]
        (reports / f"summary-{name}.md").write_text("\n".join(lines))
