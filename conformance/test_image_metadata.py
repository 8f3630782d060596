"""The marketplace artifact: checksums, size and USER_INPUTS agree with the image and appliance."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from artifacts.cache import sha256_file
from packer.marketplace import appliance_metadata

from .support import REPO

pytestmark = pytest.mark.target("vm")


@pytest.fixture(scope="session")
def image(settings) -> Path:
    path = REPO / settings.image
    if not path.exists():
        pytest.fail(f"no image at {path}: run `nox -s build`")
    return path


@pytest.fixture(scope="session")
def marketplace_yaml(image) -> dict:
    found = [p for p in image.parent.glob("*.yaml") if "opennebula_template" in p.read_text()]
    assert len(found) == 1, f"expected one appliance YAML beside the image, found {found}"
    return yaml.safe_load(found[0].read_text())


def test_image_checksums_and_size_match(image, marketplace_yaml, record):
    sha256 = sha256_file(image)
    assert (image.parent / f"{image.name}.sha256").read_text().split()[0] == sha256
    entry = marketplace_yaml["images"][0]
    assert entry["checksum"]["sha256"] == sha256
    assert entry["checksum"]["md5"] == hashlib.md5(image.read_bytes()).hexdigest()  # noqa: S324 (marketplace field)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", image], capture_output=True,
                                     text=True, check=True).stdout)
    assert entry["size"] == info["virtual-size"]
    manifest = json.loads((image.parent / "manifest.json").read_text())
    assert manifest["image"]["sha256"] == sha256
    record({"sha256": sha256[:16], "MiB": round(image.stat().st_size / 2**20),
            "MiB_without_model": round((image.stat().st_size - manifest["image"]["model_bytes"]) / 2**20)})


def test_user_inputs_match_service_params(marketplace_yaml):
    params = [p for p in appliance_metadata(REPO / "appliance")["params"] if p["input"]]
    template = marketplace_yaml["opennebula_template"]
    assert list(template["user_inputs"]) == [p["name"].lower() for p in params]
    assert template["inputs_order"].split(",") == [p["name"] for p in params]
    for p in params:
        assert template["context"][p["name"].lower()] == f"${p['name']}"
        assert template["user_inputs"][p["name"].lower()].startswith(p["input"].split("|")[0] + "|")
    for field in ("name", "version", "publisher", "description", "short_description", "tags", "format",
                  "creation_time", "os-id", "os-release", "os-arch", "hypervisor", "opennebula_version"):
        assert marketplace_yaml.get(field), f"marketplace YAML lacks {field}"
