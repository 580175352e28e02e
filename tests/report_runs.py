"""Real run folders for the report tests: a tiny GPT trained a few steps and peeled at each checkpoint.

Nothing is made up: the analyses are `layerpeel.peel.analysis.peel` reports of the run's own checkpoints
on a small monitoring set, written where `layerpeel analyze` and the monitor write them. Low gap
thresholds make the verdicts differ between checkpoints so that every colour is exercised.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from layerpeel.data.monitoring import monitoring_set
from layerpeel.io import append_jsonl
from layerpeel.models import GPTConfig
from layerpeel.peel.analysis import PeelConfig, peel
from layerpeel.quant import QuantConfig
from layerpeel.training.run_folder import load_model
from layerpeel.training.trainer import TrainConfig, Trainer

TEXT = (
    "It is a truth universally acknowledged, that a single model in possession of a good "
    "corpus, must be in want of a held-out set. "
) * 40
TINY = GPTConfig(vocab_size=256, n_layer=3, n_head=2, d_model=32, block_size=16)
PEEL = PeelConfig(n_boot=100, search_sequences=8, red=0.001, yellow=0.0)


def train_tiny(root: Path, quant: str = "binary-global", steps: int = 12) -> Trainer:
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT)
    cfg = TrainConfig(
        data=str(corpus),
        max_steps=steps,
        batch_size=4,
        lr=1e-2,
        warmup_steps=2,
        eval_every=4,
        eval_sequences=8,
        log_every=2,
        checkpoint_every=4,
    )
    trainer = Trainer.create(root / "run", TINY, QuantConfig(scheme=quant), cfg, progress=False)
    trainer.fit()
    return trainer


def peel_checkpoints(trainer: Trainer) -> dict[int, dict[str, Any]]:
    """`PeelReport.to_dict()` of every checkpoint of the run, by training step."""
    mset = monitoring_set(trainer.data.dataset.windows(list(range(16))))
    out = {}
    for path in trainer.run.checkpoints():
        model, ckpt = load_model(path)
        report = peel(model, mset, PEEL)
        report.model["step"] = ckpt.step
        out[ckpt.step] = report.to_dict()
    return out


def analysis_event(step: int, report: dict[str, Any]) -> dict[str, Any]:
    """A monitor.jsonl "analysis" line as the monitor writes it (file contract)."""
    return {
        "event": "analysis",
        "step": step,
        "time": time.time(),
        "train_loss": None,
        "preset": "test",
        "seconds": 1.0,
        "overhead": 0.05,
        "source": "monitor",
        "report": report,
    }


def write_analysis(run: Path, step: int, report: dict[str, Any]) -> Path:
    path = run / "analysis" / f"step-{step:06d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    return path


def analysed_run(root: Path) -> tuple[Path, dict[int, dict[str, Any]]]:
    """A run whose first and last checkpoints have analysis files and whose middle one a monitor event."""
    trainer = train_tiny(root)
    reports = peel_checkpoints(trainer)
    run = trainer.run.path
    steps = sorted(reports)
    for step in (steps[0], steps[-1]):
        write_analysis(run, step, reports[step])
    append_jsonl(run / "monitor.jsonl", analysis_event(steps[1], reports[steps[1]]))
    return run, reports
