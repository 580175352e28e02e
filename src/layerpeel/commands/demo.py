"""`layerpeel demo`: train the demo model with the monitor on the built-in corpus, then sample."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from layerpeel.commands.sample import generate_text
from layerpeel.commands.train import monitor_summary, report
from layerpeel.models import GPTConfig
from layerpeel.quant import QuantConfig
from layerpeel.training.trainer import TrainConfig, Trainer

# The demo model: 4 layers, d_model 128, 4 heads, context 64, bytes; 1,500 steps of 16
# sequences, sized so that `make demo` (set-up, training, analysis, report) takes minutes on two
# CPU cores.
DEMO_MODEL = GPTConfig(n_layer=4, n_head=4, d_model=128, block_size=64, vocab_size=256)
DEMO_TRAIN = TrainConfig(
    max_steps=1500, batch_size=16, lr=3e-3, warmup_steps=50, eval_every=250, checkpoint_every=250
)
# The monitor may take this fraction of the demo's training time, so that the report's time
# series (bounds over steps, layers by checkpoint) has enough analyses to show.
DEMO_MONITOR_BUDGET = 0.15


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="train the demo model with the monitor on the built-in corpus, then sample",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder")
    p.add_argument("--quant", default="none", help="weight quantizer for the demo model")
    p.add_argument("--max-steps", type=int, default=DEMO_TRAIN.max_steps)
    p.add_argument("--no-monitor", action="store_true", help="train without the monitor")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from layerpeel.monitor import MonitorConfig
    from layerpeel.monitor.trainer import attach

    train_cfg = dataclasses.replace(DEMO_TRAIN, max_steps=args.max_steps)
    progress = not args.no_progress
    if (args.out / "config.json").exists():
        print(f"continuing the demo run in {args.out}")
        trainer = Trainer.resume(args.out, max_steps=args.max_steps, progress=progress)
    else:
        trainer = Trainer.create(
            args.out, DEMO_MODEL, QuantConfig(scheme=args.quant), train_cfg, progress=progress
        )
    monitor = None
    if not args.no_monitor:
        monitor = attach(trainer, MonitorConfig(max_overhead=DEMO_MONITOR_BUDGET))
    try:
        summary = trainer.fit()
    finally:
        if monitor is not None:
            monitor.close()
    code = report(trainer, summary)
    if monitor is not None:
        print(monitor_summary(monitor))
    if code:
        return code
    print("\nsample:\n" + generate_text(args.out, "\n", 300))
    return 0
