"""Token files on disk (raw little-endian ids plus a JSON sidecar) and the tokenized-corpus cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from layerpeel.data.corpus import load_text
from layerpeel.data.tokenizers import Tokenizer
from layerpeel.errors import DataError
from layerpeel.io import atomic_write, atomic_write_json, file_sha256

log = logging.getLogger(__name__)

TOKENS_FORMAT = "layerpeel-tokens"  # `format` field of a token file's sidecar
TOKENS_VERSION = 1
_DTYPES = ("<u2", "<u4")  # uint16 while every id fits, else uint32
_CACHE_KEY_VERSION = "1"  # bump when tokenization changes, so old caches are not reused


@dataclasses.dataclass(frozen=True)
class TokenFile:
    """A token file: ids in `path` (raw `dtype`, no header) described by a `.json` sidecar."""

    path: Path  # the .bin file; the sidecar is the same path with suffix .json
    dtype: str  # "<u2" (uint16) or "<u4" (uint32), little-endian
    count: int  # number of tokens
    tokenizer: str  # name of the tokenizer that made the ids
    sha256: str  # hex sha256 of the .bin bytes

    @staticmethod
    def sidecar(path: str | Path) -> Path:
        """Where the JSON description of token file `path` lives."""
        return Path(path).with_suffix(".json")

    @classmethod
    def open(cls, path: str | Path) -> TokenFile:
        """Read and check the sidecar of `path`; `DataError` if it is missing or garbled."""
        path = Path(path)
        try:
            meta = json.loads(cls.sidecar(path).read_text())
            out = cls(
                path=path,
                dtype=str(meta["dtype"]),
                count=int(meta["count"]),
                tokenizer=str(meta["tokenizer"]),
                sha256=str(meta["sha256"]),
            )
        except FileNotFoundError:
            raise DataError(f"token file description missing: {cls.sidecar(path)}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"token file description unreadable: {cls.sidecar(path)} ({exc})"
            ) from None
        if out.dtype not in _DTYPES or out.count < 0:
            raise DataError(f"token file description is garbled: {cls.sidecar(path)}")
        return out

    def read(self, verify: bool = True) -> np.ndarray:
        """The ids (count,) as a read-only memmap; checks size and, if `verify`, the sha256."""
        itemsize = np.dtype(self.dtype).itemsize
        try:
            size = self.path.stat().st_size
        except OSError:
            raise DataError(f"token file missing: {self.path}") from None
        if size != self.count * itemsize:
            raise DataError(
                f"token file is truncated or overlong: {self.path} has {size} bytes, "
                f"expected {self.count * itemsize}"
            )
        if verify and file_sha256(self.path) != self.sha256:
            raise DataError(f"token file is corrupted (sha256 mismatch): {self.path}")
        if self.count == 0:  # an empty file cannot be memory-mapped
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.count,))


def write_tokens(
    path: str | Path, ids: np.ndarray, tokenizer_name: str, vocab_size: int | None = None
) -> TokenFile:
    """Write ids (N,) to `path` and its `.json` sidecar, each atomically (ids first).

    The dtype is uint16 if every id (or, when `vocab_size` is given, every possible id) fits,
    else uint32. A crash between the two writes leaves a sidecar whose sha256 no longer matches,
    which `read_tokens` reports instead of returning wrong ids.
    """
    path = Path(path)
    arr = np.asarray(ids)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"token ids must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0 or hi >= 2**32 or (vocab_size is not None and hi >= vocab_size):
        raise DataError(f"token ids out of range for {tokenizer_name!r}: {lo}..{hi}")
    top = vocab_size - 1 if vocab_size is not None else hi
    dtype = "<u2" if top < 2**16 else "<u4"
    data = np.ascontiguousarray(arr.astype(dtype, copy=False))
    atomic_write(path, lambda tmp: data.tofile(tmp))
    tf = TokenFile(
        path, dtype, int(data.size), tokenizer_name, hashlib.sha256(data.data).hexdigest()
    )
    meta: dict[str, Any] = {"format": TOKENS_FORMAT, "version": TOKENS_VERSION}
    meta.update({k: v for k, v in dataclasses.asdict(tf).items() if k != "path"})
    atomic_write_json(TokenFile.sidecar(path), meta)
    return tf


def read_tokens(path: str | Path, verify: bool = True) -> np.ndarray:
    """Ids (N,) of a token file written by `write_tokens`, memory-mapped read-only.

    Raises `DataError` if the file or its sidecar is missing, garbled, truncated or (with
    `verify`, which reads the whole file once) does not match its sha256.
    """
    return TokenFile.open(path).read(verify=verify)


def prepare_tokens(
    source: str | Path | None, tokenizer: Tokenizer, cache_dir: str | Path
) -> np.ndarray:
    """Ids (N,) of `source` (see `load_text`), tokenized once and cached in `cache_dir`.

    The cache file is named by a sha256 of the tokenizer name and the text, so a changed file
    gets new tokens and an unchanged one (under any path) reuses them. A damaged cache file is
    logged and rebuilt.
    """
    text = load_text(source)
    h = hashlib.sha256(f"{_CACHE_KEY_VERSION}\0{tokenizer.name}\0".encode())
    h.update(text.encode("utf-8"))
    path = Path(cache_dir) / f"{tokenizer.name}-{h.hexdigest()[:32]}.bin"
    if path.is_file():
        try:
            tf = TokenFile.open(path)
            if tf.tokenizer == tokenizer.name:
                ids = tf.read()
                log.info("using cached tokens %s (%d tokens)", path, tf.count)
                return ids
            log.warning("token cache %s was made by %r; tokenizing again", path, tf.tokenizer)
        except DataError as exc:
            log.warning("token cache is damaged (%s); tokenizing again", exc)
    log.info("tokenizing %d characters with %s", len(text), tokenizer.name)
    ids = np.asarray(tokenizer.encode(text))
    write_tokens(path, ids, tokenizer.name, tokenizer.vocab_size)
    return read_tokens(path, verify=False)
