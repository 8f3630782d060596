"""One settings object: defaults, then a TOML config file, then SLM_CONFORMANCE_* environment."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

SECRET_FIELDS = {"api_key"}
PROFILES = ("ci", "release")
TARGETS = ("local", "vm", "url")


@dataclass
class Settings:
    target: str = "vm"  # local: rendered config on loopback; vm: boot an image; url: deployed appliance
    profile: str = "ci"  # ci: what .ci/run gates on; release: everything, no skips allowed
    artifacts: str = "build/artifacts"
    image: str = "dist/slm-copilot.qcow2"
    # host: host-passthrough with KVM, maximum under TCG; or any model QEMU knows (qemu64, Nehalem...)
    cpu_models: list[str] = field(default_factory=lambda: ["qemu64", "host"])
    ci_full_model: str = "qemu64"  # ci profile: the whole suite here, the core elsewhere
    url: str = ""  # url target: https://host[:port]
    http_url: str = ""  # url target: where port 80 is reached (default http://<url's host>)
    engine_url: str = ""  # url target: the host's engine port as the network sees it (default http://<host>:8081)
    api_key: str = field(default="", repr=False)  # never in a report or a traceback
    ca_file: str = ""
    ssh: str = ""  # url target, optional: user@host[:port] (root, or sudo without password) for host checks
    ssh_key: str = ""  # url target: identity file for ssh (default: ssh's own keys and agent)
    destructive: bool = False  # url target: allow checks that kill, reboot or reconfigure (needs ssh)
    # url target with destructive: the appliance is a throwaway VM (the mutation harness boots one),
    # so checks may also leave it changed (a renewed certificate, rotated logs, a first boot redone)
    disposable: bool = False
    reports_dir: str = "reports"

    @classmethod
    def load(cls, config_file: str | None = None, defaults: dict | None = None, **overrides) -> Settings:
        """`defaults` replace the class's own (a caller with another natural default, e.g. the
        benchmarks' local target); the file, the environment and `overrides` still win over them."""
        values: dict = dict(defaults or {})
        path = config_file or os.environ.get("SLM_CONFORMANCE_CONFIG")
        if path:
            values.update(tomllib.loads(Path(path).read_text()).get("conformance", {}))
        for f in dataclasses.fields(cls):
            env = os.environ.get(f"SLM_CONFORMANCE_{f.name.upper()}")
            if env is not None:
                values[f.name] = _parse(f, env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown conformance settings {sorted(unknown)}")
        settings = cls(**values)
        if settings.target not in TARGETS:
            raise ValueError(f"target={settings.target!r}: expected one of {TARGETS}")
        if settings.profile not in PROFILES:
            raise ValueError(f"profile={settings.profile!r}: expected one of {PROFILES}")
        if settings.target == "url" and not (settings.url and settings.api_key):
            raise ValueError("target=url needs url and api_key (SLM_CONFORMANCE_URL, SLM_CONFORMANCE_API_KEY)")
        if settings.destructive and settings.target == "url" and not settings.ssh:
            raise ValueError("destructive=true needs ssh=user@host[:port] (SLM_CONFORMANCE_SSH): "
                             "faults and reboots are driven from inside the appliance")
        return settings

    def redacted(self) -> dict:
        return {k: ("***" if k in SECRET_FIELDS and v else v) for k, v in dataclasses.asdict(self).items()}


def _parse(f: dataclasses.Field, raw: str):
    if f.type in ("bool", bool):
        return raw.lower() in ("1", "true", "yes", "on")
    if str(f.type).startswith("list"):
        return [x.strip() for x in raw.split(",") if x.strip()]
    return raw
