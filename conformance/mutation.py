"""The project's mutation score: does the gate catch defects nobody wrote a check for?

    python -m conformance.mutation [--profile ci|release] [--only NAME ...] [--vm]   (./dev -s mutants)

Each mutant is one small edit of appliance/ (a template or the script), written the way a bad day
produces them (a typo'd flag, a line dropped while refactoring, a hurried "fix"), with the property
it breaks. Each is applied alone to a copy of the appliance, and the local suite runs against it
with -x (the negative controls left out: they break stacks on purpose). A mutant that makes some
check fail is killed; one that passes every check survives. Equivalent mutants change nothing a
client or the host can observe; the header says why, and they must survive (a check that kills one
is flaky or judges an implementation detail). Host-side mutants (file modes, what the engine
listens on, the lifecycle: bootstrap, first boot, renewal, log rotation, key rotation) cannot show on
the local target: with --vm the image is booted once, each is applied to the appliance installed in
it, the context hook re-run (as a context update would), and the host checks run against it as a
deployed appliance (a lifecycle mutant: the destructive checks it names, the VM being a throwaway);
then the original is put back.

The report (reports/mutants.{json,md}) says for each: killed / survived / equivalent, the check
that killed it, the time. The release profile fails on any survivor, any killed equivalent, and
host-side mutants left unjudged (run it with --vm).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from artifacts.cache import heavy_job

from .support import REPO


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # under appliance/
    find: str
    replace: str
    breaks: str  # the property it breaks, or why it is equivalent
    equivalent: bool = False
    host_side: bool = False  # invisible on the local target; the vm target's host checks judge it
    checks: str = ""  # host-side: the destructive checks (pytest -k) that judge it, on the throwaway VM
    installed: str = ""  # where `service install` put the file in the image, if configure does not read it


MUTANTS = [
    Mutant("basic_user_taken_as_key", "templates/auth.js", "decoded.slice(colon + 1)", "decoded.slice(0, colon)",
           "Basic auth checks the user name instead of the password: any password passes with the key as user"),
    Mutant("bearer_scheme_case_sensitive", "templates/auth.js", "/^(Bearer|Basic)[ ]+([^ ]+)[ ]*$/i",
           "/^(Bearer|Basic)[ ]+([^ ]+)[ ]*$/", "'bearer KEY' (a valid spelling, RFC 7235) is refused"),
    Mutant("models_left_public", "templates/nginx.conf",
           "location = /v1/models {\n        include ${SLM_CONF_DIR}/protected.conf;\n",
           "location = /v1/models {\n", "/v1/models answers without the key"),
    Mutant("preflight_without_authorization", "templates/headers.conf", '"Authorization, Content-Type,',
           '"Content-Type,', "browsers may not send the key: the preflight no longer allows the header"),
    Mutant("responses_api_dropped", "templates/nginx.conf", "|completions|responses|", "|completions|",
           "the OpenAI Responses API (Codex CLI) answers 404"),
    Mutant("anthropic_cache_left_out_of_usage", "templates/auth.js",
           "['input_tokens', 'cache_read_input_tokens', 'cache_creation_input_tokens']", "['input_tokens']",
           "a key's logged prompt tokens leave out what Anthropic clients had cached"),
    Mutant("anthropic_key_header_ignored", "templates/auth.js", "r.headersIn['X-Api-Key']",
           "r.headersIn['X-Anthropic-Key']", "the anthropic SDK's x-api-key is refused: Messages clients get 401"),
    Mutant("tool_template_not_served", "service.d/appliance.sh",
           'template=" --chat-template-file ${SLM_APP_DIR}/models/${MODEL_CHAT_TEMPLATE}"', 'template=""',
           "the model's own template is served: requests with tools silently get plain text"),
    Mutant("temperature_hard_coded", "service.d/appliance.sh", "--temp ${ONEAPP_SLM_TEMPERATURE}", "--temp 0.8",
           "ONEAPP_SLM_TEMPERATURE is not what the engine samples with"),
    Mutant("default_answer_length_dropped", "service.d/appliance.sh", "--n-predict $(max_tokens) ", "",
           "a request without max_tokens runs until the context is full, whatever ONEAPP_SLM_MAX_TOKENS says"),
    Mutant("model_alias_dropped", "service.d/appliance.sh", "--alias ${MODEL_ID} ", "",
           "the model is served under its file name, not the id the report promises"),
    Mutant("context_split_per_slot", "service.d/appliance.sh", "--kv-unified ", "",
           "each request gets the context divided by the slots, not the configured size"),
    Mutant("tls11_allowed", "templates/nginx.conf", "ssl_protocols TLSv1.2 TLSv1.3;",
           "ssl_protocols TLSv1.1 TLSv1.2 TLSv1.3; ssl_ciphers DEFAULT:@SECLEVEL=0;",
           "a deprecated TLS version is offered (an old client's 'compatibility fix')"),
    Mutant("engine_cors_passed_through", "templates/proxy.conf", "proxy_hide_header Access-Control-Allow-Origin;\n",
           "", "proxied answers carry two Access-Control-Allow-Origin headers (browsers reject them)"),
    Mutant("bare_502_when_engine_down", "templates/nginx.conf", "    error_page 502 504 = @engine_unavailable;\n",
           "", "clients get nginx's bare 502 page instead of a JSON 503 with Retry-After"),
    Mutant("retry_after_dropped", "templates/headers.conf", "add_header Retry-After $slm_retry_after always;\n",
           "", "a 503 no longer tells clients when to retry"),
    Mutant("www_authenticate_dropped", "templates/headers.conf",
           "add_header WWW-Authenticate $slm_www_authenticate always;\n", "", "a 401 names no scheme (RFC 9110)"),
    Mutant("body_limit_raised", "service.d/appliance.sh", "SLM_BODY_LIMIT=8m", "SLM_BODY_LIMIT=512m",
           "a client can post half a gigabyte to the engine"),
    Mutant("completions_location_dropped", "templates/nginx.conf", "(chat/completions|completions|responses",
           "(chat/completions|responses", "/v1/completions (autocomplete, FIM) answers 404"),
    Mutant("stream_buffered", "templates/proxy.conf", "proxy_buffering off;",
           "proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;", "SSE tokens arrive in bursts"),
    Mutant("redirect_to_http", "templates/nginx.conf", "return 301 https://$host", "return 301 http://$host",
           "port 80 redirects to itself: clients never reach TLS"),
    Mutant("engine_runs_as_root", "templates/slm-copilot-engine.service", "User=slm-copilot\n", "",
           "the engine (parsing untrusted prompts) runs as root; its exposure score barely moves (1.2 to 1.6)"),
    Mutant("key_guessing_unlimited", "templates/nginx.conf",
           "        limit_req zone=slm_auth_fail burst=20 nodelay;\n", "",
           "wrong keys are answered 401 as fast as a client sends them: unthrottled guessing"),
    Mutant("health_unlimited", "templates/nginx.conf",
           "        limit_req zone=slm_health burst=${SLM_RATE_BURST} nodelay;\n", "",
           "the public /health takes any request rate (and logs every one)"),
    Mutant("health_waits_for_a_frozen_engine", "templates/nginx.conf",
           "proxy.conf;\n        proxy_read_timeout 10s;\n    }\n    location = /v1/models {",
           "proxy.conf;\n    }\n    location = /v1/models {",
           "/health of a frozen engine waits a minute (nginx's default) instead of answering 503 at once"),
    Mutant("nginx_debug_level_passed_through", "service.d/appliance.sh", "debug) level=info ;;",
           "debug) level=debug ;;", "ONEAPP_SLM_LOG_LEVEL=debug writes the API key into nginx's error log"),
    Mutant("log_dir_world_readable", "service.d/appliance.sh", 'install -d -m 0750 "$SLM_LOG_DIR"',
           'install -d -m 0755 "$SLM_LOG_DIR"', "every local user reads who asked what, when", host_side=True),
    Mutant("secret_conf_world_readable", "service.d/appliance.sh", 'chmod 0600 "$stage/secret.conf"',
           'chmod 0644 "$stage/secret.conf"', "nginx's copy of the key is readable by every user", host_side=True),
    Mutant("engine_on_every_address", "service.d/appliance.sh", '"--host 127.0.0.1 --port', '"--host 0.0.0.0 --port',
           "the engine (no TLS, its own key) is reachable from the network", host_side=True),
    Mutant("prompt_cache_left_to_the_engine", "service.d/appliance.sh", "--cache-ram ${cache_mb} ", "",
           "the engine keeps idle sessions in up to 8 GiB of RAM whatever the VM has: a busy team runs it out "
           "of memory", host_side=True),
    # What only the lifecycle shows: judged by the destructive checks, each on the booted image.
    Mutant("dead_engine_only_warned", "service.d/appliance.sh", "    if ! wait_engine; then",
           '    wait_engine || msg warning "The engine does not answer yet"\n    if false; then',
           "bootstrap reports success, READY and a 'ready to serve' banner while the engine cannot start",
           host_side=True, checks="bootstrap_fails_when_the_engine_cannot_start"),
    Mutant("site_linked_after_its_test", "service.d/appliance.sh",
           '    [ -n "$SLM_ROOT" ] || ln -sfn "${SLM_CONF_DIR}/nginx.conf" "$SLM_NGINX_SITE"\n'
           '    if [ -z "$SLM_ROOT" ] && ! nginx -t -q 2>&1; then',
           '    if [ -z "$SLM_ROOT" ] && ! nginx -t -q 2>&1; then',
           "a first boot tests nginx without the site: a configuration nginx rejects is linked, then fails",
           host_side=True, checks="first_configure_refuses_a_site_nginx_rejects"),
    Mutant("renewed_certificate_not_reloaded", "service.d/appliance.sh",
           'valid until $(cert_end -in "${SLM_TLS_DIR}/active.crt")"\n'
           '        [ -n "$SLM_ROOT" ] || systemctl reload nginx\n',
           'valid until $(cert_end -in "${SLM_TLS_DIR}/active.crt")"\n',
           "the renewed certificate is written but nginx serves the old one to its end",
           host_side=True, checks="expiring_certificate_renewed_and_served"),
    Mutant("rotated_log_not_reopened", "templates/logrotate.conf",
           "systemctl kill --kill-whom=main --signal=USR1 nginx.service", "true",
           "after a rotation nginx writes on into the rotated file: the new access.log stays empty",
           host_side=True, checks="logs_rotate_and_nginx_writes_the_new_file",
           installed="/etc/logrotate.d/slm-copilot"),
    Mutant("keys_applied_by_restart", "service.d/appliance.sh", "    systemctl reload-or-restart nginx\n    sleep 1",
           "    systemctl restart nginx\n    sleep 1", "a key rotation restarts nginx: every stream in flight is cut",
           host_side=True, checks="key_rotation_keeps_other_keys_and_streams"),
    # Equivalent: nothing a client or the host can observe changes.
    Mutant("header_value_quoted", "templates/headers.conf",
           'add_header X-Content-Type-Options nosniff always;\n',
           'add_header X-Content-Type-Options "nosniff" always;\n',
           "quoting a constant nginx value: the same header bytes on the wire", equivalent=True),
    Mutant("tls11_listed_only", "templates/nginx.conf", "ssl_protocols TLSv1.2 TLSv1.3;",
           "ssl_protocols TLSv1.1 TLSv1.2 TLSv1.3;",
           "OpenSSL 3 (bookworm) serves TLS 1.1 only at security level 0: listed alone it is still refused "
           "(the check offers it at level 0 and gets no handshake)", equivalent=True),
    Mutant("model_hash_not_verified", "service.d/appliance.sh", '    if [ "$actual" != "$sum" ]; then',
           "    if false; then", "a downloaded model is served whatever its sha256: nothing verifies it"),
    Mutant("download_restarted_not_resumed", "service.d/appliance.sh", "--continue-at - ", "",
           "a download cut by a reboot starts over from the first byte"),
    Mutant("model_without_template_accepted", "service.d/appliance.sh",
           '    if [ "$MODEL_HAS_CHAT_TEMPLATE" != 1 ] && [ -z "$ONEAPP_SLM_MODEL_CHAT_TEMPLATE" ]; then',
           "    if false; then", "a model with no chat template and no override replaces the one serving"),
    Mutant("fetched_model_not_served", "service.d/appliance.sh", "--model ${SLM_MODEL_FILE} ",
           "--model ${SLM_APP_DIR}/models/model.gguf ", "the built-in model serves under the fetched model's id"),
    Mutant("model_not_tried_by_the_engine", "service.d/appliance.sh", " || ! validate_fit || ! trial_engine; then",
           " || ! validate_fit; then", "a model whose header reads well but the engine cannot load replaces the one "
           "serving: the appliance stops serving"),
    Mutant("template_not_tried_by_the_engine", "service.d/appliance.sh",
           '    [ -n "${ONEAPP_SLM_MODEL_URL}${ONEAPP_SLM_MODEL_CHAT_TEMPLATE}" ] || return 0',
           '    [ -n "${ONEAPP_SLM_MODEL_URL}" ] || return 0',
           "a chat template the engine cannot parse replaces the built-in model's: the appliance stops serving"),
    Mutant("upstream_host_header_dropped", "templates/proxy.conf", "proxy_set_header Host $host;\n", "",
           "llama-server ignores the Host header: every answer is byte-identical", equivalent=True),
]


def mutated_appliance(mutant: Mutant, into: Path) -> Path:
    """appliance/ copied into `into` with the mutant applied (the original is never touched)."""
    shutil.copytree(REPO / "appliance", into / "appliance", ignore=shutil.ignore_patterns("__pycache__"))
    target = into / "appliance" / mutant.file
    text = target.read_text()
    if text.count(mutant.find) != 1:
        raise ValueError(f"mutant {mutant.name}: {mutant.find!r} is not once in appliance/{mutant.file}: update it")
    target.write_text(text.replace(mutant.find, mutant.replace))
    return into / "appliance"


def appliance_copy(mutant: Mutant, into: Path) -> Path:
    """A copy of the suite and the appliance with the mutant applied."""
    for package in ("conformance", "vm_fixtures"):
        shutil.copytree(REPO / package, into / package, ignore=shutil.ignore_patterns("__pycache__"))
    for shared in ("build", "packer", "artifacts", "pyproject.toml"):
        (into / shared).symlink_to(REPO / shared)
    mutated_appliance(mutant, into)
    return into


def first_failure(results: Path) -> str:
    """The claim that failed first, from the suite's own JSON report."""
    if not results.exists():
        return ""
    failed = [r for r in json.loads(results.read_text())["results"] if r["outcome"] in ("failed", "error")]
    return failed[0]["claim"] if failed else ""


