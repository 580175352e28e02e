"""A Hugging Face `TrainerCallback` that runs the layerpeel monitor; it changes nothing but `control`.

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[LayerpeelCallback(mset, "runs/hf", model=model)])

The model must be in layerpeel's architecture table (`layerpeel.arch.table.ARCHITECTURES`); the
monitoring set must use the model's tokenizer and fit its context. Given `model`, everything is
checked when the callback is built; otherwise at `on_train_begin`, before the first step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerpeel.errors import ConfigError

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - transformers is in the hf extra
    raise ConfigError(
        "the Hugging Face integration needs transformers: pip install 'layerpeel[hf]'"
    ) from None

from layerpeel.data.monitoring import MonitoringSet
from layerpeel.monitor import Monitor, MonitorConfig, Schedule


class LayerpeelCallback(TrainerCallback):  # type: ignore[misc]
    """Calls `Monitor.step(state.global_step)` after every optimizer step of the HF `Trainer`."""

    def __init__(
        self,
        data: MonitoringSet,
        run_dir: str | Path,
        config: MonitorConfig | None = None,
        schedule: Schedule | None = None,
        model: Any = None,
    ) -> None:
        self.data, self.run_dir, self.config, self.schedule = data, Path(run_dir), config, schedule
        self.monitor: Monitor | None = None
        if model is not None:
            self.monitor = self._build(model)

    def _build(self, model: Any) -> Monitor:
        return Monitor(model, self.data, self.run_dir, self.config, self.schedule)

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> Any:
        if self.monitor is None:
            if model is None:
                raise ConfigError("the HF Trainer passed no model to the layerpeel callback")
            self.monitor = self._build(model)
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        if self.monitor is not None:
            self.monitor.step(state.global_step, train_loss=_last_loss(state))
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        if self.monitor is not None:
            self.monitor.close()
        return control


def _last_loss(state: Any) -> float | None:
    """The most recent logged training loss (the HF Trainer reports it at logging steps only)."""
    for row in reversed(getattr(state, "log_history", None) or []):
        if "loss" in row:
            return float(row["loss"])
    return None
