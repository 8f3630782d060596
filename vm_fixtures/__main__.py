"""Boot an image as if it were deployed, run a command against it, destroy it.

    python -m vm_fixtures IMAGE [--cpu-model host] -- COMMAND...

COMMAND runs with the conformance suite's url-target settings (SLM_CONFORMANCE_URL, _API_KEY,
_CA_FILE, _SSH, _SSH_KEY, _HTTP_URL, _ENGINE_URL) pointing at the booted appliance, so
`pytest conformance --target url` or `pytest benchmarks --bench-target url` meet it the way they
meet an appliance in OpenNebula. The API key travels in the environment, never on a command line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from artifacts.cache import heavy_job

from .instance import LibvirtPlatform


def url_target_env(vm) -> dict[str, str]:
    return {
        "SLM_CONFORMANCE_URL": vm.https_url,
        "SLM_CONFORMANCE_API_KEY": vm.api_key(),
        "SLM_CONFORMANCE_CA_FILE": str(vm.trusted_ca()),
        "SLM_CONFORMANCE_SSH": f"root@127.0.0.1:{vm.ssh_port}",
        "SLM_CONFORMANCE_SSH_KEY": str(vm.ssh_key),
        "SLM_CONFORMANCE_HTTP_URL": vm.http_url,
        "SLM_CONFORMANCE_ENGINE_URL": vm.engine_url,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vm_fixtures", description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--cpu-model", default="host", help="host (the most this host offers), qemu64, ...")
    parser.add_argument("--logs", type=Path, default=Path("reports/logs/deployed"), help="kept if boot fails")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no COMMAND after --")
    if not args.image.exists():
        parser.error(f"no image at {args.image}: run `nox -s build`")
    with heavy_job("deployed VM"):
        platform = LibvirtPlatform()
        platform.reap()
        with platform.booted(args.image, args.cpu_model, logs=args.logs) as vm:
            print(f"vm_fixtures: {vm.name} ready after {vm.ready['ready_s']} s at {vm.https_url}", flush=True)
            return subprocess.run(command, env={**os.environ, **url_target_env(vm)}).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
