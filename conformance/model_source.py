"""Bring your own model: a second GGUF served from this machine over HTTP for the appliance to
fetch by ONEAPP_SLM_MODEL_URL, and the checks of what it does with good and bad ones.

The models are derived from the baked one with the `gguf` package (PyPI ships no second chat model
small enough for a TCG guest): the same weights under another general.name (so another sha256 and
another id), the same without a chat template, a copy cut in half, and one whose header claims a
layer more than it holds (it reads well; the engine cannot load it). They are served by real
nginx (byte ranges, a throttled path to interrupt a download), which a VM reaches through its
user-mode network's gateway (10.0.2.2 is this machine's loopback).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from gguf import GGUFReader

from artifacts.cache import sha256_file
from vm_fixtures.layout import layout
from vm_fixtures.util import free_port, wait_until

from .endpoint import Endpoint, stream_chat

RENAMED = "smollm2-135m-fetched.gguf"  # the id clients see unless ONEAPP_SLM_MODEL_ID says otherwise
NO_TEMPLATE = "smollm2-135m-no-template.gguf"
CUT = "smollm2-135m-cut.gguf"
UNLOADABLE = "smollm2-135m-unloadable.gguf"
# Throttled paths (bytes/s): /slow/ lasts long enough to interrupt a download once it has begun,
# /slowest/ outlasts a TCG guest's boot (the first-boot notice is looked for while it runs).
RATES = {"slow": "2m", "slowest": "384k"}
PROMPT = [{"role": "user", "content": "Write a Python function that adds two numbers."}]


@dataclass(frozen=True)
class ModelFiles:
    folder: Path
    sha256: dict[str, str]  # file name -> sha256 (the cut file's is the whole file's: what an operator gives)

    def size(self, name: str) -> int:
        return (self.folder / name).stat().st_size


def derive_models(baked: Path, folder: Path) -> ModelFiles:
    """The baked model renamed, the same without a chat template, the renamed one cut in half, and
    the renamed one with a layer too many."""
    folder.mkdir(parents=True, exist_ok=True)
    new_metadata = [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--force"]
    for name, extra in ((RENAMED, ["--general-name", "SmolLM2 135M fetched"]),
                        (NO_TEMPLATE, ["--general-name", "SmolLM2 135M no template",
                                       "--remove-metadata", "tokenizer.chat_template"])):
        if not (folder / name).exists():
            subprocess.run([*new_metadata, *extra, baked, folder / f"{name}.tmp"], check=True,
                           capture_output=True, timeout=600)
            os.replace(folder / f"{name}.tmp", folder / name)
    whole = (folder / RENAMED).read_bytes()
    (folder / CUT).write_bytes(whole[:len(whole) // 2])
    with_a_layer_too_many(folder / RENAMED, folder / UNLOADABLE)
    sums = {name: sha256_file(folder / name) for name in (RENAMED, NO_TEMPLATE, UNLOADABLE)}
    sums[CUT] = sums[RENAMED]
    return ModelFiles(folder, sums)


def with_a_layer_too_many(model: Path, dest: Path) -> None:
    """A copy of `model` whose header claims one block more than its tensors hold: architecture,
    sizes and chat template read as a servable model's, and the engine fails on the missing tensors."""
    shutil.copyfile(model, dest)
    reader = GGUFReader(dest, "r+")
    blocks = reader.fields[f"{reader.fields['general.architecture'].contents()}.block_count"]
    blocks.parts[blocks.data[0]][0] += 1  # in place, through the reader's writable map
    del reader


