"""P1, the layer gap: how much end cross-entropy re-optimizing one block (or sub-block) can save.

gap = CE_trained - CE(model with the reference block), on the held-out part. Two solvers:
target propagation (the local target G_l - eta dCE/dG_l, eta by line search on the fit part,
then a closed-form peel) and local Adam on the block's parameters through the frozen rest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from layerpeel.bounds.context import PeelContext
from layerpeel.bounds.scoring import Thresholds, bootstrap_interval, sequence_ce
from layerpeel.solvers import get_solver

log = logging.getLogger(__name__)


@dataclass
class GapOptions:
    """Settings of the P1 layer gap."""

    solver: str = "closed"  # "closed" (target propagation + closed form) or "adam"
    etas: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3)  # steps, relative to rms(G) / rms(grad)
    search_sequences: int = 64  # fit sequences for the eta line search (half fit, half score)
    ridge: float = 1e-6  # ridge of the closed-form solves
    adam_steps: int = 200  # steps of the Adam solver
    adam_lr: float = 1e-3  # learning rate of the Adam solver
    n_boot: int = 1000  # bootstrap resamples of held-out sequences
    seed: int = 0  # seed of the bootstrap and the Adam batches


def _rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


@torch.no_grad()
def reference_block(
    ctx: PeelContext, index: int, part: str, scheme: str | None, opts: GapOptions
) -> tuple[nn.Module, float | None]:
    """The P1 reference of block `index` for `part`, and the chosen eta (closed form only)."""
    x, targets = ctx.fit[index], ctx.fit_targets
    solve = get_solver(opts.solver)
    if opts.solver == "adam":
        return solve(
            ctx.view,
            index,
            x,
            targets,
            part,
            scheme=scheme,
            steps=opts.adam_steps,
            lr=opts.adam_lr,
            seed=opts.seed,
        ), None
    g = ctx.grads()[index]  # dCE/dG_{index+1}, (S, T, C)
    out = ctx.fit[index + 1]
    unit = _rms(out) / max(_rms(g), 1e-30)
    # the search fits on one half of its sequences and scores on the other, so it does not
    # reward a step that only helps the sequences it was fitted on
    n_search = min(opts.search_sequences, x.shape[0])
    a, b = slice(0, max(1, n_search // 2)), slice(max(1, n_search // 2), max(2, n_search))
    best_eta, best_ce = 0.0, float("inf")
    for c in opts.etas:
        eta = c * unit
        ref = solve(
            ctx.view, index, x[a], out[a] - eta * g[a], part, scheme=scheme, ridge=opts.ridge
        )
        ce = float(sequence_ce(ctx.view, index, x[b], targets[b], {index: ref}).mean())
        if ce < best_ce:
            best_eta, best_ce = eta, ce
    ref = solve(ctx.view, index, x, out - best_eta * g, part, scheme=scheme, ridge=opts.ridge)
    return ref, best_eta


def layer_gap(
    ctx: PeelContext,
    index: int,
    part: str,
    scheme: str | None,
    opts: GapOptions,
    thresholds: Thresholds,
) -> dict[str, Any]:
    """One P1 row: gap of block `index` / `part` with its bootstrap interval and verdict."""
    t0 = time.perf_counter()
    ref, eta = reference_block(ctx, index, part, scheme, opts)
    ce_ref = ctx.held_ce(index, ctx.held[index], {index: ref})
    diff = ctx.ce_trained_held - ce_ref
    gap = float(diff.mean())
    lo, hi = bootstrap_interval(diff, opts.n_boot, seed=opts.seed)
    row: dict[str, Any] = {
        "bound": "P1",
        "block": index,
        "part": part,
        "gap": gap,
        "ci_low": lo,
        "ci_high": hi,
        "verdict": thresholds.verdict(gap, lo),
        "ce_trained": float(ctx.ce_trained_held.mean()),
        "ce_reference": float(ce_ref.mean()),
        "solver": opts.solver,
        "eta": eta,
        "quant": scheme,
    }
    if scheme is not None:
        ref_fp, _ = reference_block(ctx, index, part, None, opts)
        ce_fp = float(ctx.held_ce(index, ctx.held[index], {index: ref_fp}).mean())
        row["ce_reference_fp"] = ce_fp
        row["opt_part"] = gap  # quantized reference vs trained: what optimization left
        row["quant_part"] = row["ce_reference"] - ce_fp  # full precision vs quantized reference
    row["time_s"] = time.perf_counter() - t0
    return row
