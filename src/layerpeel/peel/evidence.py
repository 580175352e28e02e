"""What the whole-model verdict weighs, measured: the loss trend, weights' spikes, a bigram table.

Each is a measurement of the model or its run that can come out either way; `peel.verdict`
combines them with the P1 rows into one answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

# A random Gaussian matrix's largest singular value sits at the Marchenko-Pastur edge
# std * (sqrt(m) + sqrt(n)); training grows outliers above it. Below this ratio in every matrix
# of a block, the block's weights still look like their initialization.
UNTRAINED_SPIKE = 1.15
MIN_SPIKE_DIM = 16  # smaller matrices fluctuate too much around the edge to tell


@dataclass(frozen=True)
class Trend:
    """How fast the training loss still falls: its drop per doubling of steps, from the history."""

    step: int  # the step the trend ends at
    drop_per_doubling: float  # nats/token: minus the slope of loss against log2(step)
    stderr: float  # the slope's standard error
    points: int  # loss values it was fitted on

    @property
    def falling_by(self) -> float:
        """A lower bound on the drop per doubling (two standard errors below the estimate)."""
        return self.drop_per_doubling - 2.0 * self.stderr

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "drop_per_doubling": self.drop_per_doubling,
            "stderr": self.stderr,
            "points": self.points,
        }


def loss_trend(history: Iterable[tuple[int, float]], step: int | None = None) -> Trend | None:
    """The loss drop per doubling of steps over the second half of training up to `step`.

    A least-squares line of loss against log2(step) through the losses logged in [step/2, step]
    (default step: the last one): one noisy batch does not decide, and its standard error says
    how sure the drop is. None with fewer than three finite values in that range.
    """
    pts = [(int(s), float(v)) for s, v in history if s > 0 and math.isfinite(float(v))]
    if step is None:
        if not pts:
            return None
        step = max(s for s, _ in pts)
    sel = [(math.log2(s), v) for s, v in pts if step / 2 <= s <= step]
    if len(sel) < 3:
        return None
    x = np.array([a for a, _ in sel])
    y = np.array([b for _, b in sel])
    xc = x - x.mean()
    sxx = float(xc @ xc)
    if sxx == 0.0:
        return None
    slope = float(xc @ (y - y.mean())) / sxx
    resid = y - y.mean() - slope * xc
    stderr = math.sqrt(float(resid @ resid) / (len(sel) - 2) / sxx) if len(sel) > 2 else math.inf
    return Trend(step, -slope, stderr, len(sel))


def weight_spike(block: nn.Module | Iterable[nn.Parameter], iters: int = 50) -> float | None:
    """The largest ratio, over a block's weight matrices, of sigma_max to the random-matrix edge.

    `block`: a module, or the parameters of one of its parts (`BlockView.part_parameters`).

    About 1 for weights still at a random Gaussian initialization; trained weights grow outliers
    (1.3-2.7 in a small GPT after 150 steps). sigma_max by power iteration from a fixed start
    (it can only come out low, which errs towards "looks untrained" by a percent or two). None
    when the block has no matrix large enough to tell.
    """
    gen = torch.Generator().manual_seed(0)
    ratios = []
    for p in block.parameters() if isinstance(block, nn.Module) else block:
        if p.ndim != 2 or min(p.shape) < MIN_SPIKE_DIM:
            continue
        w = p.detach().to(torch.float64)
        std = float(w.std())
        if not std > 0.0 or not math.isfinite(std):
            continue
        v = torch.randn(w.shape[1], 1, generator=gen, dtype=torch.float64, device="cpu").to(
            w.device
        )
        for _ in range(iters):  # (n, 1): v <- W^T W v, normalised
            v = w.T @ (w @ v)
            v = v / v.norm()
        edge = std * (math.sqrt(w.shape[0]) + math.sqrt(w.shape[1]))
        ratios.append(float((w @ v).norm()) / edge)
    return max(ratios) if ratios else None


def bigram_ce(fit: torch.Tensor, held: torch.Tensor, vocab: int, alpha: float = 1.0) -> float:
    """Held-out CE (nats/token) of a bigram table counted on the fit windows.

    fit, held: (S, T+1) token windows. p(b | a) = (c(a, b) + alpha p(b)) / (c(a) + alpha), with
    p(b) the add-one unigram of the fit tokens over the whole vocabulary: a real model of the
    text that uses no block at all, so a transformer that does not beat it clearly has blocks
    that have not learned much yet. Pairs are counted sparsely, so a 50,000-word vocabulary costs
    no more than bytes.
    """
    fit, held = fit.long().cpu(), held.long().cpu()
    uni = torch.bincount(fit.reshape(-1), minlength=vocab).double() + 1.0
    uni /= uni.sum()
    keys, counts = torch.unique((fit[:, :-1] * vocab + fit[:, 1:]).reshape(-1), return_counts=True)
    ctx = torch.bincount(fit[:, :-1].reshape(-1), minlength=vocab).double()
    a, b = held[:, :-1].reshape(-1), held[:, 1:].reshape(-1)
    pair = a * vocab + b
    at = torch.searchsorted(keys, pair).clamp(max=len(keys) - 1)
    zero = torch.zeros((), dtype=torch.float64, device=counts.device)
    seen = torch.where(keys[at] == pair, counts[at].double(), zero)
    p = (seen + alpha * uni[b]) / (ctx[a] + alpha)
    return float(-p.log().mean())