class ModelHost:
    """Real nginx serving `folder` on 127.0.0.1 (ranges on; /slow/ throttled), with an access log
    that says what each request asked for and what it got."""

    def __init__(self, files: ModelFiles):
        self.files = files
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="slm-model-host-"))
        self.log = self.root / "access.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ModelHost:
        conf = self.root / "nginx.conf"
        conf.write_text(
            f"{'user root;' if os.geteuid() == 0 else ''}\nworker_processes 1;\npid {self.root}/nginx.pid;\n"
            f"error_log {self.root}/error.log warn;\nevents {{ worker_connections 64; }}\n"
            "http {\n"
            + "".join(f"  {k}_temp_path {self.root}/{k};\n" for k in ("client_body", "proxy", "fastcgi"))
            + "  default_type application/octet-stream;\n"
            "  log_format model '$uri $status $bytes_sent \"$http_range\"';\n"
            f"  access_log {self.log} model;\n"
            f"  server {{\n    listen 127.0.0.1:{self.port};\n    root {self.files.folder};\n"
            + "".join(f"    location /{path}/ {{ alias {self.files.folder}/; limit_rate {rate}; }}\n"
                      for path, rate in RATES.items())
            + "  }\n}\n")
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"], stderr=subprocess.PIPE,
                                     start_new_session=True)

        def answering() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.head(f"http://127.0.0.1:{self.port}/{RENAMED}", timeout=2).status_code == 200
            return False

        wait_until(answering, 20, interval=0.2, what="the model host answering")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, name: str, address: str, throttled: str = "") -> str:
        """`throttled`: a key of RATES, or nothing for full speed."""
        return f"http://{address}:{self.port}/{throttled + '/' if throttled else ''}{name}"

    def closed_url(self, address: str) -> str:
        """A URL nothing answers on: a port this machine does not listen on."""
        return f"http://{address}:{free_port()}/{RENAMED}"

    def requests(self, name: str) -> list[dict]:
        """GETs of `name` (any path), in order: status, bytes sent, the Range asked for."""
        out = []
        for line in self.log.read_text().splitlines() if self.log.exists() else []:
            uri, status, sent, rng = line.split(" ", 3)
            if uri.endswith(f"/{name}"):
                out.append({"status": int(status), "bytes": int(sent), "range": rng.strip('"').removeprefix("-")})
        return out


# -- what a client sees -------------------------------------------------------------------------

def served_ids(ep: Endpoint) -> list[str]:
    with ep.client() as client:
        r = client.get("/v1/models")
    assert r.status_code == 200, f"/v1/models: HTTP {r.status_code} {r.text[:200]}"
    return [m["id"] for m in r.json()["data"]]


def answer(ep: Endpoint) -> str:
    """A short greedy answer: the same model gives the same one before and after a refused change."""
    with ep.client() as client:
        r = client.post("/v1/chat/completions", json={"messages": PROMPT, "max_tokens": 8, "temperature": 0,
                                                      "seed": 42})
    assert r.status_code == 200, f"chat: HTTP {r.status_code} {r.text[:200]}"
    return r.json()["choices"][0]["message"]["content"]


def streams(ep: Endpoint, model: str) -> int:
    stream = stream_chat(ep, PROMPT, max_tokens=8, model=model, temperature=0)
    assert stream.status == 200, f"streamed chat with {model}: HTTP {stream.status} {stream.body[:200]}"
    assert stream.events and stream.events[-1][1] == "[DONE]", "the stream did not end with [DONE]"
    pieces = [c["choices"][0]["delta"].get("content") for c in stream.chunks if c.get("choices")]
    assert any(pieces), "no content arrived in the stream"
    named = {c.get("model") for c in stream.chunks}
    assert named == {model}, f"the stream's chunks name {named}, not {model}"
    return len(stream.events)


# -- the checks (the same code on every target; the target applies the context) ---------------------

