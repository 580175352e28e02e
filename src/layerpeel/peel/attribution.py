"""Red rows downstream of an earlier red block: re-checked with that block's reference in place.

A block early in the model that training left far from its best (re-initialised late, say) makes
the blocks after it improvable too: each can make up for part of what it gets wrong. Their P1
gaps are real, but they point past the block to fix. So, when asked (`PeelConfig.attribute`),
the first block that is red by its gap gets its P1 reference substituted, the residual streams
are captured afresh in that model, and every later row red by its gap is peeled again there with
the same solver and settings. A row that is no longer red is marked `explained_by` that block
and turns yellow: it can be improved as the model is, but fixing the first block removes the
need. Both gaps are in the row (`gap` as measured, `gap_given_first` after the fix). A block that
is red because it is idle (its work, not its gap) is neither the one fixed nor re-checked.
[design]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from layerpeel.arch.table import model_view
from layerpeel.arch.views import ModelView, set_submodule
from layerpeel.data.monitoring import MonitoringSet
from layerpeel.peel.context import build_context
from layerpeel.peel.gap import block_gaps
from layerpeel.peel.plan import Analysis
from layerpeel.peel.rows import GapRow
from layerpeel.peel.scoring import gap_verdict
from layerpeel.verdict import Verdict


def red_by_gap(row: GapRow) -> bool:
    """Whether a P1 row is red for its gap (not for being idle)."""
    return row.verdict == Verdict.RED and not row.idle


def first_red(rows: list[GapRow]) -> GapRow | None:
    """The row to fix first: in the earliest block red by its gap, that block's largest gap."""
    red = [r for r in rows if red_by_gap(r)]
    if not red:
        return None
    block = min(r.block for r in red)
    return max((r for r in red if r.block == block), key=lambda r: r.gap)


@contextmanager
def substituted(
    model: nn.Module, view: ModelView, index: int, block: nn.Module
) -> Iterator[ModelView]:
    """`model` with block `index` replaced by `block` (restored on exit), and its view."""
    trained = view.blocks[index]
    name = next(n for n, m in model.named_modules() if m is trained)
    set_submodule(model, name, block)
    try:
        yield model_view(model)
    finally:
        set_submodule(model, name, trained)


def attribute(
    model: nn.Module,
    analysis: Analysis,
    data: MonitoringSet,
    rows: list[GapRow],
    references: dict[tuple[int, str], nn.Module],
    capture: dict[str, Any],
) -> None:
    """Fix the first row red by its gap and re-check the later ones; update `rows` in place.

    `references` holds the P1 reference of (at least) every red row by (block, part); `capture`
    holds `build_context`'s settings (batch, budget_bytes, score_dtype). Idle verdicts must be
    settled in `rows` already.
    """
    first = first_red(rows)
    if first is None:
        return
    index = first.block
    reference = references[(index, first.part)]
    scheme, thresholds = analysis.scheme, analysis.thresholds
    later: dict[int, list[GapRow]] = {}
    for r in rows:
        if red_by_gap(r) and r.block > index:
            later.setdefault(r.block, []).append(r)
    first.fixed_first = True
    if not later:
        return
    # only the gaps are compared: neither the work nor the full-precision twins are needed
    recheck = dataclasses.replace(analysis.cfg, work=False)
    with substituted(model, analysis.view, index, reference) as fixed:
        ctx = build_context(fixed, data, **capture)
        for b, red in sorted(later.items()):
            parts = tuple(r.part for r in red)
            again = block_gaps(ctx, b, parts, scheme, recheck, thresholds, twins=False)
            for r, r2 in zip(red, again, strict=True):
                r.gap_given_first = r2.gap
                r.ci_given_first = [r2.ci_low, r2.ci_high]
                if r2.verdict != Verdict.RED:
                    r.explained_by = index
                    r.verdict = gap_verdict(r, thresholds)
