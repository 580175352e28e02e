"""Spreading layerpeel over many processes: sharded peels (torch.distributed), sweeps (Ray).

Built on peel's units (`layerpeel.peel.plan`) and worlds (`layerpeel.peel.world`):
- `peel_sharded` (`peel(..., sharded=True)`): one analysis whose units (P1 blocks, ladder rows,
  cascade path groups) are spread over the ranks of a process group by a cost-balanced `Plan`;
  every rank gets the report one process would write.
- `gather_work` / `all_gather_json`: the failure-safe collectives under it, also used by the
  monitor inside distributed training.
- `layerpeel.distributed.launch`: joining the process group torchrun describes.
- `layerpeel.distributed.sweep`: every checkpoint of a run as a Ray task (Ray is optional).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from layerpeel.data.monitoring import MonitoringSet
from layerpeel.peel.analysis import peel
from layerpeel.peel.config import PeelConfig
from layerpeel.peel.plan import Plan, Shape, Unit, make_plan, plan_analysis, units
from layerpeel.peel.report import PeelReport
from layerpeel.peel.world import (
    RankFailure,
    ShardingError,
    all_gather_json,
    gather_work,
    require_group,
)

__all__ = [
    "Plan",
    "RankFailure",
    "Shape",
    "ShardingError",
    "Unit",
    "all_gather_json",
    "gather_work",
    "make_plan",
    "peel_sharded",
    "plan_analysis",
    "require_group",
    "units",
]


def peel_sharded(
    model: nn.Module, data: MonitoringSet, cfg: PeelConfig | None = None, group: Any = None
) -> PeelReport:
    """`peel` spread over the ranks of `group`; every rank calls it together.

    Raises `ShardingError` when no process group is initialised or when a rank disagrees with
    rank 0 on the world size, the settings, the monitoring set or the model's shape, and
    `RankFailure` (naming the ranks) when a rank's work raised; never leaves a rank waiting.
    Every rank returns the same report.
    """
    return peel(model, data, cfg, sharded=True, group=group)
