"""Monitoring sets: fixed token windows from the training distribution, split into fit and held-out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from layerpeel.errors import DataError

# Two fitted sequences (the eta line search fits on one and scores the other) and two held out.
MIN_SEQUENCES = 4


def sequences_wanted(n_tokens: int, seq_len: int) -> int:
    """Sequences of `seq_len` tokens in a monitoring set of `n_tokens`; too few is a one-line error."""
    want = -(-n_tokens // seq_len)
    if want < MIN_SEQUENCES:
        raise DataError(
            f"{n_tokens} monitoring token(s) make {max(want, 0)} sequence(s) of {seq_len}; the "
            f"analysis needs at least {MIN_SEQUENCES} (--tokens {MIN_SEQUENCES * seq_len} or more)"
        )
    return want


def check_enough_sequences(available: int, seq_len: int) -> None:
    """Refuse data that holds fewer than `MIN_SEQUENCES` windows of `seq_len + 1` tokens."""
    if available < MIN_SEQUENCES:
        raise DataError(
            f"the data holds {available} sequence(s) of {seq_len + 1} tokens; a monitoring set "
            f"needs at least {MIN_SEQUENCES}"
        )


@dataclass
class MonitoringSet:
    """Token windows (S, T+1) split by sequence: references fit on `fit`, are scored on `held`."""

    windows: torch.Tensor  # (S, T+1) long: inputs are [:, :-1], next-token targets [:, 1:]
    fit_ids: np.ndarray  # sequences used to fit references
    held_ids: np.ndarray  # sequences used to score them

    @property
    def seq_len(self) -> int:
        return int(self.windows.shape[1] - 1)

    @property
    def n_tokens(self) -> int:
        return int(self.windows.shape[0] * self.seq_len)

    def part(self, part: str) -> torch.Tensor:
        """The whole windows (S, T+1) of one part: "fit", "held" or "all"."""
        return self.windows[self._ids(part)]

    def inputs(self, part: str) -> torch.Tensor:
        return self.windows[self._ids(part), :-1]

    def targets(self, part: str) -> torch.Tensor:
        return self.windows[self._ids(part), 1:]

    def _ids(self, part: str) -> torch.Tensor:
        ids = {"fit": self.fit_ids, "held": self.held_ids, "all": np.arange(len(self.windows))}
        return torch.as_tensor(ids[part], dtype=torch.long, device=self.windows.device)

    def digest(self) -> str:
        """sha256 of the windows and the split: the same set always gives the same hash."""
        h = hashlib.sha256()
        h.update(self.windows.numpy().astype("<i8").tobytes())
        h.update(np.asarray(self.fit_ids, dtype="<i8").tobytes())
        h.update(np.asarray(self.held_ids, dtype="<i8").tobytes())
        return h.hexdigest()


def monitoring_set(windows: torch.Tensor | np.ndarray, held_fraction: float = 0.5) -> MonitoringSet:
    """Split windows (S, T+1) by sequence: every other sequence held out (for 0.5), deterministically."""
    w = torch.as_tensor(np.asarray(windows), dtype=torch.long)
    if w.ndim != 2 or w.shape[1] < 2:
        raise DataError("a monitoring set needs token windows of shape (sequences, length >= 2)")
    s = w.shape[0]
    if s < 2:
        raise DataError(
            f"the monitoring set holds {s} sequence(s); it needs at least 2 (one to fit, one to score)"
        )
    n_held = min(s - 1, max(1, round(s * held_fraction)))
    order = np.arange(s)
    held = np.unique(np.linspace(0, s - 1, n_held).round().astype(int))
    fit = np.setdiff1d(order, held)
    return MonitoringSet(w, fit, held)
