"""Filling a run's monitor time series afterwards, from its saved checkpoints."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerpeel.data.monitoring import MonitoringSet
from layerpeel.errors import CheckpointError

log = logging.getLogger(__name__)


def run_monitoring_set(run: Any, config: Any) -> MonitoringSet:
    """The monitor's monitoring set of a layerpeel run, shared by training and later analyses.

    `config.tokens` tokens of the run's own corpus in sequences of `config.seq_len` (cut to the
    model's context), chosen by `layerpeel.peel.analysis.monitoring_from_run`.
    """
    from layerpeel.peel.analysis import monitoring_from_run

    model_cfg, _ = run.model_config()
    seq_len = min(config.seq_len, model_cfg.block_size)
    return monitoring_from_run(run, None, config.tokens, seq_len)


@dataclass
class Pending:
    """The checkpoints of a run still to analyse, with the settings and data to analyse them on."""

    run: Any  # the `RunFolder`
    config: Any  # the `MonitorConfig`
    mset: MonitoringSet
    checkpoints: list[Path]  # every complete checkpoint, oldest first
    todo: list[tuple[Path, int]]  # (checkpoint, step) without a checkpoint event yet


def pending_checkpoints(run_path: str | Path, config: Any = None) -> Pending:
    """What `analyze_checkpoints` (or a sweep) has to do on a run: its checkpoints not yet analysed.

    `config` is the run's monitor settings (config.json's "monitor" section) unless given.
    """
    from layerpeel.monitor.core import MonitorConfig
    from layerpeel.monitor.loggers import read_events
    from layerpeel.training.run_folder import open_run

    run = open_run(run_path)
    if config is None:
        section = run.read_config().get("monitor")
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
    steps = [int(json.loads(p.read_text()).get("step", -1)) for p in checkpoints]
    todo = [(p, s) for p, s in zip(checkpoints, steps, strict=True) if s not in done]
    return Pending(run, config, mset, checkpoints, todo)


def checkpoint_event(
    path: str | Path, mset: MonitoringSet, config: Any, device: str | None = None
) -> dict[str, Any]:
    """The `source: checkpoint` event of one checkpoint: the preset's full analysis of it.

    The analysis runs on `device` (default: where the checkpoint loads); its whole-model
    verdict is judged with the run's training-loss trend up to the checkpoint's step, as
    `layerpeel analyze` judges one checkpoint.
    """
    from layerpeel.monitor.analyses import PeelAnalysis
    from layerpeel.peel.analysis import peel
    from layerpeel.peel.evidence import loss_trend
    from layerpeel.training.run_folder import load_model, open_run

    model, ckpt = load_model(path)
    if device is not None:
        model = model.to(device)
    run_dir = Path(path).resolve().parent.parent
    history = open_run(run_dir).loss_history() if (run_dir / "config.json").exists() else []
    analysis = PeelAnalysis(model, mset, config.preset, config.peel)
    t0 = time.perf_counter()
    report = peel(model, mset, analysis.full_config(), trend=loss_trend(history, ckpt.step))
    report.model["step"] = ckpt.step
    return {
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


def analyze_checkpoints(
    run_path: str | Path,
    config: Any = None,
    progress: Callable[[int, int], None] | None = None,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Analyse every saved checkpoint of a layerpeel run; append `source: checkpoint` events.

    Each checkpoint gets everything the preset computes over every block (no budget, no
    rotation), on the same monitoring set the training monitor used. Checkpoints that already
    have a checkpoint event in monitor.jsonl are skipped. Each is analysed on `device` (default:
    where it loads). Returns the new events.
    (`layerpeel.distributed.sweep` does the same with one Ray task per checkpoint.)
    """
    from layerpeel.monitor.loggers import make_loggers

    work = pending_checkpoints(run_path, config)
    loggers = make_loggers(work.run.path, work.config.loggers)
    events: list[dict[str, Any]] = []
    todo = dict(work.todo)
    try:
        for i, path in enumerate(work.checkpoints):
            if path not in todo:
                continue
            event = checkpoint_event(path, work.mset, work.config, device)
            for logger in loggers:
                logger.log(event)
            events.append(event)
            if progress is not None:
                progress(i + 1, len(work.checkpoints))
    finally:
        for logger in loggers:
            logger.close()
    return events
