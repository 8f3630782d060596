#!/usr/bin/env python3
"""What the appliance must know of a GGUF model before serving it, read from the file's header.

`gguf_facts.py FILE` prints KEY=VALUE lines (MODEL_ARCH, MODEL_NAME, MODEL_BYTES, MODEL_CTX_TRAIN,
MODEL_KV_BYTES_PER_TOKEN, MODEL_HAS_CHAT_TEMPLATE) and exits 0, or prints why the file is not a
usable GGUF model on stderr and exits 1. Values are checked to be plain (no quotes, no newlines),
so the output can be sourced by the appliance's shell.

Standard library only, by design: the guest has python3 but not numpy, which the `gguf` package
needs and which would map the whole model to read its header. The image build reads the baked
model with this same file; the unit tests compare it with the `gguf` package field by field.
"""

from __future__ import annotations

import re
import struct
import sys
from pathlib import Path

MAGIC = b"GGUF"
# GGUF value types: struct formats of the scalar ones; 8 = string, 9 = array.
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
MAX_KEYS = 1 << 16  # a header claiming more is damaged, not large
PLAIN = re.compile(r"[A-Za-z0-9._ :()/+-]{0,200}")


class NotAModel(Exception):
    pass


class Header:
    """The key/value section of a GGUF file; arrays of numbers kept, long string arrays skipped."""

    def __init__(self, fh):
        self.fh = fh
        if fh.read(4) != MAGIC:
            raise NotAModel("not a GGUF file (no GGUF magic at its start)")
        version, _tensors, count = self.unpack("<IQQ")
        if version not in (2, 3):
            raise NotAModel(f"GGUF version {version}: the engine reads versions 2 and 3")
        if count > MAX_KEYS:
            raise NotAModel(f"the header claims {count} metadata keys: the file is damaged")
        self.fields = {}
        for _ in range(count):
            key = self.string()
            self.fields[key] = self.value(self.unpack("<I")[0], key)

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        data = self.fh.read(size)
        if len(data) != size:
            raise NotAModel("the file ends inside its header: it is truncated")
        return struct.unpack(fmt, data)

    def string(self) -> str:
        (length,) = self.unpack("<Q")
        data = self.fh.read(length)
        if len(data) != length:
            raise NotAModel("the file ends inside its header: it is truncated")
        return data.decode("utf-8", errors="replace")

    def value(self, kind: int, key: str):
        if kind in SCALARS:
            return self.unpack(SCALARS[kind])[0]
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item, count = self.unpack("<IQ")
            # The vocabulary (100k+ strings) is read past, not kept: only numbers matter here.
            values = [self.value(item, key) for _ in range(count)]
            return values if item in SCALARS else None
        raise NotAModel(f"unknown GGUF value type {kind} for {key}")


def facts(path: Path) -> dict[str, str | int]:
    with open(path, "rb") as fh:
        fields = Header(fh).fields
    arch = fields.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise NotAModel("no general.architecture in the header")

    def number(name: str, default=None) -> int:
        value = fields.get(f"{arch}.{name}", default)
        if value is None:
            raise NotAModel(f"no {arch}.{name} in the header")
        return value

    layers = number("block_count")
    heads = number("attention.head_count")
    kv_heads = number("attention.head_count_kv", heads)
    # Some architectures give heads per layer; a layer without attention (0 heads) holds no KV.
    heads_max = max(heads) if isinstance(heads, list) else heads
    per_layer_kv = kv_heads if isinstance(kv_heads, list) else [kv_heads] * layers
    key_dim = number("attention.key_length", number("embedding_length") // max(heads_max, 1))
    value_dim = number("attention.value_length", key_dim)
    name = str(fields.get("general.name", ""))
    return {
        "MODEL_ARCH": arch,
        "MODEL_NAME": name if PLAIN.fullmatch(name) else "",
        "MODEL_BYTES": path.stat().st_size,
        "MODEL_CTX_TRAIN": number("context_length"),
        # f16 K and V for every layer and KV head: what one token of context costs.
        "MODEL_KV_BYTES_PER_TOKEN": 2 * sum(per_layer_kv) * (key_dim + value_dim),
        "MODEL_HAS_CHAT_TEMPLATE": int(bool(fields.get("tokenizer.chat_template"))),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: gguf_facts.py FILE", file=sys.stderr)
        return 2
    try:
        found = facts(Path(argv[1]))
    except (NotAModel, OSError, UnicodeDecodeError, TypeError, ValueError) as err:
        print(err, file=sys.stderr)
        return 1
    if not re.fullmatch(r"[a-z0-9_-]{1,64}", found["MODEL_ARCH"]):
        print("the architecture name is not plain: the file is damaged", file=sys.stderr)
        return 1
    print("".join(f"{key}={value}\n" for key, value in found.items()), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
