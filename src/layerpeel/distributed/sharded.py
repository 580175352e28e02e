"""`peel_sharded`: one analysis spread over the ranks of a torch.distributed process group.

Every rank captures the residual streams itself (the forward pass over the monitoring set is the
one phase that is not split), runs the units of the plan that fall to it, and the rows are
gathered on every rank and put back in the order a single process writes them. The report is the
one `layerpeel.peel.analysis.peel` returns on one process, except for timings: each phase's time is the
slowest rank's, and `timings["gather"]` is the merge.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from torch import nn

from layerpeel.data.monitoring import MonitoringSet
from layerpeel.distributed.gather import ShardingError, env_world_size, gather_work, require_group
from layerpeel.distributed.plan import Plan, Shape, make_plan, units
from layerpeel.peel.analysis import Analysis, ModelState, PeelConfig, make_report, prepare
from layerpeel.peel.cascade import cascade_rows, cascade_summary, final_target
from layerpeel.peel.context import PeelContext, build_context
from layerpeel.peel.gap import block_gaps
from layerpeel.peel.ladder import ladder
from layerpeel.peel.report import PeelReport

log = logging.getLogger(__name__)


def shape_of(a: Analysis, data: MonitoringSet) -> Shape:
    """The cost model's view of an analysis; the head as a GPT block would weigh it."""
    vocab, width = a.view.unembed_weight().shape
    return Shape(
        n_blocks=a.n_blocks,
        head=int(vocab) / (12.0 * int(width)),
        fit=len(data.fit_ids),
        held=len(data.held_ids),
        quantized=a.scheme is not None,
    )


def plan_analysis(
    model: nn.Module, data: MonitoringSet, cfg: PeelConfig, world_size: int
) -> tuple[Analysis, Plan]:
    """The plan of analysing `model` with `cfg` on `world_size` ranks."""
    a = prepare(model, cfg)
    return a, make_plan(units(shape_of(a, data), a.blocks, cfg, a.cap, world_size), world_size)


def run_units(
    ctx: PeelContext, a: Analysis, cfg: PeelConfig, plan: Plan, mine: tuple[int, ...]
) -> dict[str, Any]:
    """Rows of the units `mine` (indices into the plan), with each phase's time on this rank."""
    out: dict[str, Any] = {"units": {}, "timings": {}, "alpha": None}
    final_fit = None
    for i in mine:
        unit = plan.units[i]
        t0 = time.perf_counter()
        if unit.phase == "p1":
            b = unit.key[0]
            rows = block_gaps(ctx, b, tuple(cfg.parts), a.scheme, a.options, a.thresholds)
        elif unit.phase == "p2":
            rows = ladder(ctx, a.scheme, cfg.ridge, from_blocks=[unit.key[0]])
        else:
            if final_fit is None:  # every rank with cascade paths finds the same final target
                final_fit, out["alpha"] = final_target(ctx, cfg.cascade_target, a.scheme, cfg.ridge)
            rows = cascade_rows(ctx, list(unit.subsets), final_fit, a.scheme, cfg.ridge)
        out["units"][str(i)] = rows
        out["timings"][unit.phase] = out["timings"].get(unit.phase, 0.0) + time.perf_counter() - t0
    return out


def merge(
    plan: Plan, results: list[dict[str, Any]], cfg: PeelConfig, ce_trained: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None]:
    """P1 rows, ladder rows and cascade in the single-process order, from every rank's units."""
    by_unit: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_unit.update({int(k): v for k, v in r["units"].items()})
    missing = [i for i in range(len(plan.units)) if i not in by_unit]
    if missing:  # the plan gives every unit to one rank: this means the ranks disagreed
        raise ShardingError(f"units {missing} came back from no rank")
    layers: list[dict[str, Any]] = []
    ladder_rows: list[dict[str, Any]] = []
    subsets: dict[tuple[int, ...], dict[str, Any]] = {}
    for i, unit in enumerate(plan.units):
        if unit.phase == "p1":
            layers += by_unit[i]
        elif unit.phase == "p2":
            ladder_rows += by_unit[i]
        else:
            subsets.update({tuple(row["anchors"]): row for row in by_unit[i]})
    casc = None
    if cfg.cascade:
        alphas = [r["alpha"] for r in results if r["alpha"] is not None]
        if len(set(alphas)) > 1:
            log.warning(
                "ranks chose different cascade targets %s; keeping rank order's first", alphas
            )
        # `anchor_subsets` order: by size, then lexicographic
        rows = [subsets[s] for s in sorted(subsets, key=lambda s: (len(s), s))]
        casc = cascade_summary(rows, ce_trained, cfg.cascade_target, alphas[0])
    return layers, ladder_rows, casc


def peel_sharded(
    model: nn.Module,
    data: MonitoringSet,
    cfg: PeelConfig | None = None,
    group: Any = None,
) -> PeelReport:
    """`layerpeel.peel.analysis.peel` spread over the ranks of `group`; every rank calls it together.

    Raises `ShardingError` when no process group is initialised or when a rank disagrees with
    rank 0 on the world size, the settings, the monitoring set or the model's shape, and
    `RankFailure` (naming the ranks) when a rank's work raised; never leaves a rank waiting.
    Every rank returns the same report.
    """
    cfg = cfg or PeelConfig()
    rank, world = require_group(group)
    a, plan = plan_analysis(model, data, cfg, world)
    signature = {
        "world_size": world,
        "launcher_world_size": env_world_size() or world,
        "config": cfg.to_dict(),
        "monitoring": data.digest(),
        "model": [type(model).__name__, a.n_blocks, sum(p.numel() for p in model.parameters())],
        "plan": plan.digest(),
    }
    mine = plan.ranks[rank]
    log.info(
        "rank %d of %d: %d of %d units, modelled load %.3g (balance %.3f)",
        rank,
        world,
        len(mine),
        len(plan.units),
        plan.load(rank),
        plan.balance,
    )

    def work() -> dict[str, Any]:
        with ModelState(model):
            t0 = time.perf_counter()
            ctx = build_context(
                a.view, data, cfg.batch, int(cfg.budget_mb * 2**20), cfg.score_dtype
            )
            capture = time.perf_counter() - t0
            out = run_units(ctx, a, cfg, plan, mine)
        out["timings"]["capture"] = capture
        out["ce_trained"] = float(ctx.ce_trained_held.mean())
        return out

    results = gather_work(work, group, signature)
    t0 = time.perf_counter()
    layers, ladder_rows, casc = merge(plan, results, cfg, results[0]["ce_trained"])
    phases = ["capture", "p1"] + ["p2"] * cfg.ladder + ["p3"] * cfg.cascade
    timings = {ph: max(r["timings"].get(ph, 0.0) for r in results) for ph in phases}
    timings["gather"] = time.perf_counter() - t0
    return make_report(model, data, cfg, a, layers, ladder_rows, casc, timings)
