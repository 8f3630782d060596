"""appliance/ configure stage: rendering, validation, rejection that keeps the last good config."""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.stack import LocalStack
from conformance.support import REPO, exposure_score
from vm_fixtures.layout import layout


def snapshot(stack: LocalStack) -> dict[str, str]:
    out = {}
    for base in ("etc", "var/lib/slm-copilot"):
        for p in sorted((stack.root / base).rglob("*")):
            if p.is_file() and "nginx-local" not in str(p) and p.name != "status":
                out[str(p.relative_to(stack.root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def engine_args(stack: LocalStack) -> dict[str, str]:
    args = stack.engine_args()[1:]
    return {a: (args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else "")
            for i, a in enumerate(args) if a.startswith("--")}


@pytest.fixture
def stack(artifacts, tmp_path):
    return LocalStack(artifacts, root=tmp_path / "root")


def test_defaults_render_and_nginx_accepts(stack):
    stack.configure()
    assert stack.nginx_test().returncode == 0, stack.nginx_test().stderr
    args = engine_args(stack)
    assert args["--host"] == "127.0.0.1"
    assert "--jinja" in args and "--metrics" in args and "--no-slots" in args and "--slot-save-path" not in args
    assert int(args["--ctx-size"]) == 8192  # the model's trained context fits this host's RAM
    assert re.fullmatch(r"sk-[A-Za-z0-9]{48}", stack.api_key)
    for secret in ("/var/lib/slm-copilot/api_key", "/etc/slm-copilot/secret.conf",
                   "/var/lib/slm-copilot/tls/ca.key", "/var/lib/slm-copilot/tls/active.key"):
        assert stack.path(secret).stat().st_mode & 0o077 == 0, f"{secret} readable by others"
    assert (stack.root / "etc/one-appliance/status").read_text().strip() == "configure_success"


def test_tool_template_served_when_the_build_ships_one(stack, artifacts):
    """model.env names a chat template beside the model (the test model has no tool template of its
    own): the engine is told to use it; a model.env without one leaves the model's own."""
    stack.configure()
    served = engine_args(stack).get("--chat-template-file", "")
    assert served.endswith("/models/chat-template.jinja") and Path(served).read_text().count("<tool_call>") >= 2
    env = stack.path(f"{layout().app_dir}/model.env")
    facts = (artifacts / "model.env").read_text()
    env.unlink()  # a symlink to the build's file: replaced, not edited
    env.write_text("".join(line + "\n" for line in facts.splitlines() if not line.startswith("MODEL_CHAT_TEMPLATE=")))
    stack.configure()
    assert "--chat-template-file" not in engine_args(stack)


def test_configure_twice_is_byte_identical(stack):
    stack.configure()
    first = snapshot(stack)
    stack.configure()
    assert snapshot(stack) == first
    assert not list(stack.root.glob("etc/slm-copilot.*")), "staging folders left behind"


def test_rejected_configuration_keeps_the_last_good_one(stack):
    stack.configure()
    good = snapshot(stack)
    stack.context = {"ONEAPP_SLM_THREADS": "lots", "ONEAPP_SLM_API_KEY": "sk-a-new-key-that-is-fine"}
    result = stack.configure(check=False)
    assert result.returncode != 0
    assert "ONEAPP_SLM_THREADS='lots' is invalid" in result.stdout
    assert (stack.root / "etc/one-appliance/status").read_text().strip() == "configure_failure"
    rejected = (stack.root / "etc/one-appliance/config.rejected").read_text()
    assert "the last good configuration keeps serving" in rejected and "ONEAPP_SLM_THREADS" in rejected
    assert "ONEAPP_SLM_THREADS" in (stack.root / "var/log/one-appliance/configure.log").read_text()
    after = {k: v for k, v in snapshot(stack).items() if "config.rejected" not in k}
    assert after == good, "a rejected configuration changed rendered files"


def test_first_boot_with_bad_context_renders_nothing(stack):
    stack.context = {"ONEAPP_SLM_TLS_MODE": "bogus"}
    assert stack.configure(check=False).returncode != 0
    assert not stack.path("/etc/slm-copilot/engine.env").exists()
    assert "nothing is served" in (stack.root / "etc/one-appliance/config.rejected").read_text()


def test_context_size_limits_name_the_numbers(stack):
    stack.context = {"ONEAPP_SLM_CONTEXT_SIZE": "9000"}
    out = stack.configure(check=False)
    assert "ONEAPP_SLM_CONTEXT_SIZE='9000' is invalid" in out.stdout and "8192" in out.stdout
    stack.context = {"ONEAPP_SLM_CONTEXT_SIZE": "8192", "SLM_MEMTOTAL_MB": "1000"}
    out = stack.configure(check=False)
    assert out.returncode != 0 and "1000 MiB RAM" in out.stdout and "at most" in out.stdout, out.stdout
    stack.context = {"SLM_MEMTOTAL_MB": "1000"}  # default: the largest that fits
    stack.configure()
    # 1000 MiB - 93 (model) - 512 - 256 (reserves) = 139 MiB; 23 MiB per 1k tokens: 6144 tokens
    # fit, three quarters of it 4096 (92 MiB), and the prompt cache has the other 47 MiB
    assert int(engine_args(stack)["--ctx-size"]) == 4096
    assert int(engine_args(stack)["--cache-ram"]) == 47


def test_prompt_cache_is_inside_the_memory_budget(stack):
    """The engine's host-memory prompt cache (8 GiB unless told) is sized from what the weights,
    the KV cache and the reserves leave: a VM of any size never promises more than it has."""
    for mem_mb, ctx in (("1536", ""), ("1536", "8192"), ("4096", ""), ("65536", ""), ("1000", "6144")):
        stack.context = {"SLM_MEMTOTAL_MB": mem_mb, "ONEAPP_SLM_CONTEXT_SIZE": ctx}
        stack.configure()
        args = engine_args(stack)
        kv_mb = int(args["--ctx-size"]) * 23040 / 2**20
        cache_mb = int(args["--cache-ram"])
        assert 0 <= cache_mb <= 8192
        assert 93.8 + 512 + 256 + kv_mb + cache_mb <= int(mem_mb), (mem_mb, ctx, args)
        assert f"SLM_PROMPT_CACHE_MB={cache_mb}\n" in stack.path("/etc/slm-copilot/engine.env").read_text()
    assert cache_mb <= 1  # an operator's context that takes all the memory leaves (next to) none


def test_api_key_kept_and_context_key_wins(stack):
    stack.configure()
    generated = stack.api_key
    stack.configure()
    assert stack.api_key == generated
    stack.context = {"ONEAPP_SLM_API_KEY": "sk-operator-chosen-key-0123"}
    stack.configure()
    assert stack.api_key == "sk-operator-chosen-key-0123"
    assert "sk-operator-chosen-key-0123" in stack.path("/etc/slm-copilot/secret.conf").read_text()


def test_certificate_kept_until_the_names_change(stack):
    stack.configure()
    ca, crt = (stack.path(f"/var/lib/slm-copilot/tls/{n}").read_bytes() for n in ("ca.crt", "server.crt"))
    stack.configure()
    assert stack.path("/var/lib/slm-copilot/tls/server.crt").read_bytes() == crt
    assert stack.path("/var/lib/slm-copilot/tls/ca.crt").read_bytes() == ca
    stack.context = {"ONEAPP_SLM_DOMAIN": "copilot.example.com"}
    stack.configure()
    assert stack.path("/var/lib/slm-copilot/tls/server.crt").read_bytes() != crt
    text = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
                           stack.path("/var/lib/slm-copilot/tls/server.crt")], capture_output=True, text=True).stdout
    assert "DNS:copilot.example.com" in text and "IP Address:127.0.0.1" in text and "DNS:localhost" in text


def _pair(tmp: Path, name: str) -> tuple[str, str]:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=custom", "-days", "2", "-keyout", tmp / f"{name}.key", "-out", tmp / f"{name}.crt"],
                   check=True, capture_output=True)
    return tuple(base64.b64encode((tmp / f"{name}.{e}").read_bytes()).decode() for e in ("crt", "key"))


