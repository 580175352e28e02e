"""Spreading layerpeel over many processes: sharded peels (torch.distributed), sweeps (Ray).

- `peel_sharded`: one analysis whose units (P1 blocks, ladder rows, cascade path groups) are
  spread over the ranks of a process group by a cost-balanced `Plan`; every rank gets the report
  one process would write.
- `gather_work` / `all_gather_json`: the failure-safe collectives under it, also used by the
  monitor inside distributed training.
- `layerpeel.distributed.sweep`: every checkpoint of a run as a Ray task (Ray is optional).
"""

from layerpeel.distributed.gather import (
    RankFailure,
    ShardingError,
    all_gather_json,
    gather_work,
    require_group,
)
from layerpeel.distributed.plan import Plan, Shape, Unit, make_plan, units
from layerpeel.distributed.sharded import peel_sharded, plan_analysis

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