def model_by_url_served(target, host: ModelHost, address: str, name: str = RENAMED, extra: dict | None = None) -> dict:
    """The URL's model replaces the baked one: listed under its file name, streams, reported with its
    hash; then removing the URL brings the baked model back."""
    ep = target.current_endpoint()
    baked = served_ids(ep)
    sha = host.files.sha256[name]
    started = time.monotonic()
    timings = target.apply_context({"ONEAPP_SLM_MODEL_URL": host.url(name, address),
                                    "ONEAPP_SLM_MODEL_SHA256": sha.upper(), **(extra or {})})  # either case
    switch_s = round(time.monotonic() - started, 1)
    expected = name.removesuffix(".gguf")
    assert served_ids(ep) == [expected], f"served {served_ids(ep)} after the switch, expected [{expected}]"
    events = streams(ep, expected)
    served_file = target.engine_props().get("model_path", "")
    assert served_file.endswith(f"/sha256-{sha}.gguf"), f"the engine serves {served_file}, not the fetched file"
    facts = target.configured()
    assert facts.get("SLM_MODEL_SHA256") == sha and facts.get("SLM_MODEL_ID") == expected, facts
    report = target.report()
    if report is not None:
        assert f"model = {expected}\n" in report and f"model_sha256 = {sha}\n" in report, report[:600]
    fetched = [r for r in host.requests(name) if r["status"] in (200, 206)]
    assert fetched and sum(r["bytes"] for r in fetched) >= host.files.size(name), fetched
    target.apply_context({"ONEAPP_SLM_MODEL_URL": None, "ONEAPP_SLM_MODEL_SHA256": None,
                          **dict.fromkeys(extra or {})})
    assert served_ids(ep) == baked, f"served {served_ids(ep)} once the URL was removed, expected {baked}"
    return {"switch_s": switch_s, **timings, "model": expected, "stream_events": events,
            "mib": round(host.files.size(name) / 1048576, 1)}


def bad_source_refused(target, changes: dict[str, str], variable: str, reason: str) -> dict:
    """A model that must not be served (wrong hash, unreachable, truncated, no template): configure is
    refused with a message naming `variable`, and the model that served keeps serving, unchanged."""
    ep = target.current_endpoint()
    ids, said = served_ids(ep), answer(ep)
    try:
        target.apply_context(changes, expect_ready=False)
        status = target.appliance_file("/etc/one-appliance/status").strip()
        rejected = target.appliance_file(f"{layout().report}.rejected") if status == "configure_failure" else ""
    finally:  # the next check starts from the context this one found
        target.apply_context(dict.fromkeys(changes))
    assert status == "configure_failure", f"status {status!r} after a model that must be refused ({reason})"
    assert f"{variable}=" in rejected and reason in rejected, \
        f"the refusal does not name {variable} ({reason}):\n{rejected}"
    ep.wait_serving(timeout=600, interval=2)
    assert served_ids(ep) == ids, f"after the refusal: {served_ids(ep)}, before: {ids}"
    assert answer(ep) == said, "the model serving after the refusal answers otherwise than before it"
    return {"refused_with": next(line for line in rejected.splitlines() if variable in line)[:160]}


BAD_SOURCES = {  # what the context says -> the variable the refusal names, and what it says
    # A hash of no file the appliance holds (one it holds is served from its store, whatever the URL).
    "wrong_hash": (lambda h, a: {"ONEAPP_SLM_MODEL_URL": h.url(RENAMED, a),
                                 "ONEAPP_SLM_MODEL_SHA256": hashlib.sha256(b"another model").hexdigest()},
                   "ONEAPP_SLM_MODEL_SHA256", "the file at the URL has sha256"),
    "unreachable_url": (lambda h, a: {"ONEAPP_SLM_MODEL_URL": h.closed_url(a),
                                      "ONEAPP_SLM_MODEL_SHA256": h.files.sha256[RENAMED]},
                        "ONEAPP_SLM_MODEL_URL", "unreachable"),
    "file_cut_in_half": (lambda h, a: {"ONEAPP_SLM_MODEL_URL": h.url(CUT, a),
                                       "ONEAPP_SLM_MODEL_SHA256": h.files.sha256[CUT]},
                         "ONEAPP_SLM_MODEL_SHA256", "the file at the URL has sha256"),
    "no_chat_template": (lambda h, a: {"ONEAPP_SLM_MODEL_URL": h.url(NO_TEMPLATE, a),
                                       "ONEAPP_SLM_MODEL_SHA256": h.files.sha256[NO_TEMPLATE]},
                         "ONEAPP_SLM_MODEL_URL", "no chat template"),
    # Its header reads as a servable model's; only the engine's trial load finds it broken.
    "engine_cannot_load": (lambda h, a: {"ONEAPP_SLM_MODEL_URL": h.url(UNLOADABLE, a),
                                         "ONEAPP_SLM_MODEL_SHA256": h.files.sha256[UNLOADABLE]},
                           "ONEAPP_SLM_MODEL_URL", "the engine cannot load this model"),
    # Base64 Jinja with a tag (what validation reads) that does not parse.
    "template_does_not_parse": (lambda h, a: {"ONEAPP_SLM_MODEL_CHAT_TEMPLATE": base64.b64encode(
                                    b"{% for message in messages %}{{ message.content }}").decode()},
                                "ONEAPP_SLM_MODEL_CHAT_TEMPLATE", "the engine cannot use this template"),
}


