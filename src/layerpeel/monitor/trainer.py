"""Attaching a `Monitor` to layerpeel's own `Trainer` (what `layerpeel train` does by default)."""

from __future__ import annotations

from typing import Any

from layerpeel.monitor.checkpoints import run_monitoring_set
from layerpeel.monitor.core import Monitor, MonitorConfig
from layerpeel.monitor.schedules import Schedule


def attach(
    trainer: Any, config: MonitorConfig | None = None, schedule: Schedule | None = None
) -> Monitor:
    """Monitor `trainer.model` on the run's monitoring set; chains any existing `on_step` hook.

    The monitor's settings are recorded in the run's config.json (section "monitor"), so
    `analyze_checkpoints` later uses the same monitoring set and preset. A resumed trainer drops
    monitor events written after the checkpoint it resumed from.
    """
    config = config or MonitorConfig()
    config.validate()
    mset = run_monitoring_set(trainer.run, config)
    monitor = Monitor(trainer.model, mset, trainer.run.path, config, schedule)
    sections = trainer.run.read_config()
    sections["monitor"] = config.to_dict()
    for key in ("kind", "version", "layerpeel"):
        sections.pop(key, None)
    trainer.run.write_config(sections)
    monitor.resume_at(trainer.step)  # a run started over (step 0) drops all its old events
    previous = trainer.on_step

    def on_step(step: int, loss: float, model: Any) -> None:
        if previous is not None:
            previous(step, loss, model)
        monitor.step(step, train_loss=loss)

    trainer.on_step = on_step
    return monitor
