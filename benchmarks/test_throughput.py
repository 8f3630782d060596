"""Throughput and latency through the appliance; ratios taken within this run."""

from __future__ import annotations

import pytest

from conformance.checks import SHORT_PROMPT
from conformance.targets import target_class

from . import gate, machine
from .conftest import SETTINGS, appliance_with, direct, proxied, regression_gate
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
    # A front that dribbles the stream at 2 KB/s, about a sixth of its byte rate here (limit_rate
    # applies to buffered proxying only, hence the buffering).
    dribble = {"proxy.conf": lambda text: text.replace(
        "proxy_buffering off;", "proxy_buffering on; proxy_ignore_headers X-Accel-Buffering; limit_rate 2k;")}
    with appliance_with(local_stack, dribble) as slow:
        injected = {"proxy_overhead": {
            "decode": interleaved_ratio(proxied(slow), direct(slow), max(2, rounds // 2), MAX_TOKENS,
                                        "client_decode_tps")}}
    reference = results if "proxy_overhead" in results else (gate.any_of_target("local", {}) or {})
    assert gate.lookup(reference, ("proxy_overhead", "decode", "ratio_median")), "run test_proxy_overhead first"
    ok, rows = gate.compare(injected, reference)
    assert not ok, f"the gate passed an injected slowdown:\n{gate.table(rows)}"
    results["gate_negative_control"] = {"injected_ratio": injected["proxy_overhead"]["decode"]["ratio_median"]}


def pytest_generate_tests(metafunc):
    if "cpu_model" in metafunc.fixturenames:  # the conformance settings' list (SLM_CONFORMANCE_CPU_MODELS)
        settings = metafunc.config.stash[SETTINGS]
        metafunc.parametrize("cpu_model", settings.cpu_models)


def test_cpu_models(settings, heavy, results, cpu_model):
    """The offline image per CPU model. Under TCG QEMU emulates every instruction: emulator figures."""
    cls = target_class(settings)
    if not cls.per_cpu_model:
        pytest.skip(f"not applicable: needs a per-CPU-model target, the vm target (this run: {settings.target})")
    with cls.sharing(settings) as shared:
        vm = cls(settings, cpu_model, shared)
        vm.announce()
        try:
            vm.start()
            sample = one_request(vm.endpoint, 8, prompt=SHORT_PROMPT)
            variant = machine.loaded_variant(vm.engine_proc("maps"))
        finally:
            vm.stop()
    results.setdefault("cpu_models", {})[f"{cpu_model} ({vm.decision.cpu_mode})"] = {
        **sample.as_dict(), "variant": variant, "ready_s": vm.instance.ready["ready_s"], "accel": vm.decision.accel}


def test_regression_gate(settings, results, machine_context, gate_rows):
    """Last: the throughput figures against the baselines (conftest.regression_gate)."""
    regression_gate(settings, results, gate_rows)
