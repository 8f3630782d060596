"""The OpenNebula marketplace appliance YAML (marketplace-community format), generated from the
appliance script's own metadata so that USER_INPUTS can never drift from ONE_SERVICE_PARAMS."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

DEFAULTS_OF_NOTE = {"ONEAPP_SLM_TLS_MODE": "selfsigned", "ONEAPP_SLM_LOG_LEVEL": "warn"}


def appliance_metadata(appliance_dir: Path) -> dict:
    """ONE_SERVICE_* as the appliance script declares them (read by bash, not re-parsed)."""
    script = (
        'SLM_ROOT=""; . "$1/lib/common.sh"; . "$1/service.d/appliance.sh"; '
        'printf "%s\\0" "$ONE_SERVICE_NAME" "$ONE_SERVICE_VERSION" "$ONE_SERVICE_SHORT_DESCRIPTION" '
        '"$ONE_SERVICE_DESCRIPTION" "${ONE_SERVICE_PARAMS[@]}"'
    )
    out = subprocess.run(["bash", "-c", script, "meta", str(appliance_dir)], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"}).stdout.split("\0")[:-1]
    name, version, short, description, *flat = out
    params = [dict(zip(("name", "stage", "description", "input"), flat[i:i + 4], strict=True))
              for i in range(0, len(flat), 4)]
    return {"name": name, "version": version, "short_description": short, "description": description,
            "params": params}


def user_input(param: dict) -> str:
    """'O|password' + description -> 'O|password|Description| |default' (OpenNebula's syntax)."""
    mandatory, kind, *options = param["input"].split("|")
    default = DEFAULTS_OF_NOTE.get(param["name"], "")
    return f"{mandatory}|{kind}|{param['description']}|{options[0] if options else ' '}|{default}"


def appliance_yaml(manifest: dict, appliance: dict) -> str:
    image = manifest["image"]
    params = [p for p in appliance["params"] if p["input"]]
    doc = {
        "name": "SLM-Copilot",
        "version": f"{appliance['version']}-{manifest['creation_time']}",
        "one-apps_version": "7.0.0-0",
        "publisher": "SLM-Copilot team",
        "publisher_email": "slm-copilot@example.org",
        "description": appliance["description"],
        "short_description": appliance["short_description"],
        "tags": ["ai", "llm", "coding-assistant", "openai-api", "cpu", "debian"],
        "format": "qcow2",
        "creation_time": manifest["creation_time"],
        "os-id": manifest["base"]["os_id"],
        "os-release": manifest["base"]["os_release"],
        "os-arch": manifest["base"]["os_arch"],
        "hypervisor": "KVM",
        "opennebula_version": "6.10, 7.0",
        "opennebula_template": {
            "context": {"network": "YES", "ssh_public_key": "$USER[SSH_PUBLIC_KEY]", "token": "YES",
                        "report_ready": "YES", **{p["name"].lower(): f"${p['name']}" for p in params}},
            "cpu": "4",
            "memory": "4096",
            "cpu_model": {"model": "host-passthrough"},
            "graphics": {"listen": "0.0.0.0", "type": "vnc"},  # noqa: S104 (the hypervisor host listens)
            "os": {"arch": "x86_64"},
            "inputs_order": ",".join(p["name"] for p in params),
            "user_inputs": {p["name"].lower(): user_input(p) for p in params},
        },
        "logo": "slm-copilot.png",
        "images": [{
            "name": "slm-copilot",
            "url": f"https://marketplace.example.org/slm-copilot/{image['file']}",
            "type": "OS",
            "dev_prefix": "vd",
            "driver": "qcow2",
            "size": image["virtual_size"],
            "checksum": {"md5": image["md5"], "sha256": image["sha256"]},
        }],
    }
    return yaml.safe_dump(doc, sort_keys=False, width=100)
