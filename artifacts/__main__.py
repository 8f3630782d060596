"""`python -m artifacts [--stage DIR]`: build or verify every pinned artifact, write the manifest."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from . import cache, engine, model

DEFAULT_STAGE = Path("build/artifacts")
ARCHITECTURES = "architectures.txt"  # what the engine loads: the appliance checks a fetched model's


def stage(dest: Path) -> dict:
    pins = cache.load_pins()
    t0 = time.monotonic()
    with cache.heavy_job("artifacts"):
        engine_dir = engine.ensure(pins)
        model_file = model.ensure(pins)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "engine").mkdir(parents=True)
    for item in engine.runtime_files(engine_dir):
        os.link(item, dest / "engine" / item.name)
    os.link(model_file, dest / "model.gguf")
    facts = {**model.facts(model_file, pins["model"]["model_id"]), "MODEL_SHA256": pins["model"]["member_sha256"]}
    extra = {}
    if template := model.chat_template(pins):
        shutil.copyfile(template, dest / model.CHAT_TEMPLATE_FILE)
        facts["MODEL_CHAT_TEMPLATE"] = model.CHAT_TEMPLATE_FILE
        extra[model.CHAT_TEMPLATE_FILE] = cache.sha256_file(dest / model.CHAT_TEMPLATE_FILE)
    (dest / "model.env").write_text("".join(f"{k}={v}\n" for k, v in facts.items()))
    (dest / ARCHITECTURES).write_text("".join(f"{name}\n" for name in engine.architectures(pins)))
    sums = {**{f"engine/{k}": v for k, v in cache.tree_manifest(dest / "engine").items()}, **extra,
            "model.gguf": pins["model"]["member_sha256"], "model.env": cache.sha256_file(dest / "model.env"),
            ARCHITECTURES: cache.sha256_file(dest / ARCHITECTURES)}
    (dest / "SHA256SUMS").write_text("".join(f"{v}  {k}\n" for k, v in sorted(sums.items())))
    version = subprocess.run([dest / "engine" / "llama-server", "--version"],
                             capture_output=True, text=True, timeout=60)
    manifest = {
        "engine": {
            "source": pins["engine_source"],
            "version": (version.stdout + version.stderr).strip().splitlines()[-2:],
            "cpu_variants": engine.CPU_VARIANTS,
            "cmake_flags": engine.CMAKE_FLAGS,
            "cache_dir": str(engine_dir),
            "files": cache.tree_manifest(dest / "engine"),
        },
        "model": {**pins["model"], "file": "model.gguf", "facts": facts},
        "production_model": pins["production_model"],
        "seconds": round(time.monotonic() - t0, 1),
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", type=Path, default=DEFAULT_STAGE)
    args = parser.parse_args()
    manifest = stage(args.stage)
    print(json.dumps({k: manifest[k] for k in ("seconds",)}), "->", args.stage / "manifest.json")


if __name__ == "__main__":
    main()
