"""Token files on disk, fixed-length windows of them, and a deterministic split by sequence."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerpeel.data.corpus import load_text
from layerpeel.errors import DataError
from layerpeel.io import atomic_write, atomic_write_json

log = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_tokens(path: Path, ids: np.ndarray, tokenizer_name: str) -> None:
    """Write `path` (.bin, little-endian uint16 or uint32) and its `.json` sidecar, atomically."""
    path = Path(path)
    ids = np.asarray(ids)
    dtype = "<u2" if (ids.size == 0 or int(ids.max()) < 2**16) else "<u4"
    atomic_write(path, lambda tmp: ids.astype(dtype).tofile(tmp))
    meta = {
        "dtype": dtype,
        "count": int(ids.size),
        "tokenizer": tokenizer_name,
        "sha256": _sha256(path),
    }
    atomic_write_json(path.with_suffix(".json"), meta)


def read_tokens(path: Path) -> np.ndarray:
    """Memory-map a token file written by `write_tokens`, checking its length and checksum."""
    path = Path(path)
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        dtype, count = np.dtype(meta["dtype"]), int(meta["count"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"token file metadata missing or unreadable: {path} ({exc})") from None
    if not path.is_file() or path.stat().st_size != count * dtype.itemsize:
        raise DataError(f"token file is missing or truncated: {path}")
    if meta.get("sha256") and _sha256(path) != meta["sha256"]:
        raise DataError(f"token file is corrupted (sha256 mismatch): {path}")
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def prepare_tokens(source: str | Path | None, tokenizer: Any, cache_dir: Path) -> np.ndarray:
    """Tokens of `source`, tokenized once and cached under `cache_dir` by a hash of text + tokenizer."""
    text = load_text(source)
    key = hashlib.sha256((tokenizer.name + "\0" + text).encode("utf-8", "replace")).hexdigest()[:24]
    path = Path(cache_dir) / f"{tokenizer.name}-{key}.bin"
    if path.is_file() and path.with_suffix(".json").is_file():
        try:
            return read_tokens(path)
        except DataError:
            log.warning("token cache %s is damaged; tokenizing again", path)
    ids = tokenizer.encode(text)
    write_tokens(path, ids, tokenizer.name)
    return read_tokens(path)


class SequenceDataset:
    """Non-overlapping windows of seq_len + 1 tokens: inputs and their next-token targets."""

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        if seq_len < 1:
            raise DataError(f"sequence length must be positive, got {seq_len}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.n = len(tokens) // (seq_len + 1)
        if self.n < 1:
            raise DataError(
                f"the corpus has {len(tokens)} tokens, fewer than one sequence of {seq_len + 1}"
            )

    def __len__(self) -> int:
        return self.n

    def windows(self, ids: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Windows (B, seq_len + 1) as a LongTensor."""
        w = self.seq_len + 1
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.stack([np.asarray(self.tokens[i * w : (i + 1) * w]) for i in ids])
        return torch.from_numpy(rows.astype(np.int64))

    def batch(self, ids: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs x and targets y, each (B, seq_len); y is x shifted by one token."""
        w = self.windows(ids)
        return w[:, :-1], w[:, 1:]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch([i])
        return x[0], y[0]


def split_sequences(
    n: int, val_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split of sequence ids 0..n-1 into (train, validation), both sorted.

    A PCG64 permutation seeded by `seed` picks round(n * val_fraction) ids (at least one when
    n >= 2) for validation; the same arguments give the same split on every machine.
    """
    if n < 2:
        raise DataError(f"need at least 2 sequences to split into train and validation, got {n}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def sequence_hash(windows: np.ndarray | torch.Tensor) -> str:
    """sha256 of a set of token windows, to stamp reports with the data they used."""
    arr = np.asarray(windows, dtype="<i8")
    return hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()