def bad_case_refused(target, host: ModelHost, address: str, case: str) -> dict:
    """bad_source_refused for one of BAD_SOURCES."""
    changes, variable, reason = BAD_SOURCES[case]
    return bad_source_refused(target, changes(host, address), variable, reason)


def download_resumes(target, host: ModelHost, address: str) -> dict:
    """A download cut by a reboot (or a killed configure) goes on from where it stopped: after the
    interruption the server is asked for the rest only, and the model then serves."""
    sha, size = host.files.sha256[RENAMED], host.files.size(RENAMED)
    part = f"{layout().model_store}/sha256-{sha}.gguf.part"
    before = len(host.requests(RENAMED))
    changes = {"ONEAPP_SLM_MODEL_URL": host.url(RENAMED, address, throttled="slow"), "ONEAPP_SLM_MODEL_SHA256": sha}
    try:
        timings = target.apply_context_interrupted(changes, lambda: target.file_size(part) > size // 4)
        asked = host.requests(RENAMED)[before:]
        assert len(asked) >= 2, f"expected the first download and its resumption, the server saw {asked}"
        after = asked[-1]
        asked_for = after["range"] or "the whole file"
        assert after["range"].startswith("bytes=") and after["status"] == 206, \
            f"the download after the interruption asked for {asked_for} (HTTP {after['status']})"
        assert 0 < after["bytes"] < size, f"{after['bytes']} bytes fetched after the interruption, file {size}"
        assert served_ids(target.current_endpoint()) == [RENAMED.removesuffix(".gguf")]
    finally:
        target.apply_context(dict.fromkeys(changes))
    return {**timings, "bytes_before": size - after["bytes"], "bytes_after": after["bytes"], "size": size}


def first_boot_notice(platform, image: Path, host: ModelHost, cpu_model: str = "qemu64") -> dict:
    sha = host.files.sha256[RENAMED]
    instance = platform.launch(image, cpu_model, {
        "ONEAPP_SLM_MODEL_URL": host.url(RENAMED, "10.0.2.2", throttled="slowest"), "ONEAPP_SLM_MODEL_SHA256": sha})
    seen: dict = {}

    def answered() -> bool:
        """What a client gets once the appliance's CA exists (the suite trusts it, as clients do)."""
        failure = instance.boot_failure()
        if failure:
            raise AssertionError(f"the first boot failed: {failure}")
        ca = instance.execute(f"cat {layout().ca_cert}", timeout=30, check=False)
        if ca.returncode != 0 or "BEGIN CERTIFICATE" not in ca.stdout:
            return False
        (instance.workdir / "ca.crt").write_text(ca.stdout)
        ep = Endpoint(instance.https_url, "sk-not-yet-known-0000000000", instance.workdir / "ca.crt")
        with contextlib.suppress(httpx.TransportError), ep.client() as client:
            r = client.get("/v1/models")
            seen.update(status=r.status_code, retry_after=r.headers.get("retry-after", ""), body=r.text[:300])
            return True
        return False

    try:
        started = time.monotonic()
        wait_until(answered, 900, interval=3, what="the first boot's appliance answering through TLS")
        notice_s = round(time.monotonic() - started, 1)
        assert seen["status"] == 503, f"during the first boot's download: HTTP {seen['status']} {seen['body']}"
        assert seen["retry_after"].isdigit(), f"no Retry-After with the 503: {seen}"
        assert "downloading its model" in seen["body"], seen["body"]
        ready = instance.wait_ready(timeout=900)  # the rest of the download, then the model loads
        assert served_ids(Endpoint.of_guest(instance)) == [RENAMED.removesuffix(".gguf")]
        return {"notice_after_s": notice_s, **ready}
    finally:
        instance.destroy()
