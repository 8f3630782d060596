"""The HTTP contract through TLS, against whichever target the run points at."""

import pytest

from . import checks
from .targets import capability


@pytest.mark.core
def test_sse_protocol(endpoint, record):
    record(checks.sse_protocol(endpoint))


def test_sse_incremental_delivery(endpoint, record):
    record(checks.sse_incremental(endpoint))


@pytest.mark.core
def test_auth_bearer_and_basic(endpoint, record):
    record(checks.auth(endpoint))


def test_auth_refuses_every_near_miss_of_the_key(endpoint, record):
    record(checks.auth_properties(endpoint))


def test_models_and_metrics_answer_in_their_formats(endpoint, record):
    record(checks.models_and_metrics(endpoint))


def test_legacy_completions_end_to_end(endpoint, record):
    record(checks.legacy_completions(endpoint))


def test_cors_on_real_responses(endpoint, record):
    record(checks.cors_on_responses(endpoint))


def test_served_configuration_is_the_configured_one(target, endpoint, record):
    configured, props = capability(target.configured), capability(target.engine_props)
    record(checks.served_as_configured(endpoint, configured, props))


@pytest.mark.destructive
def test_default_answer_length_bounds_requests_that_set_none(target, endpoint, record):
    record(checks.default_answer_length(target, endpoint))


@pytest.mark.release
@pytest.mark.budget(600)
def test_long_non_streamed_answer_is_not_cut(endpoint, record):
    record(checks.long_silent_answer(endpoint))


def test_token_counts_in_the_access_log(target, endpoint, record):
    record(capability(lambda: checks.token_counts_logged(endpoint, target)))


def test_allow_list(endpoint, record):
    record(checks.allow_list(endpoint))


def test_cors_preflight(endpoint, record):
    record(checks.cors_preflight(endpoint))


def test_rate_limit_answers_429(endpoint, record):
    record(checks.rate_limit(endpoint))


def test_http_redirects_to_https(endpoint, record):
    record(checks.http_redirect(endpoint))


@pytest.mark.destructive
def test_503_with_retry_after_while_engine_down(target, endpoint, record):
    capability(target.stop_engine)
    try:
        record(checks.engine_unavailable(endpoint))
    finally:
        target.start_engine()


@pytest.mark.destructive
def test_frozen_engine_answers_503_within_seconds(target, endpoint, record):
    capability(lambda: target.signal_engine("SIGSTOP"))
    try:
        record(checks.frozen_engine(endpoint))
    finally:
        target.signal_engine("SIGCONT")
    endpoint.wait_serving(timeout=120)


def test_failed_authentication_is_rate_limited(endpoint, record):
    record(checks.failed_auth_limited(endpoint))


def test_health_is_rate_limited(endpoint, record):
    record(checks.health_limited(endpoint))


def test_tls_legacy_versions_refused(endpoint, record):
    record(checks.tls_versions(endpoint))


def test_three_turn_coherence(endpoint, record):
    record(checks.coherence(endpoint))
