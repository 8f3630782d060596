"""Negative controls: every check must fail against the defect it exists to catch.

Each builds a local stack from the appliance's own rendered files, breaks one thing, and runs the
same check function the suite runs against every target. Only the local target runs these."""

from __future__ import annotations

import base64
import re
import subprocess
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from . import agent_apis, checks, memory, model_source
from .endpoint import Endpoint
from .mutation import MUTANTS, mutated_appliance
from .stack import LocalStack
from .support import REPO
from .targets import LocalTarget

MUTANTS_BY_NAME = {m.name: m for m in MUTANTS}

# They break a local stack on purpose; the checks they prove are the same code every target runs.
pytestmark = pytest.mark.target("local")


@dataclass
class Defect:
    check: object
    conf: str = ""  # rendered file under /etc/slm-copilot to break, replacing `good` by `broken`
    good: str = ""
    broken: str = ""
    context: dict = field(default_factory=dict)
    engine_down: bool = False
    engine_frozen: bool = False  # SIGSTOP: alive and listening, never answering
    regex: bool = False  # `good` is a regular expression (rendered values vary with the host)
    with_target: bool = False  # the check also takes the target's view of the broken appliance
    template: tuple[str, str] = ()  # (good, broken) in a copy of the served chat template, then served


def served_config(ep: Endpoint, target: LocalTarget) -> dict:
    return checks.served_as_configured(ep, target.configured(), target.engine_props())