def verdict(mutant: Mutant, returncode: int) -> str:
    """From pytest's exit status: 1 some check failed, 0 every check passed, else the suite broke."""
    if returncode not in (0, 1):
        return f"error {returncode}"
    killed = returncode == 1
    if mutant.equivalent:
        return "equivalent, KILLED" if killed else "equivalent"
    return "killed" if killed else "SURVIVED"


def run_mutant(mutant: Mutant) -> dict:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"slm-mutant-{mutant.name}-") as tmp:
        suite = appliance_copy(mutant, Path(tmp))
        reports = Path(tmp) / "reports"
        env = {**os.environ, "PYTHONPATH": str(suite), "SLM_CONFORMANCE_REPORTS_DIR": str(reports)}
        run = subprocess.run([sys.executable, "-m", "pytest", "conformance", "--target", "local", "--profile", "ci",
                              "-x", "-q", "-m", "not negative_control", "-p", "no:cacheprovider"],
                             cwd=suite, env=env, capture_output=True, text=True, timeout=1800)
        killer = first_failure(reports / "results-local.json")
    if run.returncode not in (0, 1):
        raise RuntimeError(f"mutant {mutant.name}: the suite itself failed ({run.returncode}):\n{run.stdout[-2000:]}")
    return {**asdict(mutant), "verdict": verdict(mutant, run.returncode), "killed_by": killer,
            "seconds": round(time.monotonic() - started, 1)}