def named_keys(stack: LocalStack) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stack.path("/var/lib/slm-copilot/api_keys").read_text().splitlines())


def test_named_keys_generated_kept_and_removed(stack):
    stack.context = {"ONEAPP_SLM_API_KEYS": "alice, bob:sk-bob-chosen-key-0123"}
    stack.configure()
    keys = named_keys(stack)
    assert keys["bob"] == "sk-bob-chosen-key-0123" and re.fullmatch(r"sk-[A-Za-z0-9]{48}", keys["alice"])
    assert stack.path("/var/lib/slm-copilot/api_keys").stat().st_mode & 0o077 == 0
    secret = stack.path("/etc/slm-copilot/secret.conf").read_text()
    assert "sk-bob-chosen-key-0123" not in secret and keys["alice"] not in secret, "nginx holds digests, not keys"
    for digest in (hashlib.sha256(k.encode()).hexdigest() for k in keys.values()):
        assert digest in secret
    stack.context = {"ONEAPP_SLM_API_KEYS": "alice,carol"}
    stack.configure()
    again = named_keys(stack)
    assert again["alice"] == keys["alice"], "a generated key must survive reconfiguration"
    assert "bob" not in again and again["carol"] != keys["alice"]
    assert hashlib.sha256(b"sk-bob-chosen-key-0123").hexdigest() not in \
        stack.path("/etc/slm-copilot/secret.conf").read_text(), "a removed key is still accepted"


