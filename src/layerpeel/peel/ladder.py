"""P2, the projection ladder: whether block l alone can do the work of blocks l..j.

For each l and j >= l, block l is peeled (closed form) to map G_{l-1} onto G_j; blocks j+1..L and
the head then run on its output. CE_{l->j} is scored on the held-out part. The rows of one l share
one `BlockProblem`: its targets G_l..G_L are directions of the same problem.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch

from layerpeel.peel.context import PeelContext
from layerpeel.peel.rows import LadderRow
from layerpeel.solvers.closed import BlockProblem, ClosedFormOptions


@torch.no_grad()
def ladder(
    ctx: PeelContext,
    scheme: str | None,
    ridge: float = 1e-3,
    progress: Any = None,
    keep: dict[Any, Any] | None = None,
    from_blocks: Iterable[int] | None = None,
) -> list[LadderRow]:
    """The ladder's rows, CE(l -> j) for l in `from_blocks` and j >= l, blocks 0-based.

    `keep`, when given, receives each reference block under (from_block, to_block).
    `from_blocks` limits the rows to those blocks l (all by default; a shard computes a few).
    """
    rows: list[LadderRow] = []
    ce_trained = float(ctx.ce_trained_held.mean())
    n = ctx.n_blocks
    for i in range(n) if from_blocks is None else from_blocks:
        t0 = time.perf_counter()
        targets = ctx.fit[i + 1 :]  # G_{i+1} .. G_L
        problem = BlockProblem(ctx.view, i, ctx.fit[i], targets, ClosedFormOptions(ridge=ridge))
        setup = (time.perf_counter() - t0) / len(targets)
        for j in range(i, n):
            t0 = time.perf_counter()
            coef = [1.0 if k == j - i else 0.0 for k in range(len(targets))]
            ref = problem.solve("block", coef, scheme)
            if keep is not None:
                keep[(i, j)] = ref
            x = ctx.view.run_block(ref, ctx.held[i])
            ce = float(ctx.held_ce(j + 1, x, {}).mean())
            rows.append(LadderRow(i, j, ce, ce_trained, time.perf_counter() - t0 + setup))
            if progress is not None:
                progress.update(1)
    return rows
