"""Bring your own model (ONEAPP_SLM_MODEL_URL): fetched, verified and judged before it replaces the
model that serves; refused with the variable named, the last good model serving, when it must be.

Destructive: each check reconfigures the appliance and hands it back with the baked model. On the
local target they run on the suite's own stack (configure re-run in place); on the vm target on the
booted VM, live as one-context applies a context update (the resume check reboots it).
"""

from __future__ import annotations

import base64

import pytest

from . import model_source
from .model_source import NO_TEMPLATE, ModelHost, derive_models
from .support import REPO, not_applicable
from .targets import capability

pytestmark = pytest.mark.destructive


@pytest.fixture(scope="session")
def model_host(settings, tmp_path_factory):
    files = derive_models(REPO / settings.artifacts / "model.gguf", tmp_path_factory.mktemp("byo-models"))
    host = ModelHost(files).start()
    yield host
    host.stop()


@pytest.fixture
def address(target) -> str:
    return capability(target.model_host_address)


def release_on_vms(target, settings) -> None:
    """Cases past the first two cost minutes each in a TCG guest: the ci profile runs them on the
    local target (seconds each), the release profile everywhere."""
    if target.boots_image and settings.profile != "release":
        not_applicable("a reconfiguration of a booted image per case: the ci profile runs it on the local target")


@pytest.mark.budget(600)
def test_model_fetched_by_url_is_served(target, model_host, address, record):
    record(model_source.model_by_url_served(target, model_host, address))


@pytest.mark.release
@pytest.mark.budget(600)
def test_chat_template_given_for_a_model_without_one(target, model_host, address, record):
    template = (REPO / "artifacts" / "chat_templates" / "chatml-tools.jinja").read_bytes()
    record(model_source.model_by_url_served(
        target, model_host, address, name=NO_TEMPLATE,
        extra={"ONEAPP_SLM_MODEL_CHAT_TEMPLATE": base64.b64encode(template).decode()}))


@pytest.mark.parametrize("case", list(model_source.BAD_SOURCES))
@pytest.mark.budget(600)
def test_bad_model_refused_and_the_last_good_keeps_serving(target, settings, model_host, address, case, record):
    if case != "wrong_hash":
        release_on_vms(target, settings)
    record(model_source.bad_case_refused(target, model_host, address, case))


@pytest.mark.budget(900)
def test_interrupted_download_resumes(target, settings, model_host, address, record):
    release_on_vms(target, settings)
    record(model_source.download_resumes(target, model_host, address))


@pytest.mark.target("vm")
@pytest.mark.release
@pytest.mark.budget(1500)
def test_first_boot_answers_503_while_its_model_downloads(platform, settings, model_host, record):
    """A VM whose first boot fetches its model: meanwhile clients get 503, Retry-After and the
    reason through TLS (not a refused connection); then the fetched model serves."""
    record(model_source.first_boot_notice(platform, REPO / settings.image, model_host))
