"""Fixed-length token windows, their deterministic train / validation split, and their hash."""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from layerpeel.errors import DataError


class SequenceDataset:
    """A token stream cut into non-overlapping windows of seq_len + 1 tokens.

    Window i holds tokens[i * (seq_len + 1) : (i + 1) * (seq_len + 1)]: its first seq_len tokens
    are inputs, its last seq_len the next-token targets. Tokens after the last whole window are
    unused. `tokens` may be a memmap; only the windows asked for are read.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        if not isinstance(seq_len, numbers.Integral) or seq_len < 1:
            raise DataError(f"sequence length must be a positive integer, got {seq_len!r}")
        if np.ndim(tokens) != 1:
            raise DataError(f"tokens must be 1-D, got shape {np.shape(tokens)}")
        self.tokens: np.ndarray = tokens  # (N,)
        self.seq_len: int = int(seq_len)
        self.window: int = self.seq_len + 1  # tokens per window
        self.n: int = len(tokens) // self.window  # number of windows
        if self.n < 1:
            raise DataError(
                f"the corpus has {len(tokens)} tokens, fewer than one sequence of "
                f"{self.window} (seq_len {self.seq_len} + 1); use more text or a shorter seq_len"
            )

    def __len__(self) -> int:
        return self.n

    def windows(self, ids: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Windows (B, seq_len + 1) as a LongTensor; `IndexError` for an id outside 0..len-1."""
        idx = np.asarray(ids, dtype=np.int64).reshape(-1)  # (B,)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(
                f"sequence ids must be in 0..{self.n - 1}, got {idx.min()}..{idx.max()}"
            )
        pos = idx[:, None] * self.window + np.arange(self.window)  # (B, seq_len + 1)
        return torch.from_numpy(np.asarray(self.tokens[pos], dtype=np.int64))

    def batch(self, ids: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs x and targets y, each (B, seq_len) long; y[:, t] = x[:, t + 1] for t < seq_len - 1."""
        w = self.windows(ids)  # (B, seq_len + 1)
        return w[:, :-1], w[:, 1:]

    def __getitem__(self, i: int | Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One window as (x, y) of shape (seq_len,), or for a list of ids a batch (B, seq_len)."""
        if isinstance(i, int | np.integer):
            if not -self.n <= i < self.n:
                raise IndexError(f"sequence id {i} out of range for {self.n} sequences")
            x, y = self.batch([int(i) % self.n])
            return x[0], y[0]
        return self.batch(i)


def split_sequences(
    n: int, val_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split of sequence ids 0..n-1 into (train, validation), both sorted int64.

    Each id gets a 64-bit key from the raw PCG64 stream of `seed` (NumPy keeps raw bit-generator
    streams identical across versions and machines, unlike its sampling methods), and the
    round(n * val_fraction) ids with the smallest keys, at least one and at most n - 1, are
    held out. So the split depends only on (n, val_fraction, seed), and for a fixed n and seed a
    larger fraction holds out a superset of a smaller one.
    """
    if not isinstance(n, numbers.Integral) or n < 2:
        raise DataError(f"need at least 2 sequences to split into train and validation, got {n}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    if not isinstance(seed, numbers.Integral) or seed < 0:
        raise DataError(f"split seed must be a non-negative integer, got {seed!r}")
    n = int(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    keys = np.random.PCG64(int(seed)).random_raw(n)  # (n,) uint64
    order = np.argsort(keys, kind="stable")
    return np.sort(order[n_val:]).astype(np.int64), np.sort(order[:n_val]).astype(np.int64)


def sequence_hash(windows: np.ndarray | torch.Tensor) -> str:
    """sha256 hex of token windows (S, T): their shape and their ids as little-endian int64.

    The same ids give the same hash whatever their dtype or device, so a report can name the
    exact monitoring set it used.
    """
    if isinstance(windows, torch.Tensor):
        windows = windows.detach().cpu().numpy()
    arr = np.asarray(windows)
    if arr.ndim != 2:
        raise DataError(f"sequence_hash needs windows of shape (S, T), got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"sequence_hash needs integer token ids, got {arr.dtype}")
    h = hashlib.sha256(f"layerpeel-windows-v1 {arr.shape[0]}x{arr.shape[1]}\n".encode())
    h.update(np.ascontiguousarray(arr, dtype="<i8").tobytes())
    return h.hexdigest()
