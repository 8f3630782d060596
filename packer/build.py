"""`nox -s build`: base image (cached), Packer build of the appliance (cached), then dist/.

dist/ gets the compressed QCOW2, its sha256, a build manifest (every input with version and
hash) and the marketplace appliance YAML (marketplace-community format).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from artifacts import cache  # noqa: E402
from packer import marketplace  # noqa: E402

PACKER_DIR = REPO / "packer"
BASE_INPUTS = [PACKER_DIR / "base" / "build-base.sh", PACKER_DIR / "base" / "packages.txt"]
IMAGE_NAME = "slm-copilot.qcow2"


def tree_hash(*roots: Path) -> str:
    digest = hashlib.sha256()
    for root in roots:
        files = sorted(p for p in ([root] if root.is_file() else root.rglob("*"))
                       if p.is_file() and "__pycache__" not in p.parts)
        for p in files:
            digest.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    return digest.hexdigest()


def ensure_base() -> tuple[Path, str]:
    key = tree_hash(*BASE_INPUTS)

    def build(out: Path):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "slm-image-build",
                        "-f", out / "id_ed25519"], check=True)
        t0 = time.monotonic()
        subprocess.run([PACKER_DIR / "base" / "build-base.sh", out / "base.qcow2", out / "id_ed25519.pub",
                        out / "base.json"], check=True)
        print(f"build: base image in {time.monotonic() - t0:.0f} s")

    return cache.cached_build("base", key, build), key


def packer_build(base: Path, stage: Path, model_id: str, out: Path) -> None:
    with tempfile.TemporaryDirectory(dir=cache.cache_root()) as tmp:
        output_dir = Path(tmp) / "packer-out"
        env = {**os.environ, "PACKER_CACHE_DIR": str(cache.cache_root() / "packer"), "CHECKPOINT_DISABLE": "1"}
        cmd = ["packer", "build", "-color=false", f"-var-file={PACKER_DIR / 'offline.pkrvars.hcl'}",
               f"-var=base_image=file://{base / 'base.qcow2'}",
               f"-var=base_checksum=sha256:{cache.sha256_file(base / 'base.qcow2')}",
               f"-var=stage_dir={stage}", f"-var=model_id={model_id}",
               f"-var=ssh_private_key_file={base / 'id_ed25519'}", f"-var=output_dir={output_dir}",
               str(PACKER_DIR)]
        log = out / "packer.log"
        with open(log, "w") as fh:
            rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            serial = Path(f"{output_dir}.serial.log")
            tail = serial.read_text(errors="replace")[-3000:] if serial.exists() else ""
            raise RuntimeError(f"packer build failed; {log}:\n{log.read_text()[-4000:]}\nserial:\n{tail}")
        subprocess.run(["qemu-img", "convert", "-c", "-O", "qcow2", output_dir / IMAGE_NAME, out / IMAGE_NAME],
                       check=True)


def tool_version(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", type=Path, default=REPO / "build" / "artifacts")
    parser.add_argument("--dist", type=Path, default=REPO / "dist")
    parser.add_argument("--production", action="store_true",
                        help="Ubuntu 24.04 + KVM + Devstral + one-context (production.pkrvars.hcl): needs a "
                             "KVM build host with network access and the real sha256 of the production model")
    args = parser.parse_args()
    if args.production:
        from artifacts import model

        model.production_pin_ready(cache.load_pins())  # refuses the placeholder before anything runs
        raise SystemExit("build: the production build runs on a KVM build host with network access: "
                         "packer init packer/modern && packer build -var-file=packer/production.pkrvars.hcl ...")
    artifacts = json.loads((args.stage / "manifest.json").read_text())
    model_id = artifacts["model"]["model_id"]
    t0 = time.monotonic()
    with cache.heavy_job("image build"):
        base, base_key = ensure_base()
        image_key = cache.sha256_text(base_key, (args.stage / "SHA256SUMS").read_text(),
                                      tree_hash(REPO / "appliance", PACKER_DIR / "context",
                                                PACKER_DIR / "provision.sh", PACKER_DIR / "slm-copilot.pkr.hcl",
                                                PACKER_DIR / "variables.pkr.hcl", PACKER_DIR / "offline.pkrvars.hcl"))
        image_dir = cache.cached_build("image", image_key, lambda out: packer_build(base, args.stage, model_id, out))
    seconds = round(time.monotonic() - t0, 1)

    args.dist.mkdir(parents=True, exist_ok=True)
    image = args.dist / IMAGE_NAME
    image.unlink(missing_ok=True)
    os.link(image_dir / IMAGE_NAME, image)
    sha256 = cache.sha256_file(image)
    (args.dist / f"{IMAGE_NAME}.sha256").write_text(f"{sha256}  {IMAGE_NAME}\n")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", image], capture_output=True,
                                     text=True, check=True).stdout)
    base_info = json.loads((base / "base.json").read_text())
    appliance = marketplace.appliance_metadata(REPO / "appliance")
    manifest = {
        "image": {"file": IMAGE_NAME, "sha256": sha256, "md5": hashlib.md5(image.read_bytes()).hexdigest(),  # noqa: S324
                  "size": image.stat().st_size, "virtual_size": info["virtual-size"],
                  "model_bytes": artifacts["model"]["facts"]["MODEL_BYTES"], "cache_key": image_key},
        "appliance": {"name": appliance["name"], "version": appliance["version"]},
        "base": {**base_info, "cache_key": base_key, "os_id": "Debian", "os_release": "12", "os_arch": "x86_64"},
        "artifacts": artifacts,
        "tools": {"packer": tool_version(["packer", "version"]), "qemu": tool_version(["qemu-img", "--version"])},
        "build_seconds": seconds,
        "creation_time": int(image_dir.stat().st_mtime),
    }
    (args.dist / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    app_uuid = uuid.uuid5(uuid.NAMESPACE_URL, "slm-copilot/offline")
    (args.dist / f"{app_uuid}.yaml").write_text(marketplace.appliance_yaml(manifest, appliance))
    print(f"build: {image} ({manifest['image']['size'] / 2**20:.0f} MiB, sha256 {sha256[:12]}) in {seconds} s")


if __name__ == "__main__":
    main()
