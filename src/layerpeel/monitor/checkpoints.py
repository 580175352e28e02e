"""Filling a run's monitor time series afterwards, from its saved checkpoints."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layerpeel.errors import CheckpointError
from layerpeel.monitoring import MonitoringSet

log = logging.getLogger(__name__)


def run_monitoring_set(run: Any, config: Any) -> MonitoringSet:
    """The monitor's monitoring set of a layerpeel run, shared by training and later analyses.

    `config.tokens` tokens of the run's own corpus in sequences of `config.seq_len` (cut to the
    model's context), chosen by `layerpeel.analyze.monitoring_from_run`.
    """
    from layerpeel.analyze import monitoring_from_run

    model_cfg, _ = run.model_config()
    seq_len = min(config.seq_len, model_cfg.block_size)
    return monitoring_from_run(run, None, config.tokens, seq_len)


def analyze_checkpoints(
    run_path: str | Path,
    config: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Analyse every saved checkpoint of a layerpeel run; append `source: checkpoint` events.

    Each checkpoint gets everything the preset computes over every block (no budget, no
    rotation), on the same monitoring set the training monitor used. Checkpoints that already
    have a checkpoint event in monitor.jsonl are skipped. Returns the new events.
    """
    from layerpeel.analyze import peel
    from layerpeel.monitor.analyses import PeelAnalysis
    from layerpeel.monitor.core import MonitorConfig
    from layerpeel.monitor.loggers import make_loggers, read_events
    from layerpeel.run import load_model, open_run

    run = open_run(run_path)
    cfg_all = run.read_config()
    if config is None:
        section = cfg_all.get("monitor")
        config = MonitorConfig.from_dict(section) if section else MonitorConfig()
    config.validate()
    checkpoints = run.checkpoints()
    if not checkpoints:
        raise CheckpointError(f"run folder has no complete checkpoint: {run.path}")
    mset = run_monitoring_set(run, config)
    done = {
        int(e["step"])
        for e in read_events(run.path / "monitor.jsonl")
        if e.get("event") == "analysis" and e.get("source") == "checkpoint"
    }
    loggers = make_loggers(run.path, config.loggers)
    events: list[dict[str, Any]] = []
    try:
        for i, path in enumerate(checkpoints):
            model, ckpt = load_model(path)
            if ckpt.step in done:
                continue
            analysis = PeelAnalysis(model, mset, config.preset, config.peel)
            t0 = time.perf_counter()
            report = peel(model, mset, analysis.full_config())
            report.model["step"] = ckpt.step
            event = {
                "event": "analysis",
                "step": ckpt.step,
                "time": time.time(),
                "train_loss": None,
                "preset": config.preset,
                "seconds": time.perf_counter() - t0,
                "overhead": 0.0,  # computed after training: no cost to the run
                "source": "checkpoint",
                "unit": "all",
                "report": report.to_dict(),
            }
            for logger in loggers:
                logger.log(event)
            events.append(event)
            if progress is not None:
                progress(i + 1, len(checkpoints))
    finally:
        for logger in loggers:
            logger.close()
    return events
