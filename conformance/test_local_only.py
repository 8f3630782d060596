"""Checks that need to stop or break the appliance: the local target does that cheaply."""

import pytest

from . import checks
from .stack import LocalStack


def test_http_redirects_to_https(local_stack, record):
    record(checks.http_redirect(f"http://127.0.0.1:{local_stack.ports['http']}"))


def test_503_with_retry_after_while_engine_down(settings, local_stack, endpoint, record):
    local_stack.stop_engine()
    try:
        record(checks.engine_unavailable(endpoint))
    finally:
        local_stack.start_engine()


# Negative controls: each check must fail against the defect it exists to catch.
DEFECTS = {
    # llama-server sends X-Accel-Buffering: no, which alone keeps nginx streaming: ignore it too.
    "buffered_sse": (checks.sse_incremental, "proxy.conf",
                     "proxy_buffering off;", "proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;"),
    "no_auth": (checks.auth, "protected.conf", "if ($slm_authorized != 1) {", "if ($slm_authorized = never) {"),
    "preflight_needs_auth": (checks.cors_preflight, "protected.conf",
                             "if ($request_method = OPTIONS) {", "if ($request_method = NEVER) {"),
    "engine_paths_exposed": (checks.allow_list, "nginx.conf", "return 404 '", "proxy_pass http://slm_engine; #'"),
    "no_rate_limit": (checks.rate_limit, "protected.conf", "limit_req zone", "#limit_req zone"),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_negative_control(settings, local_stack, defect, record):
    check, conf, good, broken = DEFECTS[defect]
    stack = LocalStack(local_stack.artifacts)
    stack.configure()
    path = stack.path(f"/etc/slm-copilot/{conf}")
    text = path.read_text()
    assert good in text, f"{conf} no longer contains {good!r}: update this negative control"
    path.write_text(text.replace(good, broken))
    stack.start_engine()
    stack.start_nginx()
    try:
        endpoint = checks.Endpoint(stack.base_url, stack.api_key, stack.ca_file)
        with pytest.raises(AssertionError) as caught:
            check(endpoint)
        record({"caught": str(caught.value).splitlines()[0][:120]})
    finally:
        stack.stop()
