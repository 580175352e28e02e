"""Scoring references in held-out cross-entropy: per-sequence CE, paired bootstrap, verdicts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from layerpeel.arch import ModelView

VERDICTS = ("green", "yellow", "red")


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
    out = []
    for s in range(0, x.shape[0], batch):
        logits = view.run_from(start, x[s : s + batch], replace)  # (B,T,V)
        ce = F.cross_entropy(
            logits.transpose(1, 2).float(), targets[s : s + batch], reduction="none"
        )  # (B,T)
        out.append(ce.mean(1).double())
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