def test_custom_tls_key_must_match(stack, tmp_path):
    cert, key = _pair(tmp_path, "a")
    _, other_key = _pair(tmp_path, "b")
    stack.context = {"ONEAPP_SLM_TLS_MODE": "custom", "ONEAPP_SLM_TLS_CERT": cert, "ONEAPP_SLM_TLS_KEY": other_key}
    out = stack.configure(check=False)
    assert out.returncode != 0 and "ONEAPP_SLM_TLS_KEY" in out.stdout and "does not match" in out.stdout
    stack.context["ONEAPP_SLM_TLS_KEY"] = key
    stack.configure()
    assert stack.path("/var/lib/slm-copilot/tls/active.crt").read_bytes() == (tmp_path / "a.crt").read_bytes()
    assert stack.nginx_test().returncode == 0


def test_engine_unit_sandbox_exposure_at_most_3():
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=30",
                          REPO / "appliance/templates/slm-copilot-engine.service"], capture_output=True, text=True)
    score = exposure_score(out.stdout)
    assert out.returncode == 0 and score <= 3.0, out.stdout[-500:]


def test_nginx_unit_with_the_appliance_drop_in_exposure_at_most_3(tmp_path):
    """Debian's nginx unit (9.6 UNSAFE as shipped) with the appliance's drop-in, judged offline."""
    shipped = Path("/lib/systemd/system/nginx.service").read_text()
    drop_in = [line for line in (REPO / "appliance/templates/nginx-service.conf").read_text().splitlines()
               if line and not line.startswith(("#", "["))]
    unit = tmp_path / "nginx.service"
    unit.write_text(shipped.replace("[Install]", "\n".join(drop_in) + "\n\n[Install]"))
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=100", unit],
                         capture_output=True, text=True)
    score = exposure_score(out.stdout)
    assert score <= 3.0, out.stdout[-1500:]


# --- the parameter space ----------------------------------------------------------------------

VALID = {
    "ONEAPP_SLM_THREADS": st.sampled_from(["0", "1", "2"]),
    "ONEAPP_SLM_PARALLEL": st.integers(1, 16).map(str),
    "ONEAPP_SLM_MAX_TOKENS": st.one_of(st.sampled_from(["", "0", "4096"]), st.integers(1, 1048576).map(str)),
    "ONEAPP_SLM_TEMPERATURE": st.sampled_from(["0", "0.15", "1", "1.5", "2", "2.0", "0.7"]),
    "ONEAPP_SLM_CONTEXT_SIZE": st.one_of(st.just(""), st.integers(512, 8192).map(str)),
    "ONEAPP_SLM_RATE_LIMIT": st.integers(1, 100000).map(str),
    "ONEAPP_SLM_LOG_LEVEL": st.sampled_from(["error", "warn", "info", "debug"]),
    "ONEAPP_SLM_CORS_ORIGINS": st.sampled_from(["*", "https://a.example.com", "http://localhost:3000,https://b.io"]),
    "ONEAPP_SLM_DOMAIN": st.sampled_from(["", "copilot.example.com", "x1.y-2.org"]),
    "ONEAPP_SLM_API_KEY": st.one_of(st.just(""), st.from_regex(r"[A-Za-z0-9._~+/=-]{16,64}", fullmatch=True)),
    "ONEAPP_SLM_API_KEYS": st.sampled_from(["", "alice", "alice,bob:sk-bob-key-0123456789abc", " carol , dave ,"]),
    "ONEAPP_SLM_KEY_RATE_LIMIT": st.integers(1, 1000).map(str),
}
HOSTILE = ["$(touch {m})", "`touch {m}`", "; touch {m}", "x\ntouch {m}", "'; touch {m}; '", '"$(touch {m})"',
           "${{IFS}}touch${{IFS}}{m}", "|touch {m}", "a" * 5000]
