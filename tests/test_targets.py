"""The target registry: every target a setting may name has a class, and what a target cannot do is
said in one place and reported as not applicable, never as a failure."""

from __future__ import annotations

import pytest

from conformance import settings as settings_module
from conformance.report import Reporter, claim_of
from conformance.settings import Settings
from conformance.targets import TARGETS, Unsupported, capability
from vm_fixtures.layout import layout


def test_every_target_setting_has_a_class():
    assert set(TARGETS) == set(settings_module.TARGETS)


@pytest.mark.parametrize("name, columns", [("local", ["local"]), ("vm", ["qemu64", "host"]), ("url", ["url"])])
def test_columns_are_the_cpu_models_only_where_each_model_gets_its_own_appliance(name, columns):
    settings = Settings(target=name, url="https://x", api_key="k")
    assert TARGETS[name].columns(settings) == columns
    assert TARGETS[name].per_cpu_model == (name == "vm") == TARGETS[name].boots_image


def test_only_a_deployed_appliance_asks_before_destruction():
    assert TARGETS["url"].destructive_refusal(Settings(target="url", url="https://x", api_key="k"))
    assert TARGETS["url"].destructive_refusal(Settings(target="url", url="https://x", api_key="k", ssh="root@x",
                                                       destructive=True)) is None
    assert TARGETS["local"].destructive_refusal(Settings(target="local")) is None


def test_what_a_target_cannot_do_is_not_applicable_with_its_reason():
    url = TARGETS["url"](Settings(target="url", url="https://x", api_key="k"), "url").start()
    with pytest.raises(Unsupported, match="SLM_CONFORMANCE_SSH"):
        url.engine_proc("maps")
    with pytest.raises(pytest.skip.Exception, match="not applicable: host checks on a deployed appliance need ssh"):
        capability(url.host)
    url.collect_logs(None)  # nothing to collect is not an error


class Item:
    def __init__(self, originalname, ident=None):
        self.originalname = originalname
        if ident is not None:
            self.callspec = type("CallSpec", (), {"id": ident})()


@pytest.mark.parametrize("item, column, claim", [
    (Item("test_sse_protocol", "qemu64"), "qemu64", "test_sse_protocol"),
    (Item("test_service_running", "nginx-qemu64"), "qemu64", "test_service_running[nginx]"),
    (Item("test_service_running", "host-slm-copilot-engine"), "host", "test_service_running[slm-copilot-engine]"),
    (Item("test_a_paused_domain_fails_fast"), None, "test_a_paused_domain_fails_fast"),
])
def test_a_claim_is_named_without_its_column(item, column, claim):
    assert claim_of(item, column) == claim


def test_the_matrix_has_a_row_per_claim_and_says_error_apart_from_fail():
    reporter = Reporter(Settings(target="vm"), ["qemu64", "host"], {})
    rows = [("test_service_running[nginx]", "qemu64", "passed"), ("test_service_running[nginx]", "host", "error"),
            ("test_service_running[ssh]", "qemu64", "failed"), ("test_image_checksums", "-", "passed")]
    reporter.results = [{"claim": c, "column": col, "outcome": o} for c, col, o in rows]
    assert reporter.matrix() == [
        "| check | qemu64 | host | - |", "|---|---|---|---|",
        "| test_service_running[nginx] | pass | **ERROR** |  |",
        "| test_service_running[ssh] | **FAIL** |  |  |",
        "| test_image_checksums |  |  | pass |"]


def test_the_layout_is_the_appliance_scripts():
    paths = layout()
    assert paths.api_key in paths.generated_files and paths.api_key in paths.secret_files
    assert set(paths.secret_files) <= set(paths.generated_files)
    assert paths.engine_port == 8081 and paths.engine_unit == "slm-copilot-engine"
