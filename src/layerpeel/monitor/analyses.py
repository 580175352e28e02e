"""What one monitor analysis computes: peeling units for transformers, YES bounds for MLPs.

An analysis object names its next unit of work (`next_unit`), runs it on a model copy (`run`),
and moves on (`advance`). Transformer units rotate over the blocks (P1), with P3 and P2 once per
rotation as the preset asks; the first unit after warm-up sweeps P1 over every block.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from layerpeel.arch.table import model_view
from layerpeel.data.monitoring import MonitoringSet
from layerpeel.errors import ConfigError, DataError
from layerpeel.peel.analysis import PeelConfig, peel
from layerpeel.peel.evidence import Trend
from layerpeel.peel.rows import Cascade, GapRow
from layerpeel.peel.scoring import Thresholds, block_works, mark_idle
from layerpeel.peel.verdict import judge
from layerpeel.yes.bounds import YesTracker, to_db

# What each preset computes, cheapest first (docs/monitor.md has the measured costs).
PRESETS: dict[str, dict[str, Any]] = {
    "economy": {"solver": "closed", "cascade": False, "ladder": False},  # P1 closed form only
    "standard": {"solver": "closed", "cascade": True, "ladder": False},  # plus P3
    "full": {"solver": "adam", "cascade": True, "ladder": True},  # plus P2 and the Adam solver
}


@dataclass(frozen=True)
class Unit:
    """One analysis: its kind ("sweep", "p1", "p3", "p2" or "yes") and the blocks it covers."""

    kind: str
    blocks: tuple[int, ...] = ()


def model_context(model: nn.Module) -> int | None:
    """The longest sequence a model accepts, from its config (None when it names none)."""
    cfg = getattr(model, "config", None)
    for name in ("block_size", "n_positions", "max_position_embeddings"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_monitoring_set(model: nn.Module, mset: MonitoringSet, vocab_size: int) -> None:
    """A clear error if the monitoring set does not fit the model: token ids or length."""
    lo, hi = int(mset.windows.min()), int(mset.windows.max())
    if lo < 0 or hi >= vocab_size:
        raise DataError(
            f"the monitoring set holds token ids {lo}..{hi}, but the model's vocabulary has "
            f"{vocab_size} tokens (ids 0..{vocab_size - 1}): was it tokenized for another model?"
        )
    context = model_context(model)
    if context is not None and mset.seq_len > context:
        raise DataError(
            f"monitoring sequences have {mset.seq_len} tokens, longer than the model's context "
            f"of {context}; cut them to at most {context} tokens"
        )


class PeelAnalysis:
    """Peeling analyses of a transformer on a fixed monitoring set, one unit at a time."""

    def __init__(
        self, model: nn.Module, mset: MonitoringSet, preset: str, base: PeelConfig
    ) -> None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown monitor preset {preset!r}; known: {', '.join(PRESETS)}")
        view = model_view(model)  # a clear error for a model the table does not know
        check_monitoring_set(model, mset, int(view.unembed_weight().shape[0]))
        base.validate()
        self.mset, self.preset, self.base = mset, preset, base
        self.n_blocks = view.n_blocks
        spec = PRESETS[preset]
        self.rotation: list[Unit] = [Unit("p1", (b,)) for b in range(self.n_blocks)]
        if spec["cascade"]:
            self.rotation.append(Unit("p3"))
        if spec["ladder"]:
            self.rotation.append(Unit("p2"))
        self.position = -1  # -1: the first unit is the sweep over every block
        # the latest P1 row of every (block, part) and the latest cascade, across units: the
        # whole-model verdict of an event judges all of them, not only this unit's
        self.latest: dict[tuple[int, str], GapRow] = {}
        self.latest_cascade: Cascade | None = None
        self.works: dict[int, float] = {}  # latest work of each block: peers of the idle verdict

    def next_unit(self) -> Unit:
        if self.position < 0:
            return Unit("sweep", tuple(range(self.n_blocks)))
        return self.rotation[self.position % len(self.rotation)]

    def advance(self) -> None:
        self.position += 1

    def config(self, unit: Unit) -> PeelConfig:
        """The `PeelConfig` that computes exactly `unit`."""
        spec = PRESETS[self.preset]
        return dataclasses.replace(
            self.base,
            solver=spec["solver"],
            blocks=unit.blocks,
            ladder=unit.kind == "p2",
            cascade=unit.kind == "p3",
        )

    def full_config(self) -> PeelConfig:
        """Everything the preset computes, over every block at once (for saved checkpoints)."""
        spec = PRESETS[self.preset]
        return dataclasses.replace(
            self.base,
            solver=spec["solver"],
            blocks=None,
            ladder=spec["ladder"],
            cascade=spec["cascade"],
        )

    def run(
        self, model: nn.Module, unit: Unit, group: Any = None, trend: Trend | None = None
    ) -> dict[str, Any]:
        """`unit` on `model`; spread over the ranks of `group` when one is given.

        The event carries the unit's report and the whole-model verdict of the latest rows of
        every block (this unit's and earlier ones'), with `trend`, the training loss's.
        """
        cfg = self.config(unit)
        report = peel(model, self.mset, cfg, sharded=group is not None, group=group, trend=trend)
        # A unit of one block judges whether it is idle against the other blocks' latest work.
        self.works.update(block_works(report.layers))
        thresholds = Thresholds.of(cfg)
        mark_idle(report.layers, thresholds, peers=self.works)
        self.latest.update({(r.block, r.part): r for r in report.layers})
        self.latest_cascade = report.cascade or self.latest_cascade
        # the unit's report already weighed every block's weights and the bigram baseline
        unit_verdict = report.whole()
        latest = list(self.latest.values())
        whole = judge(
            latest, self.latest_cascade, thresholds, unit_verdict.spikes, trend,
            unit_verdict.ce_bigram, unit_verdict.part_spikes,
        )  # fmt: skip
        return {
            "event": "analysis",
            "unit": unit.kind,
            "report": report.to_dict(),
            "verdict": whole.to_dict(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "works": {str(b): w for b, w in self.works.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state.get("position", -1))
        self.works = {int(b): float(w) for b, w in state.get("works", {}).items()}


@dataclass
class YesData:
    """The training set of an MLP, rows are samples: x (N, n), y (N, m)."""

    x: torch.Tensor
    y: torch.Tensor
    max_anchors: int | None = None  # cap on the YES anchor subset size; None = all


class YesAnalysis:
    """The YES bounds of an MLP on its whole training set (`layerpeel.yes.bounds.YesTracker`)."""

    def __init__(self, model: nn.Module, data: YesData) -> None:
        hidden = getattr(model, "hidden", None)
        if not callable(hidden):
            raise ConfigError(
                f"YES monitoring needs a layerpeel MLP (with .hidden(x)), got {type(model).__name__}"
            )
        self.data = data
        self.tracker = YesTracker(data.x.T, data.y.T, max_anchors=data.max_anchors)
        self.last: dict[str, Any] | None = None  # the last check's full row

    def next_unit(self) -> Unit:
        return Unit("yes")

    def advance(self) -> None:
        """Every YES check is the same unit."""

    def run(self, model: nn.Module, unit: Unit, group: Any = None) -> dict[str, Any]:
        """The YES check; every rank of a distributed job computes it alike (no collective)."""
        x, y = self.data.x, self.data.y
        hidden = [h.T for h in model.hidden(x)]  # type: ignore[operator]  # L-1 of (m, N)
        loss = float((model(x) - y).double().square().sum(1).mean())
        check = self.tracker.check(hidden, loss, epoch=len(self.tracker.history))
        self.last = check.to_dict()
        return {
            "event": "yes",
            "loss": to_db(check.train_loss),
            "yes0": to_db(check.yes0_min),
            "yes": [to_db(v) for v in check.yes_min],
            "verdict": check.verdict,
            "db": True,
            "mse": check.train_loss,
        }

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The YES running minima restart after a resume (they only tighten again)."""
