"""Throughput and latency through the appliance; ratios taken within this run."""

from __future__ import annotations

import pytest

from conformance.stack import LocalStack

from . import gate
from .conftest import direct, proxied
from .measure import concurrent, interleaved_ratio, one_request, summarize

MAX_TOKENS = 64


def test_single_stream(benchmark, endpoint, results, itl_samples, rounds):
    samples = []

    def run():
        samples.append(one_request(endpoint, MAX_TOKENS))

    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    samples = samples[1:]  # the warm-up loads caches and pages in the model
    results["single"] = summarize(samples)
    itl_samples.extend(g for s in samples for g in s.itl_s)
    benchmark.extra_info.update({k: v.get("p50") if isinstance(v, dict) else v for k, v in results["single"].items()})


@pytest.mark.parametrize("streams", [1, 2, 4])
def test_concurrency(endpoint, results, streams):
    results.setdefault("concurrency", {})[str(streams)] = concurrent(endpoint, streams, MAX_TOKENS)


def test_proxy_overhead(local_stack, results, rounds):
    """nginx + TLS + auth against llama-server directly, A/B/A/B; ratio = proxied / direct."""
    a, b = proxied(local_stack), direct(local_stack)
    results["proxy_overhead"] = {
        "decode": interleaved_ratio(a, b, rounds, MAX_TOKENS, "client_decode_tps"),
        "ttft": interleaved_ratio(a, b, rounds, MAX_TOKENS, "ttft_s"),
    }


def test_cpu_variant_penalty(local_stack, baseline_stack, results, rounds):
    """Natively, the best variant this host loads against the baseline x64 variant (qemu64's)."""
    ratio = interleaved_ratio(direct(local_stack), direct(baseline_stack), rounds, MAX_TOKENS, "engine_decode_tps")
    results["cpu_variant"] = {**ratio, "best": results.get("engine_variant")}


def test_gate_catches_injected_slowdown(local_stack, results, rounds, tmp_path):
    """Negative control: a front that streams 2x+ slower must fail the proxy-ratio gate."""
    slow = LocalStack(local_stack.artifacts)
    slow.configure()
    proxy_conf = slow.path("/etc/slm-copilot/proxy.conf")
    # A front that dribbles the stream at 2 KB/s, about a sixth of its byte rate here (limit_rate
    # applies to buffered proxying only, hence the buffering).
    proxy_conf.write_text(proxy_conf.read_text().replace(
        "proxy_buffering off;", "proxy_buffering on; proxy_ignore_headers X-Accel-Buffering; limit_rate 2k;"))
    slow.start_engine()
    slow.start_nginx()
    try:
        injected = {"proxy_overhead": {
            "decode": interleaved_ratio(proxied(slow), direct(slow), max(2, rounds // 2), MAX_TOKENS,
                                        "client_decode_tps")}}
    finally:
        slow.stop()
    reference = results if "proxy_overhead" in results else (gate.load_baseline() or {})
    assert gate.lookup(reference, ("proxy_overhead", "decode", "ratio_median")), "run test_proxy_overhead first"
    ok, rows = gate.compare(reference, injected)
    assert not ok, f"the gate passed an injected slowdown:\n{gate.table(rows)}"
    results["gate_negative_control"] = {"injected_ratio": injected["proxy_overhead"]["decode"]["ratio_median"]}


@pytest.mark.parametrize("cpu_model", ["qemu64", "host"])
def test_cpu_models(target, heavy, results, cpu_model):
    """The offline image per CPU model. TCG emulates every instruction: emulator figures."""
    if target != "vm":
        pytest.skip(f"not applicable: needs the vm target (this run: {target})")
    from conformance.checks import SHORT_PROMPT, engine_variants
    from conformance.endpoint import Endpoint
    from conformance.settings import Settings
    from vm_fixtures import LibvirtPlatform

    from .conftest import REPO

    platform = LibvirtPlatform()
    platform.reap()
    with platform.booted(REPO / Settings.load(target="vm").image, cpu_model) as vm:
        sample = one_request(Endpoint.of_guest(vm), 8, prompt=SHORT_PROMPT)
        variant = ",".join(engine_variants(vm.engine_proc("maps")))
        ready = vm.ready
    results.setdefault("cpu_models", {})[f"{cpu_model} ({vm.cpu_model})"] = {
        **sample.as_dict(), "variant": variant, "ready_s": ready["ready_s"], "accel": vm.decision.accel}
