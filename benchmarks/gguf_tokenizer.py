"""A Hugging Face tokenizer directory from a GGUF's own vocabulary, for AIPerf, which loads one even
when the server counts the tokens. Run by AIPerf's virtualenv (gguf, tokenizers), never imported by
the suite: `python gguf_tokenizer.py MODEL.gguf DEST`. transformers' own GGUF loader would do it but
needs PyTorch, a 700 MB download for a vocabulary. Byte-level BPE ("gpt2" in GGUF terms: SmolLM2,
Qwen, Mistral's Tekken) only; anything else is refused by name."""

import json
import sys
from pathlib import Path

from gguf import GGUFReader
from tokenizers import Tokenizer, decoders, models, pre_tokenizers


def strings(reader: GGUFReader, name: str) -> list[str]:
    field = reader.fields[name]
    return [bytes(field.parts[i]).decode() for i in field.data]


def main(model: str, dest: str) -> None:
    reader = GGUFReader(model)
    kind = bytes(reader.fields["tokenizer.ggml.model"].parts[-1]).decode()
    if kind != "gpt2":
        sys.exit(f"{model}: tokenizer.ggml.model is {kind!r}; only byte-level BPE ('gpt2') is converted")
    tokens, merges = strings(reader, "tokenizer.ggml.tokens"), strings(reader, "tokenizer.ggml.merges")
    tokenizer = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [tuple(m.split(" ", 1)) for m in merges]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
