"""`layerpeel demo`: train the demo model on the built-in corpus, then show where it is and a sample."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from layerpeel.commands.sample import generate_text
from layerpeel.commands.train import report
from layerpeel.models import GPTConfig
from layerpeel.quant import QuantConfig
from layerpeel.training.trainer import TrainConfig, Trainer

# The demo model: 4 layers, d_model 128, 4 heads, context 128, bytes.
DEMO_MODEL = GPTConfig(n_layer=4, n_head=4, d_model=128, block_size=128, vocab_size=256)
DEMO_TRAIN = TrainConfig(
    max_steps=1500, batch_size=32, lr=3e-3, warmup_steps=50, eval_every=250, checkpoint_every=250
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="train the demo model on the built-in corpus, then sample")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder")
    p.add_argument("--quant", default="none", help="weight quantizer for the demo model")
    p.add_argument("--max-steps", type=int, default=DEMO_TRAIN.max_steps)
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    import dataclasses

    train_cfg = dataclasses.replace(DEMO_TRAIN, max_steps=args.max_steps)
    progress = not args.no_progress
    if (args.out / "config.json").exists():
        print(f"continuing the demo run in {args.out}")
        trainer = Trainer.resume(args.out, max_steps=args.max_steps, progress=progress)
    else:
        trainer = Trainer.create(
            args.out, DEMO_MODEL, QuantConfig(scheme=args.quant), train_cfg, progress=progress
        )
    code = report(trainer, trainer.fit())
    if code:
        return code
    print("\nsample:\n" + generate_text(args.out, "\n", 300))
    return 0
