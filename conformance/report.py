"""The conformance report: JUnit XML (pytest's), JSON and a Markdown summary that echoes the settings
with secrets redacted. Four outcomes, as the OCI distribution-spec suite has them: pass, fail,
skip (not applicable, with the reason) and error (the machinery failed: a VM that did not boot)."""

from __future__ import annotations

import json
import time

from .settings import Settings
from .support import REPO

MARKS = {"passed": "pass", "failed": "**FAIL**", "error": "**ERROR**", "skipped": "n/a"}


def claim_of(item, column: str | None) -> str:
    """The check's name without its column: `test_service_running[nginx]` for every CPU model."""
    ident = item.callspec.id if hasattr(item, "callspec") else ""
    if column and ident == column:
        ident = ""
    elif column and ident.startswith(f"{column}-"):
        ident = ident.removeprefix(f"{column}-")
    elif column and ident.endswith(f"-{column}"):
        ident = ident.removesuffix(f"-{column}")
    return f"{item.originalname}[{ident}]" if ident else item.originalname


class Reporter:
    """A pytest plugin: collects each check's outcome and figures; writes JSON and Markdown at the end."""

    def __init__(self, settings: Settings, columns: list[str], targets: dict):
        self.settings, self.columns = settings, columns
        self.targets = targets  # column -> Target, as the run started them (they describe themselves)
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
            reason = ((crash.message if crash else report.longreprtext) or "").strip().splitlines()[0][:500]
        outcome = "error" if report.failed and report.when != "call" else report.outcome
        self.results.append({"check": report.nodeid, "claim": getattr(report, "slm_claim", report.nodeid),
                             "column": getattr(report, "slm_column", None) or "-",
                             "phase": report.when, "outcome": outcome,
                             "seconds": round(report.duration, 2), "figures": dict(report.user_properties),
                             "reason": reason})

    def matrix(self) -> list[str]:
        """check x CPU model (or target): what release engineers read first, one row per claim."""
        cells: dict[str, dict[str, str]] = {}
        for r in self.results:
            cells.setdefault(r["claim"], {})[r["column"]] = MARKS[r["outcome"]]
        seen = {r["column"] for r in self.results}
        columns = [c for c in [*self.columns, "-"] if c in seen]
        lines = ["| check | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += [f"| {check} | " + " | ".join(row.get(c, "") for c in columns) + " |" for check, row in cells.items()]
        return lines

    def context_lines(self) -> list[str]:
        lines = []
        image = REPO / self.settings.image
        manifest = image.parent / "manifest.json"
        if any(t.boots_image for t in self.targets.values()) and manifest.exists():
            m = json.loads(manifest.read_text())
            lines.append(f"Image `{image.name}` sha256 `{m['image']['sha256']}`, appliance "
                         f"{m['appliance']['version']}, engine {' '.join(m['artifacts']['engine']['version'])}.")
        hosts = [t.decision.host for t in self.targets.values() if t.decision]
        if hosts:
            host = hosts[0]
            lines.append(f"Host: {host.get('cpu')}; KVM modules: {', '.join(host.get('kvm_modules', [])) or 'none'}; "
                         f"/dev/kvm: {host.get('kvm_device')}; {host.get('qemu')}.")
        described = [line for t in self.targets.values() for line in t.describe()]
        if described:
            lines += ["", *described, ""]
        for r in self.results:
            figures, test = r["figures"], r["check"].split("::", 1)[-1]
            if "variant" in figures and "cpu_flags" in figures:
                lines.append(f"- `{test}`: engine CPU variant `{figures['variant']}` (flags: {figures['cpu_flags']})")
            if "ready_s" in figures and "boot_s" in figures and "boot_reaches_ready" in test:
                lines.append(f"- `{test}`: SSH after {figures['boot_s']} s, ready after {figures['ready_s']} s")
        return lines

    def machine_readable(self, verdict: str) -> dict:
        targets = {column: {"accelerator": t.decision.as_dict() if t.decision else None,
                            "speed": t.endpoint.measured_speed.as_dict()
                            if t.endpoint and t.endpoint.measured_speed else None}
                   for column, t in self.targets.items()}
        return {"settings": self.settings.redacted(), "started": self.started,
                "seconds": round(time.time() - self.started, 1), "verdict": verdict, "targets": targets,
                "results": self.results}

    def pytest_sessionfinish(self, session):
        skipped = [r for r in self.results if r["outcome"] == "skipped"]
        if self.settings.profile == "release" and skipped and session.exitstatus == 0:
            session.exitstatus = 1  # a release is certified only with every check run
        reports = REPO / self.settings.reports_dir
        verdict = "pass" if session.exitstatus == 0 else "fail"
        doc = self.machine_readable(verdict)
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
