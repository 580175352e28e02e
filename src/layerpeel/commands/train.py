"""`layerpeel train`: train a GPT (any size, any quantizer) into a run folder, or resume one."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from layerpeel.models import GPTConfig
from layerpeel.quant import QuantConfig
from layerpeel.training.trainer import TrainConfig, Trainer


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
    add_monitor_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def add_monitor_arguments(p: argparse.ArgumentParser) -> None:
    """The training monitor's flags (on by default; see docs/monitor.md)."""
    from layerpeel.monitor import MonitorConfig

    m = MonitorConfig()
    g = p.add_argument_group("monitor (analyses during training, written to RUN/monitor.jsonl)")
    g.add_argument("--no-monitor", action="store_true", help="train without the monitor")
    g.add_argument(
        "--monitor-preset",
        default=m.preset,
        help="economy (P1 closed form), standard (+ P3, default) or full (+ P2 and Adam)",
    )
    g.add_argument(
        "--monitor-budget",
        type=float,
        default=m.max_overhead,
        help=f"largest fraction of training time the monitor may take (default {m.max_overhead})",
    )
    g.add_argument(
        "--monitor-warmup", type=int, default=m.warmup, help="no analysis before this step"
    )
    g.add_argument(
        "--monitor-loggers",
        default="",
        help="also log to: tensorboard, wandb (offline), csv (comma separated)",
    )


def monitor_config_from_args(args: argparse.Namespace) -> Any:
    """The `MonitorConfig` of the flags, checked; None with --no-monitor."""
    from layerpeel.monitor import MonitorConfig

    if args.no_monitor:
        return None
    loggers = tuple(n.strip() for n in args.monitor_loggers.split(",") if n.strip())
    cfg = MonitorConfig(
        preset=args.monitor_preset,
        max_overhead=args.monitor_budget,
        warmup=args.monitor_warmup,
        loggers=loggers,
    )
    cfg.validate()
    return cfg


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
        max_steps=TrainConfig().max_steps if args.max_steps is None else args.max_steps,
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
    monitor_cfg = monitor_config_from_args(args)
    if args.resume is not None:
        trainer = Trainer.resume(
            args.resume, max_steps=args.max_steps, progress=not args.no_progress
        )
    else:
        model_cfg, quant_cfg, train_cfg = configs_from_args(args)
        trainer = Trainer.create(
            args.out, model_cfg, quant_cfg, train_cfg, progress=not args.no_progress
        )
    if monitor_cfg is None:
        return report(trainer, trainer.fit())
    from layerpeel.monitor.trainer import attach

    monitor = attach(trainer, monitor_cfg)
    try:
        summary = trainer.fit()
    finally:
        monitor.close()
    code = report(trainer, summary)
    print(monitor_summary(monitor))
    return code


def monitor_summary(monitor: Any) -> str:
    """One line: analyses, measured overhead, and the blocks whose latest verdict is red."""
    red = sorted(k for k, v in monitor.verdicts.items() if v == "red")
    state = "" if monitor.enabled else " (switched off after failures)"
    return (
        f"monitor{state}: {monitor.analyses} analyses, overhead {monitor.overhead:.1%} of "
        f"training time; red: {', '.join(red) if red else 'none'}; "
        f"log: {monitor.run_dir / 'monitor.jsonl'}"
    )