def foreign_certificate(tmp) -> dict:
    """A custom certificate that no CA the client trusts has signed."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "2",
                    "-keyout", tmp / "k.pem", "-out", tmp / "c.pem"], check=True, capture_output=True)
    return {"ONEAPP_SLM_TLS_MODE": "custom",
            "ONEAPP_SLM_TLS_CERT": base64.b64encode((tmp / "c.pem").read_bytes()).decode(),
            "ONEAPP_SLM_TLS_KEY": base64.b64encode((tmp / "k.pem").read_bytes()).decode()}


IDE, EVIL = "https://ide.example.com", "https://evil.example.net"
NAMED_KEYS = {"ONEAPP_SLM_API_KEYS": "alice,bob:sk-bob-conformance-0123"}
# The address limit far above the per-key one: only the key's limit can answer 429.
KEY_LIMITED = {**NAMED_KEYS, "ONEAPP_SLM_RATE_LIMIT": "200", "ONEAPP_SLM_KEY_RATE_LIMIT": "2"}
# A small VM as configure sees it (the memory check fills the budget, so it must be small).
SMALL_VM = {"SLM_MEMTOTAL_MB": "1000"}

DEFECTS = {
    # llama-server sends X-Accel-Buffering: no, which alone keeps nginx streaming: ignore it too.
    "buffered_sse": Defect(checks.sse_incremental, "proxy.conf", "proxy_buffering off;",
                           "proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;"),
    "chat_routed_to_wrong_endpoint": Defect(checks.sse_protocol, "proxy.conf", "proxy_pass http://slm_engine;",
                                            "rewrite ^ /v1/completions break; proxy_pass http://slm_engine;"),
    "no_auth": Defect(checks.auth, "protected.conf", "if ($slm_authorized != 1) {", "if ($slm_authorized = never) {"),
    "preflight_needs_auth": Defect(checks.cors_preflight, "protected.conf", "if ($request_method = OPTIONS) {",
                                   "if ($request_method = NEVER) {"),
    "engine_paths_exposed": Defect(checks.allow_list, "nginx.conf", "return 404 '", "proxy_pass http://slm_engine; #'"),
    "no_rate_limit": Defect(checks.rate_limit, "protected.conf", "limit_req zone", "#limit_req zone"),
    "api_served_on_plain_http": Defect(checks.http_redirect, "nginx.conf", "return 301 https://$host",
                                       "proxy_pass http://slm_engine; #"),
    "bare_502_while_engine_down": Defect(checks.engine_unavailable, "nginx.conf",
                                         "error_page 502 504 = @engine_unavailable;", "", engine_down=True),
    "certificate_not_from_appliance_ca": Defect(agent_apis.openai_sdk, context={"foreign_cert": "yes"}),
    # The history does not fit: the engine must refuse (400), and the check must notice.
    "context_too_small": Defect(checks.coherence, context={"ONEAPP_SLM_CONTEXT_SIZE": "512"}),
    # The engine's own prompt-cache limit (8 GiB) on a VM that has 1000 MiB.
    "prompt_cache_unbounded": Defect(memory.prompt_cache_bounded, "engine.env", r"--cache-ram \d+", "--cache-ram 8192",
                                     regex=True, context=SMALL_VM, with_target=True),
    "truncated_key_accepted": Defect(checks.auth_properties, "auth.js", "entry.slice(colon + 1) === d",
                                     "(entry.slice(colon + 1) === d || (r.variables.slm_api_key.startsWith(given[g])"
                                     " && given[g].length >= 8))"),
    "key_case_ignored": Defect(checks.auth_properties, "auth.js", "entry.slice(colon + 1) === d",
                               "(entry.slice(colon + 1) === d || given[g].toLowerCase() === "
                               "r.variables.slm_api_key.toLowerCase())"),
    # 401 without the key as it should, yet nothing works with it.
    "completions_broken_behind_auth": Defect(checks.legacy_completions, "nginx.conf", "|responses|messages)$ {",
                                             "|responses|messages)$ {\n        proxy_method GET;"),
    "engine_cors_headers_passed": Defect(checks.cors_on_responses, "proxy.conf",
                                         "proxy_hide_header Access-Control-Allow-Origin;", ""),
    "engine_echoes_refused_origins": Defect(partial(checks.cors_on_responses, allowed=IDE, refused=EVIL), "proxy.conf",
                                            "proxy_hide_header Access-Control-Allow-Origin;", "",
                                            context={"ONEAPP_SLM_CORS_ORIGINS": IDE}),
    # The engine started with other values than configure decided and the report promises.
    "smaller_context_served": Defect(served_config, "engine.env", r"--ctx-size \d+", "--ctx-size 2048", regex=True,
                                     with_target=True),
    "default_temperature_not_applied": Defect(served_config, "engine.env", r"--temp [0-9.]+ ", "", regex=True,
                                              with_target=True),
    "model_served_under_another_id": Defect(served_config, "engine.env", r"--alias \S+", "--alias coder-7b",
                                            regex=True, with_target=True),
    # nginx at its own debug level logs request and upstream headers, the key among them:
    # ONEAPP_SLM_LOG_LEVEL=debug must not reach nginx as debug.
    "key_logged_at_nginx_debug_level": Defect(checks.key_absent_from_logs, "nginx.conf", r"error\.log \w+;",
                                              "error.log debug;", regex=True,
                                              context={"ONEAPP_SLM_LOG_LEVEL": "debug"}, with_target=True),
    # The generation timeout (an hour) on the status and list endpoints: a frozen engine hangs them.
    "status_waits_for_a_frozen_engine": Defect(checks.frozen_engine, "nginx.conf", r"proxy_read_timeout 10s;",
                                               "proxy_read_timeout 3600s;", regex=True, engine_frozen=True),
    "failed_auth_unlimited": Defect(checks.failed_auth_limited, "nginx.conf", "limit_req zone=slm_auth_fail",
                                    "#limit_req zone=slm_auth_fail"),
    "named_keys_refused": Defect(checks.named_keys_served, "auth.js", "entry.slice(colon + 1) === d",
                                 "entry.slice(colon + 1) === d && entry.slice(0, colon) === 'default'",
                                 context=NAMED_KEYS, with_target=True),
    "key_id_not_logged": Defect(checks.named_keys_served, "nginx.conf", "key=$slm_key_id", "key=-",
                                context=NAMED_KEYS, with_target=True),
    # Usage per key is read from the access log: a front that stops counting leaves "-" there.
    "token_counts_not_logged": Defect(checks.token_counts_logged, "nginx.conf",
                                      "js_body_filter slm_auth.countTokens buffer_type=buffer;", "",
                                      with_target=True),
    "no_per_key_limit": Defect(checks.per_key_limit, "protected.conf", "limit_req zone=slm_key",
                               "#limit_req zone=slm_key", context=KEY_LIMITED, with_target=True),
    "health_unlimited": Defect(checks.health_limited, "nginx.conf", "limit_req zone=slm_health",
                               "#limit_req zone=slm_health"),
    "key_logged_as_basic_user": Defect(checks.key_absent_from_logs, "nginx.conf", "/access.log slm_access;",
                                       "/access.log;", with_target=True),
    "metrics_routed_to_the_model_list": Defect(checks.models_and_metrics, "nginx.conf", "location = /metrics {",
                                               "location = /metrics {\n        rewrite ^ /v1/models break;"),
    # The APIs of Codex (Responses) and Claude Code (Messages) left out of the front's allow-list.
    "responses_not_routed": Defect(agent_apis.responses_stream, "nginx.conf", "completions|responses|messages)$",
                                   "completions|messages)$"),
    "messages_not_routed": Defect(agent_apis.messages_stream, "nginx.conf", "|responses|messages)$",
                                  "|responses)$"),
    "count_tokens_not_routed": Defect(agent_apis.count_tokens, "nginx.conf", "location = /v1/messages/count_tokens {",
                                      "location = /v1/messages/count_tokens_ {"),
    "x_api_key_ignored": Defect(agent_apis.anthropic_auth, "auth.js", "const apiKey = r.headersIn['X-Api-Key'];",
                                "const apiKey = null;"),
    "anthropic_401_in_openai_shape": Defect(agent_apis.anthropic_auth, "auth.js", "const anthropic = /",
                                            "const anthropic = false && /"),
    # The model's own template (no tools): the engine drops `tools` and answers in plain text.
    "chat_tools_dropped": Defect(agent_apis.tool_calls_chat, "engine.env", r" --chat-template-file \S+", "",
                                 regex=True),
    "responses_tools_dropped": Defect(agent_apis.tool_calls_responses, "engine.env", r" --chat-template-file \S+",
                                      "", regex=True),
    "messages_tools_dropped": Defect(agent_apis.tool_calls_messages, "engine.env", r" --chat-template-file \S+", "",
                                     regex=True),
    # A template that skips what it does not know: the agent's tool results never reach the model.
    "tool_results_dropped_by_the_template": Defect(agent_apis.tool_results_accepted,
                                                   template=("<tool_response>\n{{ text(message.content) }}\n", "")),
    # The engine's own list, as it was: no context_length, no word on tools.
    "model_list_silent_on_tools": Defect(agent_apis.models_list_capabilities, "nginx.conf",
                                         "js_content slm_models.listing;", "rewrite ^ /_slm_engine/v1/models last;"),
    # A list that says the opposite of what the served template does.
    "model_list_denies_tools": Defect(agent_apis.models_list_capabilities, "models.js",
                                      "caps.supports_tool_calls === true", "caps.supports_tool_calls !== true"),
    "anthropic_sdk_certificate_not_from_appliance_ca": Defect(agent_apis.anthropic_sdk,
                                                              context={"foreign_cert": "yes"}),
    "legacy_tls_allowed": Defect(checks.tls_versions, "nginx.conf", "ssl_protocols TLSv1.2 TLSv1.3;",
                                 "ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3; ssl_ciphers DEFAULT:@SECLEVEL=0;"),
}


def serve_broken_template(stack: LocalStack, good: str, broken: str) -> None:
    """The engine serves a copy of its chat template with one edit."""
    env = stack.path("/etc/slm-copilot/engine.env")
    served = re.search(r"--chat-template-file (\S+)", env.read_text()).group(1)
    copy = stack.path("/etc/slm-copilot/broken-template.jinja")
    text = Path(served).read_text()
    assert good in text, f"the served chat template no longer contains {good!r}: update this control"
    copy.write_text(text.replace(good, broken))
    env.write_text(env.read_text().replace(served, str(copy)))


@pytest.mark.negative_control
@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_negative_control(settings, endpoint, name, tmp_path, record):
    defect = DEFECTS[name]
    context = foreign_certificate(tmp_path) if defect.context.get("foreign_cert") else dict(defect.context)
    stack = LocalStack(REPO / settings.artifacts, context=context)
    stack.configure()
    if defect.conf:
        path = stack.path(f"/etc/slm-copilot/{defect.conf}")
        text = path.read_text()
        found = re.search(defect.good, text) if defect.regex else defect.good in text
        assert found, f"{defect.conf} no longer contains {defect.good!r}: update this control"
        path.write_text(re.sub(defect.good, defect.broken, text, count=1) if defect.regex
                        else text.replace(defect.good, defect.broken))
    if defect.template:
        serve_broken_template(stack, *defect.template)
    stack.start_engine()
    stack.start_nginx()
    if defect.engine_down:
        stack.stop_engine()
    target = LocalTarget.around(stack, settings)
    if defect.engine_frozen:
        target.signal_engine("SIGSTOP")
    try:
        with pytest.raises(AssertionError) as caught:
            ep = Endpoint.of_stack(stack, speed=endpoint.speed)
            defect.check(ep, target) if defect.with_target else defect.check(ep)
        record({"caught": str(caught.value).splitlines()[0][:120]})
    finally:
        if defect.engine_frozen:
            target.signal_engine("SIGCONT")
        stack.stop()


@pytest.mark.negative_control
def test_equivalence_check_catches_a_perturbed_model(settings, native_references, tmp_path, record):
    """The same engine and variant serving the model with one norm scaled by 2% (written with the
    gguf package): the equivalence check must fail on it."""
    from .equivalence import ReferenceEngine, assert_equivalent, host_variants, perturbed_model, profile

    artifacts = REPO / settings.artifacts
    variant = host_variants()[-1]
    model = perturbed_model(artifacts / "model.gguf", tmp_path / "perturbed.gguf", scale=1.02)
    with ReferenceEngine(artifacts / "engine", model, variant) as engine:
        served = profile(engine.base_url)
    with pytest.raises(AssertionError, match=f"against the native {variant} reference") as caught:
        assert_equivalent(served, native_references, variant)
    record({"caught": str(caught.value).splitlines()[0][:160]})


@pytest.mark.parametrize("context,check", [({"ONEAPP_SLM_LOG_LEVEL": "debug"}, checks.key_absent_from_logs),
                                           (NAMED_KEYS, checks.named_keys_served),
                                           (KEY_LIMITED, checks.per_key_limit),
                                           (SMALL_VM, memory.prompt_cache_bounded)],
                         ids=["debug_log_level_keeps_the_key_out_of_logs", "named_keys_served_and_logged_by_id",
                              "per_key_limit_spares_other_keys", "prompt_cache_inside_a_small_vms_budget"])
def test_configured_stack_passes(settings, endpoint, record, context, check):
    """Checks that need the appliance configured otherwise than the suite's own stack, run on one
    that is: the twins of key_logged_at_nginx_debug_level (debug, every request kind sent, no log
    holds the key), named_keys_refused, key_id_not_logged and no_per_key_limit."""
    stack = LocalStack(REPO / settings.artifacts, context=context)
    stack.start()
    try:
        record(check(Endpoint.of_stack(stack, speed=endpoint.speed), LocalTarget.around(stack, settings)))
    finally:
        stack.stop()


def test_cors_origin_list_holds_on_proxied_responses(settings, endpoint, record):
    """With ONEAPP_SLM_CORS_ORIGINS set, proxied answers name the allowed origin and never a refused
    one (the twin of engine_echoes_refused_origins)."""
    stack = LocalStack(REPO / settings.artifacts, context={"ONEAPP_SLM_CORS_ORIGINS": IDE})
    stack.start()
    try:
        record(checks.cors_on_responses(Endpoint.of_stack(stack, speed=endpoint.speed), allowed=IDE, refused=EVIL))
    finally:
        stack.stop()


def test_model_without_tools_is_listed_without_them(settings, endpoint, record):
    """The twin of model_list_denies_tools: served with its own template (no tools), the model is
    listed without them, so an agent is told rather than having its tools dropped in silence."""
    stack = LocalStack(REPO / settings.artifacts)
    stack.configure()
    env = stack.path("/etc/slm-copilot/engine.env")
    env.write_text(re.sub(r" --chat-template-file \S+", "", env.read_text()))
    stack.start_engine()
    stack.start_nginx()
    try:
        figures = agent_apis.models_list_capabilities(Endpoint.of_stack(stack, speed=endpoint.speed))
        assert figures["tools"] is False, figures
        record(figures)
    finally:
        stack.stop()


# The model-by-URL checks against appliances with the defect each exists to catch (mutants of the
# mutation run, applied to a copy of appliance/ that a stack of its own configures).
MODEL_SOURCE_CONTROLS = {
    "model_hash_not_verified": lambda t, h, a: model_source.bad_case_refused(t, h, a, "wrong_hash"),
    "model_without_template_accepted": lambda t, h, a: model_source.bad_case_refused(t, h, a, "no_chat_template"),
    "model_not_tried_by_the_engine": lambda t, h, a: model_source.bad_case_refused(t, h, a, "engine_cannot_load"),
    "template_not_tried_by_the_engine": lambda t, h, a: model_source.bad_case_refused(t, h, a,
                                                                                       "template_does_not_parse"),
    "fetched_model_not_served": model_source.model_by_url_served,
    "download_restarted_not_resumed": model_source.download_resumes,
}


@pytest.fixture(scope="module")
def model_host(settings, tmp_path_factory):
    files = model_source.derive_models(REPO / settings.artifacts / "model.gguf", tmp_path_factory.mktemp("models"))
    host = model_source.ModelHost(files).start()
    yield host
    host.stop()


@pytest.mark.negative_control
@pytest.mark.parametrize("mutant", list(MODEL_SOURCE_CONTROLS))
def test_model_source_check_catches(settings, endpoint, model_host, tmp_path, mutant, record):
    """Each model-by-URL check fails on an appliance with the defect it exists to catch."""
    appliance = mutated_appliance(MUTANTS_BY_NAME[mutant], tmp_path)
    stack = LocalStack(REPO / settings.artifacts, service=appliance / "service.sh").start()
    try:
        with pytest.raises(AssertionError) as caught:
            MODEL_SOURCE_CONTROLS[mutant](LocalTarget.around(stack, settings), model_host, "127.0.0.1")
        record({"caught": str(caught.value).splitlines()[0][:160]})
    finally:
        stack.stop()
