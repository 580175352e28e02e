"""P3, the YES cascade on the residual stream: blocks peeled in sequence onto anchor subsets.

As in the YES bounds for MLPs (docs/yes.md) with blocks in place of layers: starting from
G_0, blocks 1..s_1 are peeled in turn onto the anchor G_{s_1}, blocks s_1+1..s_2 onto G_{s_2}, and
the blocks after the last anchor onto the final target. J(sigma) is the held-out CE of the
cascade network, a real model of the same class. YES-k = min(min_{|sigma|=k} J, YES-(k-1)).
Paths sharing a prefix of anchors share their first blocks (a memo keyed by block and anchors).

The final target is (1 - alpha) G_L + alpha Z with Z the preimage of the next-token targets
through the trained head, alpha in `ALPHAS` chosen by the held-out CE of the last block peeled
onto it from the trained G_{L-1} (fitted on one half of the search sequences, scored on the other).
A least-squares fit onto Z alone averages the preimages of the possible next tokens, which the
final norm then rescales, so the pure preimage is often a poor target; the blend keeps it as an
option without forcing it. `final="trained"` uses alpha = 0.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from typing import Any

import torch
from torch import nn

from layerpeel.peel.context import PeelContext
from layerpeel.peel.rows import Cascade, CascadeRow
from layerpeel.peel.scoring import sequence_ce
from layerpeel.solvers.closed import BlockProblem, ClosedFormOptions
from layerpeel.verdict import Verdict
from layerpeel.yes.bounds import verdict

ALPHAS = (0.0, 0.1, 0.3, 1.0)  # weights of the preimage in the final target


@torch.no_grad()
def preimage_target(ctx: PeelContext, part: str, ridge: float = 1e-3) -> torch.Tensor:
    """Residual-space preimage of the next-token targets through the trained head.

    Ridge least squares Z = onehot(y) W (W^T W + rho I)^-1 with W the unembedding (V, C), mapped
    back through the final norm's affine part and scaled per token to the trained G_L's norm.
    """
    w = ctx.view.unembed_weight().double()  # (V, C)
    targets = ctx.fit_targets if part == "fit" else ctx.held_targets
    g_last = ctx.fit[-1] if part == "fit" else ctx.held[-1]
    gram = w.T @ w
    rho = ridge * float(torch.diagonal(gram).mean())
    solve = torch.linalg.solve(
        gram + rho * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device), w.T
    )
    z = solve.T[targets]  # (S, T, C): row y of W (W^T W + rho I)^-1
    # the final norm adds its bias after normalising, so only the direction before it can be
    # chosen: divide by its gain and remove the mean, which the normalisation discards anyway
    weight = getattr(ctx.view.final_norm, "weight", None)
    if weight is not None:
        w_gain = weight.double()
        z = z / torch.where(w_gain.abs() < 1e-6, torch.full_like(w_gain, 1e-6), w_gain)
    z = z - z.mean(-1, keepdim=True)
    scale = g_last.double().norm(dim=-1, keepdim=True) / z.norm(dim=-1, keepdim=True).clamp_min(
        1e-12
    )
    return (z * scale).float()


@torch.no_grad()
def final_target(
    ctx: PeelContext,
    final: str,
    scheme: str | None,
    ridge: float = 1e-3,
    search_sequences: int = 64,
) -> tuple[torch.Tensor, float]:
    """The cascade's final target on the fit part and its preimage weight alpha."""
    if final == "trained":
        return ctx.fit[-1], 0.0
    z = preimage_target(ctx, "fit")
    last = ctx.n_blocks - 1
    x, g_last = ctx.fit[last], ctx.fit[-1]
    n_search = min(search_sequences, x.shape[0])
    half = max(1, n_search // 2)
    score = slice(half, max(half + 1, n_search))
    opts = ClosedFormOptions(ridge=ridge)
    problem = BlockProblem(ctx.view, last, x[:half], [g_last[:half], z[:half]], opts)
    best_alpha, best_ce = 0.0, float("inf")
    for alpha in ALPHAS:
        ref = problem.solve("block", (1.0 - alpha, alpha), scheme)
        ce = sequence_ce(ctx.view, last, x[score], ctx.fit_targets[score], {last: ref}, ctx.batch)
        if float(ce.mean()) < best_ce:
            best_alpha, best_ce = alpha, float(ce.mean())
    return (1.0 - best_alpha) * g_last + best_alpha * z, best_alpha


def anchor_subsets(n_blocks: int, max_anchors: int | None) -> list[tuple[int, ...]]:
    """Increasing subsets of hidden anchors 1..L-1, by size, up to `max_anchors`."""
    hidden = range(1, n_blocks)
    k_max = n_blocks - 1 if max_anchors is None else min(max_anchors, n_blocks - 1)
    return [s for k in range(k_max + 1) for s in itertools.combinations(hidden, k)]


@torch.no_grad()
def cascade(
    ctx: PeelContext,
    scheme: str | None,
    max_anchors: int | None = None,
    final: str = "preimage",
    ridge: float = 1e-3,
    progress: Any = None,
    keep: dict[Any, Any] | None = None,
) -> Cascade:
    """YES-0..YES-k on the residual stream, the best subsets and the whole-model colour.

    `keep`, when given, receives the list of reference blocks of each path under its anchors.
    """
    final_fit, alpha = final_target(ctx, final, scheme, ridge)
    subsets = anchor_subsets(ctx.n_blocks, max_anchors)
    rows = cascade_rows(ctx, subsets, final_fit, scheme, ridge, progress, keep)
    return cascade_summary(rows, float(ctx.ce_trained_held.mean()), final, alpha, ctx.view.n_blocks)


@torch.no_grad()
def cascade_rows(
    ctx: PeelContext,
    subsets: list[tuple[int, ...]],
    final_fit: torch.Tensor,
    scheme: str | None,
    ridge: float = 1e-3,
    progress: Any = None,
    keep: dict[Any, Any] | None = None,
) -> list[CascadeRow]:
    """The held-out CE of the cascade of each anchor subset, one row each.

    `final_fit` is the final target on the fit part (`final_target`). Paths that share a prefix
    of anchors share their first references, so subsets with different first anchors share
    nothing (a shard can take them apart without repeating work).
    """
    n = ctx.n_blocks
    opts = ClosedFormOptions(ridge=ridge)
    memo: dict[tuple[int, tuple[int, ...]], tuple[nn.Module, torch.Tensor, torch.Tensor]] = {}
    # How many of the paths still to walk use each stage: a stage no later path uses is dropped,
    # so memory holds one path plus the stages shared with paths to come, never every path.
    uses = Counter(stage_key(i, s) for s in subsets for i in range(n))

    def stage(i: int, subset: tuple[int, ...]) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        """Reference of block i (0-based) on the path of `subset`, with its fit and held outputs.

        It depends only on the anchors up to the first one at or after block i+1, so paths that
        share that prefix share the reference.
        """
        key = stage_key(i, subset)
        if key not in memo:
            x_fit, x_held = (ctx.fit[0], ctx.held[0]) if i == 0 else stage(i - 1, subset)[1:]
            nxt = [a for a in subset if a >= i + 1]  # the anchor block i is peeled onto
            target = ctx.fit[nxt[0]] if nxt else final_fit
            ref = BlockProblem(ctx.view, i, x_fit, [target], opts).solve("block", (1.0,), scheme)
            run = ctx.view.run_block
            memo[key] = (ref, run(ref, x_fit), run(ref, x_held))
        return memo[key]

    rows: list[CascadeRow] = []
    for subset in subsets:
        t0 = time.perf_counter()
        ce = float(ctx.held_ce(n, stage(n - 1, subset)[2], {}).mean())
        if keep is not None:
            keep[subset] = [stage(i, subset)[0] for i in range(n)]
        rows.append(CascadeRow(list(subset), ce, time.perf_counter() - t0))
        for i in range(n):
            key = stage_key(i, subset)
            uses[key] -= 1
            if uses[key] == 0:
                memo.pop(key, None)
        if progress is not None:
            progress.update(1)
    return rows


def stage_key(i: int, subset: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """What the reference of block i (0-based) on the path of `subset` depends on.

    Block i is peeled onto the first anchor at or after block i+1 (or the final target), from
    the output of the path before it: the anchors up to that one, and nothing after.
    """
    nxt = [a for a in subset if a >= i + 1]
    return i, tuple(a for a in subset if not nxt or a <= nxt[0])


def cascade_summary(
    rows: list[CascadeRow], ce_trained: float, final: str, alpha: float, n_blocks: int
) -> Cascade:
    """YES-k as running minima over subset sizes, the best subsets and the colour, from the rows.

    The colour's green line is the best path that can come out worse than the trained model.
    With every block an anchor and the trained G_L as the final target (alpha 0), each block is
    peeled onto its own trained output from its trained input, so the trained block is among its
    candidates and that path reproduces the trained model: comparing with it is no evidence, and
    it is left out of the green line (`green_line`).
    """
    k_max = max(len(r.anchors) for r in rows)
    yes: list[float] = []
    best: list[list[int]] = []
    for k in range(k_max + 1):
        cands = [r for r in rows if len(r.anchors) == k]
        top = min(cands, key=lambda r: r.ce)
        if yes and yes[-1] <= top.ce:
            yes.append(yes[-1])
            best.append(best[-1])
        else:
            yes.append(top.ce)
            best.append(top.anchors)
    full = list(range(1, n_blocks))
    trivial = (final == "trained" or alpha == 0.0) and n_blocks > 1
    line = min((r.ce for r in rows if not (trivial and r.anchors == full)), default=yes[0])
    colour = Verdict(verdict(ce_trained, yes[0], min(line, yes[0])))
    casc = Cascade(yes[0], yes[1:], best, ce_trained, colour, final, alpha, rows)
    casc.green_line = min(line, yes[0])
    return casc
