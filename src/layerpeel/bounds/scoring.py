"""Scoring references in held-out cross-entropy: per-sequence CE, paired bootstrap, verdicts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from layerpeel.arch import ModelView

VERDICTS = ("green", "yellow", "red")


HEAD_ROWS = 1024  # token rows per head chunk: bounds the (rows, V) logits held at once


def token_ce(
    head: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    targets: torch.Tensor,
    rows: int = HEAD_ROWS,
) -> torch.Tensor:
    """Next-token CE (nats) of each position: the head on the final residual x (B,T,C), (B,T).

    The logits of a large vocabulary are formed `rows` tokens at a time, and the CE is taken on
    contiguous (rows, V) logits, much faster than on the (B, V, T) layout.
    """
    flat_x, flat_t = x.reshape(-1, 1, x.shape[-1]), targets.reshape(-1)
    out = []
    for s in range(0, flat_t.numel(), rows):
        logits = head(flat_x[s : s + rows]).flatten(0, 1).float()  # (rows, V)
        out.append(F.cross_entropy(logits, flat_t[s : s + rows], reduction="none"))
    return torch.cat(out).view(targets.shape)


@torch.no_grad()
def sequence_ce(
    view: ModelView,
    start: int,
    x: torch.Tensor,
    targets: torch.Tensor,
    replace: dict[int, nn.Module] | None = None,
    batch: int = 16,
) -> torch.Tensor:
    """Mean next-token CE (nats) of each sequence, entering block `start` with residual x (S,T,C).

    `replace` maps block indices to reference blocks; start = L scores the head alone.
    """
    replace = replace or {}
    out = []
    for s in range(0, x.shape[0], batch):
        h = x[s : s + batch]
        for i in range(start, view.n_blocks):
            h = view.run_block(replace.get(i, view.blocks[i]), h)
        out.append(token_ce(view.head, h, targets[s : s + batch]).mean(1).double())
    return torch.cat(out)


def bootstrap_interval(
    diff: torch.Tensor, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-sequence differences (S,)."""
    d = diff.double().numpy()
    if d.size < 2:
        return float(d.mean()), float(d.mean())
    rng = np.random.Generator(np.random.PCG64(seed))
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    means = d[idx].mean(1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


@dataclass
class Thresholds:
    """Verdict thresholds on a gap, in nats per token."""

    red: float = 0.02  # red when the interval's lower end exceeds this
    yellow: float = 0.005  # yellow when the gap itself exceeds this

    def verdict(self, gap: float, ci_low: float) -> str:
        if ci_low > self.red:
            return "red"
        if gap > self.yellow:
            return "yellow"
        return "green"
