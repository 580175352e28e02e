"""Running the units of a plan on one rank, and merging every rank's rows in the single-process order.

A world of one process runs every unit here; the ranks of a sharded analysis each run their
share (`Plan.ranks`). Either way the rows are put back in the order a single process writes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from layerpeel.peel.cascade import cascade_rows, cascade_summary, final_target
from layerpeel.peel.config import PeelConfig
from layerpeel.peel.context import PeelContext
from layerpeel.peel.gap import block_gaps
from layerpeel.peel.ladder import ladder
from layerpeel.peel.plan import Analysis, Plan, Unit
from layerpeel.peel.rows import Cascade, CascadeRow, GapRow, LadderRow
from layerpeel.peel.world import ShardingError
from layerpeel.verdict import Verdict

log = logging.getLogger(__name__)

BARS = {"p1": "P1 layer gaps", "p2": "P2 ladder", "p3": "P3 cascade"}


ROWS: dict[str, type[GapRow] | type[LadderRow] | type[CascadeRow]] = {
    "p1": GapRow,
    "p2": LadderRow,
    "p3": CascadeRow,
}  # the rows of each phase's units


@dataclass
class Shard:
    """What one rank computed: the rows of each of its units, its time per phase."""

    units: dict[int, list[Any]] = field(default_factory=dict)  # plan index -> rows (`ROWS`)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase on this rank
    alpha: float | None = None  # the cascade's final-target weight, when it ran P3 units
    ce_trained: float = 0.0  # the trained model's held-out CE

    def to_dict(self) -> dict[str, Any]:
        return {
            "units": {str(i): [r.to_dict() for r in rows] for i, rows in self.units.items()},
            "timings": self.timings,
            "alpha": self.alpha,
            "ce_trained": self.ce_trained,
        }

    @classmethod
    def reader(cls, plan: Plan) -> Callable[[dict[str, Any]], Shard]:
        """How a rank reads another's `to_dict`: each unit's rows by its phase in `plan`."""

        def read(data: dict[str, Any]) -> Shard:
            return cls.from_dict(data, plan)

        return read

    @classmethod
    def from_dict(cls, data: dict[str, Any], plan: Plan) -> Shard:
        units = {int(i): rows for i, rows in data["units"].items()}
        return cls(
            units={
                i: [ROWS[plan.units[i].phase].from_dict(r) for r in rows]
                for i, rows in units.items()
            },
            timings=dict(data["timings"]),
            alpha=data["alpha"],
            ce_trained=float(data["ce_trained"]),
        )


def _steps(unit: Unit, cfg: PeelConfig, n_blocks: int) -> int:
    """Progress steps of a unit: one per P1 part, ladder row cell or cascade path."""
    if unit.phase == "p1":
        return len(cfg.parts)
    if unit.phase == "p2":
        return n_blocks - unit.key[0]
    return len(unit.subsets)


def run_units(
    ctx: PeelContext,
    a: Analysis,
    cfg: PeelConfig,
    plan: Plan,
    mine: tuple[int, ...],
    keep: dict[str, dict[Any, Any] | None] | None = None,
    red_refs_only: bool = False,
    progress: bool = False,
) -> Shard:
    """The rows of the units `mine` (indices into the plan), with each phase's time on this rank.

    `keep`, when given, receives reference blocks: "p1" and "p1_fp" by (block, part), "p2" by
    (from_block, to_block), "p3" the list of blocks of each anchor subset; a phase whose entry is
    None keeps none. With `red_refs_only` "p1" keeps only the references of red rows.
    """
    from tqdm.auto import tqdm

    keep = keep or {}
    out = Shard(ce_trained=float(ctx.ce_trained_held.mean()))
    bars = {
        ph: tqdm(
            total=sum(
                _steps(plan.units[i], cfg, a.n_blocks) for i in mine if plan.units[i].phase == ph
            ),
            desc=desc,
            disable=not progress,
        )  # fmt: skip
        for ph, desc in BARS.items()
        if any(plan.units[i].phase == ph for i in mine)
    }
    final_fit = None
    try:
        for i in mine:
            unit = plan.units[i]
            t0 = time.perf_counter()
            bar = bars[unit.phase]
            rows: list[Any]
            if unit.phase == "p1":
                b = unit.key[0]
                p1 = keep.get("p1")
                rows = block_gaps(ctx, b, tuple(cfg.parts), a.scheme, cfg, a.thresholds,
                                  p1, keep.get("p1_fp"))  # fmt: skip
                if p1 is not None and red_refs_only:
                    for r in rows:
                        if r.verdict != Verdict.RED:
                            del p1[(b, r.part)]
                bar.update(len(rows))
            elif unit.phase == "p2":
                rows = ladder(ctx, a.scheme, cfg.ridge, bar, keep.get("p2"), [unit.key[0]])
            else:
                if final_fit is None:  # every rank with cascade paths finds the same final target
                    final_fit, out.alpha = final_target(
                        ctx, cfg.cascade_target, a.scheme, cfg.ridge
                    )
                rows = cascade_rows(ctx, list(unit.subsets), final_fit, a.scheme, cfg.ridge, bar,
                                    keep.get("p3"))  # fmt: skip
            out.units[i] = rows
            spent = time.perf_counter() - t0
            out.timings[unit.phase] = out.timings.get(unit.phase, 0.0) + spent
    finally:
        for bar in bars.values():
            bar.close()
    return out


def merge(
    plan: Plan, shards: list[Shard], cfg: PeelConfig, n_blocks: int
) -> tuple[list[GapRow], list[LadderRow], Cascade | None]:
    """P1 rows, ladder rows and cascade in the single-process order, from every rank's units."""
    by_unit: dict[int, list[Any]] = {}
    for s in shards:
        by_unit.update(s.units)
    missing = [i for i in range(len(plan.units)) if i not in by_unit]
    if missing:  # the plan gives every unit to one rank: this means the ranks disagreed
        raise ShardingError(f"units {missing} came back from no rank")
    layers: list[GapRow] = []
    ladder_rows: list[LadderRow] = []
    subsets: dict[tuple[int, ...], CascadeRow] = {}
    for i, unit in enumerate(plan.units):
        if unit.phase == "p1":
            layers += by_unit[i]
        elif unit.phase == "p2":
            ladder_rows += by_unit[i]
        else:
            subsets.update({tuple(row.anchors): row for row in by_unit[i]})
    casc = None
    if cfg.cascade_on(n_blocks):
        alphas = [s.alpha for s in shards if s.alpha is not None]
        if len(set(alphas)) > 1:
            log.warning(
                "ranks chose different cascade targets %s; keeping rank order's first", alphas
            )
        # `anchor_subsets` order: by size, then lexicographic
        rows = [subsets[s] for s in sorted(subsets, key=lambda s: (len(s), s))]
        casc = cascade_summary(rows, shards[0].ce_trained, cfg.cascade_target, alphas[0], n_blocks)
    return layers, ladder_rows, casc