INSTALLED = "/etc/one-appliance"  # where packer/provision.sh installs appliance/ in the image


def run_host_mutants(mutants: list[Mutant]) -> list[dict]:
    """Each host-side mutant on one booted image: mutate the installed appliance, re-run the context
    hook, run the host checks as against a deployed appliance (or, for a lifecycle mutant, its
    destructive checks on this throwaway VM), restore."""
    from vm_fixtures import Guest, LibvirtPlatform
    from vm_fixtures.__main__ import url_target_env

    from .settings import Settings

    results = []
    platform = LibvirtPlatform()
    platform.reap()
    with platform.booted(REPO / Settings().image, "qemu64") as vm, tempfile.TemporaryDirectory() as tmp:
        for mutant in mutants:
            started, path = time.monotonic(), mutant.installed or f"{INSTALLED}/{mutant.file}"
            original = vm.read_file(path)
            if original.count(mutant.find) != 1:
                raise ValueError(f"mutant {mutant.name}: not once in the image's {path}")
            vm.execute(f"cat > {path}", stdin=original.replace(mutant.find, mutant.replace))
            try:
                Guest.reconfigure(vm, vm.context, expect_ready=False)  # in place, as one-context on an update
                reports = Path(tmp) / mutant.name
                env = {**os.environ, **url_target_env(vm), "SLM_CONFORMANCE_REPORTS_DIR": str(reports)}
                select = ["-m", "not destructive"]
                if mutant.checks:
                    env.update(SLM_CONFORMANCE_DESTRUCTIVE="1", SLM_CONFORMANCE_DISPOSABLE="1")
                    select = ["-m", "destructive", "-k", mutant.checks]
                run = subprocess.run([sys.executable, "-m", "pytest", "conformance/test_appliance_host.py", "--target",
                                      "url", "-x", "-q", *select, "-p", "no:cacheprovider"],
                                     cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
                killer = first_failure(reports / "results-url.json")
            finally:
                vm.execute(f"cat > {path}", stdin=original)
                Guest.reconfigure(vm, vm.context)
            results.append({**asdict(mutant), "verdict": verdict(mutant, run.returncode), "killed_by": killer,
                            "seconds": round(time.monotonic() - started, 1)})
            print(f"mutant {mutant.name} (vm): {results[-1]['verdict']} ({killer or '-'}, {results[-1]['seconds']} s)",
                  flush=True)
    return results


def report(results: list[dict], host_side: list[Mutant], out: Path) -> bool:
    judged = [r for r in results if not r["equivalent"]]
    killed = [r for r in judged if r["verdict"] == "killed"]
    # Survivors, killed equivalents and mutants the suite could not judge (errors).
    wrong = [r for r in results if r["verdict"] not in ("killed", "equivalent")]
    score = f"{len(killed)}/{len(judged)}"
    lines = [f"# Mutation score: {score} non-equivalent mutants killed, "
             f"{sum(r['verdict'] == 'equivalent' for r in results)}/{sum(r['equivalent'] for r in results)} "
             "equivalent ones left alone", "", "| mutant | breaks | verdict | killed by | s |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['breaks']} | {r['verdict']} | {r['killed_by'] or '-'} | {r['seconds']} |"
              for r in results]
    if host_side:
        lines += ["", "Host-side, not run (judged on a booted image with --vm):", ""]
        lines += [f"- {m.name}: {m.breaks}" for m in host_side]
    out.mkdir(parents=True, exist_ok=True)
    (out / "mutants.json").write_text(json.dumps({"score": score, "results": results,
                                                  "host_side": [asdict(m) for m in host_side]}, indent=2) + "\n")
    (out / "mutants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return not wrong


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="ci", choices=("ci", "release"),
                        help="release: exit 1 on any survivor or killed equivalent")
    parser.add_argument("--only", nargs="*", help="mutant names")
    parser.add_argument("--vm", action="store_true", help="also the host-side mutants, on the booted image")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    host_side = [m for m in chosen if m.host_side]
    started = time.monotonic()
    results = []
    with heavy_job("mutation run"):
        for mutant in (m for m in chosen if not m.host_side):
            results.append(run_mutant(mutant))
            print(f"mutant {mutant.name}: {results[-1]['verdict']} ({results[-1]['killed_by'] or '-'}, "
                  f"{results[-1]['seconds']} s)", flush=True)
        if args.vm and host_side:
            results += run_host_mutants(host_side)
    unjudged = [] if args.vm else host_side
    ok = report(results, unjudged, REPO / "reports") and not (args.profile == "release" and unjudged)
    print(f"mutation run: {round(time.monotonic() - started)} s")
    return 0 if ok or args.profile == "ci" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