INVALID = {
    "ONEAPP_SLM_THREADS": ["-1", "99", "1.5", "two", ""],
    "ONEAPP_SLM_PARALLEL": ["0", "17", "x"],
    "ONEAPP_SLM_MAX_TOKENS": ["-1", "1048577", "4k", "1.5"],
    "ONEAPP_SLM_TEMPERATURE": ["-0.1", "2.5", "hot", "1e3"],
    "ONEAPP_SLM_CONTEXT_SIZE": ["100", "9000", "8k"],
    "ONEAPP_SLM_RATE_LIMIT": ["0", "fast"],
    "ONEAPP_SLM_LOG_LEVEL": ["verbose"],
    "ONEAPP_SLM_TLS_MODE": ["acme"],
    "ONEAPP_SLM_CORS_ORIGINS": ["ftp://x", "https://a.com/path"],
    "ONEAPP_SLM_DOMAIN": ["-bad.example", "a..b"],
    "ONEAPP_SLM_API_KEY": ["short", 'sk-has"quote-0123456789', "sk-has space-0123456789", "sk-dollar$var-0123456"],
    "ONEAPP_SLM_API_KEYS": ["Alice", "alice:short", "alice,alice", "default", "a b", "alice:sk-has space-0123456789",
                            "alice:sk-same-key-0123456789,bob:sk-same-key-0123456789", ":sk-no-id-0123456789ab"],
    "ONEAPP_SLM_KEY_RATE_LIMIT": ["0", "many"],
}
SLOW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SLOW
@given(st.fixed_dictionaries({}, optional=VALID))
def test_every_valid_combination_renders_a_config_nginx_accepts(artifacts, tmp_path_factory, context):
    stack = LocalStack(artifacts, root=tmp_path_factory.mktemp("valid"), context=context)
    stack.configure()
    test = stack.nginx_test()
    assert test.returncode == 0, test.stderr
    args = engine_args(stack)
    assert int(args["--ctx-size"]) >= 512 and int(args["--threads"]) >= 1
    assert args["--parallel"] == str(int(context.get("ONEAPP_SLM_PARALLEL", "2")))
    assert args["--n-predict"] == str(int(context.get("ONEAPP_SLM_MAX_TOKENS") or "4096") or -1)
    assert shlex.split(stack.path("/etc/slm-copilot/engine.env").read_text().partition("=")[2])


@pytest.mark.parametrize("variable,value", [(k, v) for k, vs in INVALID.items() for v in vs])
def test_every_invalid_value_is_rejected_by_name(stack, variable, value):
    stack.context = {variable: value}
    if variable == "ONEAPP_SLM_THREADS" and value == "":
        stack.context = {variable: " "}
    out = stack.configure(check=False)
    assert out.returncode != 0 and f"{variable}=" in out.stdout, out.stdout[-400:]
    if variable == "ONEAPP_SLM_API_KEY":
        assert value not in out.stdout, "the rejected key was echoed to the log"
    if variable == "ONEAPP_SLM_API_KEYS" and ":" in value:
        key = value.split(":", 1)[1].split(",")[0]
        assert key not in out.stdout, "a rejected named key was echoed to the log"


@pytest.mark.parametrize("variable", sorted(INVALID))
@pytest.mark.parametrize("template", HOSTILE)
def test_shell_metacharacters_are_never_executed(stack, tmp_path, variable, template):
    marker = tmp_path / "executed"
    stack.context = {variable: template.format(m=marker)}
    out = stack.configure(check=False)
    assert not marker.exists(), f"{variable} value was executed"
    assert out.returncode != 0 and variable in out.stdout, f"{variable}={template!r} was accepted"


def test_a_stage_waits_for_the_one_running(stack):
    """A context hook re-run while the boot-time stage runs must not render under it: with the lock
    held, configure waits (here for 1 s) and then gives up, saying so, without touching anything."""
    stack.configure()
    before = stack.path("/etc/slm-copilot/engine.env").read_text()
    lock = stack.path("/run/one-appliance/stage.lock")
    holder = subprocess.Popen(["flock", lock, "sleep", "30"])
    try:
        time.sleep(0.5)
        stack.context = {"ONEAPP_SLM_CONTEXT_SIZE": "1024", "ONE_SERVICE_LOCK_WAIT": "1"}
        out = stack.configure(check=False)
    finally:
        holder.kill()
    assert out.returncode != 0 and "Another stage still holds" in out.stdout, out.stdout[-400:]
    assert stack.path("/etc/slm-copilot/engine.env").read_text() == before
    stack.context = {"ONEAPP_SLM_CONTEXT_SIZE": "1024"}
    stack.configure()  # the lock released: the same run goes through
    assert "SLM_CTX=1024" in stack.path("/etc/slm-copilot/engine.env").read_text()
