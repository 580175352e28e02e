"""Monitoring during training: `Monitor`, its config and presets, schedules, budget and loggers."""

from layerpeel.monitor.analyses import PRESETS, PeelAnalysis, Unit, YesAnalysis, YesData
from layerpeel.monitor.budget import Budget
from layerpeel.monitor.checkpoints import analyze_checkpoints, run_monitoring_set
from layerpeel.monitor.core import Monitor, MonitorConfig
from layerpeel.monitor.loggers import (
    CsvLogger,
    JsonlLogger,
    Logger,
    NullLogger,
    TensorBoardLogger,
    WandbLogger,
    make_loggers,
    read_events,
    scalars,
)
from layerpeel.monitor.schedules import Schedule, always, any_of, at, every, log_spaced

__all__ = [
    "PRESETS",
    "Budget",
    "CsvLogger",
    "JsonlLogger",
    "Logger",
    "Monitor",
    "MonitorConfig",
    "NullLogger",
    "PeelAnalysis",
    "Schedule",
    "TensorBoardLogger",
    "Unit",
    "WandbLogger",
    "YesAnalysis",
    "YesData",
    "always",
    "analyze_checkpoints",
    "any_of",
    "at",
    "every",
    "log_spaced",
    "make_loggers",
    "read_events",
    "run_monitoring_set",
    "scalars",
]
