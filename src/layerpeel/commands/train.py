"""`layerpeel train`: train a GPT (any size, any quantizer) into a run folder, or resume one."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from layerpeel.models import GPTConfig
from layerpeel.quant import QuantConfig
from layerpeel.train import TrainConfig, Trainer


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a GPT into a run folder (or --resume one)")
    p.add_argument("--out", type=Path, help="new run folder to create")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in RUN")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="text file or folder (default: the built-in corpus)")
    g.add_argument("--tokenizer", default="bytes", help="bytes (default) or gpt2")
    g = p.add_argument_group("model")
    d = GPTConfig()
    g.add_argument("--n-layer", type=int, default=d.n_layer)
    g.add_argument("--n-head", type=int, default=d.n_head)
    g.add_argument("--d-model", type=int, default=d.d_model)
    g.add_argument("--block-size", type=int, default=d.block_size, help="context length")
    g.add_argument("--dropout", type=float, default=d.dropout)
    g.add_argument("--no-tie", action="store_true", help="do not tie embedding and head")
    g.add_argument(
        "--quant",
        default="none",
        help="weight quantizer: none, binary-global, binary-channel, ternary, int2/3/4/8",
    )
    g = p.add_argument_group("optimization")
    t = TrainConfig()
    g.add_argument("--max-steps", type=int, default=None, help=f"default {t.max_steps}")
    g.add_argument("--batch-size", type=int, default=t.batch_size)
    g.add_argument("--lr", type=float, default=t.lr)
    g.add_argument("--warmup-steps", type=int, default=t.warmup_steps)
    g.add_argument("--weight-decay", type=float, default=t.weight_decay)
    g.add_argument("--grad-clip", type=float, default=t.grad_clip)
    g.add_argument("--eval-every", type=int, default=t.eval_every)
    g.add_argument("--checkpoint-every", type=int, default=t.checkpoint_every)
    g.add_argument("--seed", type=int, default=t.seed)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def configs_from_args(args: argparse.Namespace) -> tuple[GPTConfig, QuantConfig, TrainConfig]:
    model_cfg = GPTConfig(
        n_layer=args.n_layer,
        n_head=args.n_head,
        d_model=args.d_model,
        block_size=args.block_size,
        dropout=args.dropout,
        tie_weights=not args.no_tie,
    )
    quant_cfg = QuantConfig(scheme=args.quant)
    train_cfg = TrainConfig(
        data=args.data,
        tokenizer=args.tokenizer,
        max_steps=args.max_steps or TrainConfig().max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )
    for cfg in (model_cfg, quant_cfg, train_cfg):
        cfg.validate()
    return model_cfg, quant_cfg, train_cfg


def report(trainer: Trainer, summary: dict[str, Any]) -> int:
    """Print where the run is and how it ended; exit code 130 after Ctrl-C."""
    if summary.get("interrupted"):
        print(f"interrupted at step {summary['step']}; checkpoint saved.")
        print(f"resume with: layerpeel train --resume {trainer.run.path}")
        return 130
    print(f"run folder: {trainer.run.path}")
    print(
        f"step {summary['step']}: held-out cross-entropy {summary['final_val_loss']:.4f} nats/token "
        f"on {summary['val_tokens']:,} tokens"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from layerpeel.errors import ConfigError

    if (args.out is None) == (args.resume is None):
        raise ConfigError("give exactly one of --out (a new run) or --resume RUN")
    if args.resume is not None:
        trainer = Trainer.resume(
            args.resume, max_steps=args.max_steps, progress=not args.no_progress
        )
    else:
        model_cfg, quant_cfg, train_cfg = configs_from_args(args)
        trainer = Trainer.create(
            args.out, model_cfg, quant_cfg, train_cfg, progress=not args.no_progress
        )
    return report(trainer, trainer.fit())
