"""A Lightning `Callback` that runs the layerpeel monitor; a resumed run keeps its history.

    trainer = L.Trainer(callbacks=[LayerpeelCallback(mset, "runs/pl")])

The model analysed is `model` when given, else the LightningModule itself or its first
sub-module (in `modules()` order) whose class is in layerpeel's architecture table. The
callback's `state_dict` holds the monitor's budget, rotation and latest verdicts, so resuming from
a Lightning checkpoint carries on where the run stopped (monitor.jsonl lines written after that
checkpoint are dropped).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from layerpeel.arch.table import ARCHITECTURES
from layerpeel.errors import ConfigError

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - lightning is in the lightning extra
    raise ConfigError(
        "the Lightning integration needs lightning: pip install 'layerpeel[lightning]'"
    ) from None

from layerpeel.data.monitoring import MonitoringSet
from layerpeel.monitor import Monitor, MonitorConfig, Schedule


def find_model(module: nn.Module) -> nn.Module:
    """The outermost module (the module itself first) whose class the architecture table knows."""
    for sub in module.modules():
        if type(sub).__name__ in ARCHITECTURES:
            return sub
    raise ConfigError(
        f"no module of {type(module).__name__} is a supported model; supported: "
        + ", ".join(sorted(ARCHITECTURES))
        + " (or pass model= to the callback)"
    )


class LayerpeelCallback(pl.Callback):  # type: ignore[misc]
    """Calls `Monitor.step(trainer.global_step)` after every training batch."""

    def __init__(
        self,
        data: MonitoringSet,
        run_dir: str | Path,
        config: MonitorConfig | None = None,
        schedule: Schedule | None = None,
        model: nn.Module | None = None,
    ) -> None:
        self.data, self.run_dir, self.config, self.schedule = data, Path(run_dir), config, schedule
        self.monitor: Monitor | None = None
        self._state: dict[str, Any] | None = None  # loaded before the monitor was built
        self.last_step = 0
        if model is not None:
            self.monitor = self._build(model)

    def _build(self, model: nn.Module) -> Monitor:
        return Monitor(model, self.data, self.run_dir, self.config, self.schedule)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and self.monitor is None:
            self.monitor = self._build(find_model(pl_module))
        if self.monitor is not None and self._state is not None:
            self._restore(self._state)
            self._state = None

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.monitor is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.last_step = int(trainer.global_step)
        self.monitor.step(self.last_step, train_loss=loss)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()

    def state_dict(self) -> dict[str, Any]:
        state = self.monitor.state_dict() if self.monitor is not None else dict(self._state or {})
        state["step"] = self.last_step
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.monitor is None:
            self._state = dict(state_dict)
        else:
            self._restore(state_dict)

    def _restore(self, state: dict[str, Any]) -> None:
        assert self.monitor is not None
        self.last_step = int(state.get("step", 0))
        self.monitor.resume_at(self.last_step)
        self.monitor.load_state_dict(state)
