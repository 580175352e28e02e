"""`layerpeel yes-demo`: run one of the YES paper's experiments and draw its YES cloud."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from layerpeel.errors import ConfigError
from layerpeel.io import check_output_dir

TASK_NAMES = ("synthetic", "denoise", "image", "digits")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "yes-demo",
        help="train the YES paper's MLP on one task and check its YES bounds every epoch",
        description=(
            "Train the 5-layer MLP of the YES paper on one task, compute the YES bounds on the "
            "training set after every epoch, and write metrics.jsonl, summary.json and the "
            "YES-cloud figure (yes_cloud.png/.svg). Tasks: synthetic (y = |Ax|), denoise (20-dim "
            "signals), image (8x8 patches from phaseless measurements), digits (scikit-learn's "
            "8x8 digits in place of MNIST). See docs/yes.md."
        ),
    )
    # Values are checked in run(), so that a bad one is a one-line error with exit code 2.
    p.add_argument("task", metavar="TASK", help="one of: " + ", ".join(TASK_NAMES))
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/yes-TASK)")
    p.add_argument("--epochs", default="0", help="training epochs (default: the task's own)")
    p.add_argument("--seed", default="0", help="seed for data, initialization and batches")
    p.add_argument("--samples", default="0", help="samples before the 80/20 split (0: default)")
    p.add_argument("--max-anchors", default=None, help="cap on anchors per subset (default: all)")
    p.add_argument(
        "--threads",
        default="1",
        help="torch threads for training and the YES checks (these small nets are fastest on 1)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _int(value: Any, name: str, low: int) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if out < low:
        raise ConfigError(f"{name} must be >= {low}, got {out}")
    return out


def available_memory() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run(args: argparse.Namespace) -> int:
    import torch

    from layerpeel.yes.paper import DEFAULT_EPOCHS, YesDemoConfig, memory_estimate, run_yes_demo

    if args.task not in TASK_NAMES:
        raise ConfigError(
            f"unknown yes-demo task {args.task!r}; choose from {', '.join(TASK_NAMES)}"
        )
    cap = None if args.max_anchors is None else _int(args.max_anchors, "--max-anchors", 0)
    cfg = YesDemoConfig(
        task=args.task,
        epochs=_int(args.epochs, "--epochs", 0),
        seed=_int(args.seed, "--seed", 0),
        n_samples=_int(args.samples, "--samples", 0),
        max_anchors=cap,
    )
    cfg.validate()
    need, have = memory_estimate(cfg), available_memory()
    if have is not None and need > have:
        raise ConfigError(
            f"--samples {cfg.n_samples} needs about {need / 2**30:,.1f} GiB of memory for the data "
            f"and the YES checks; {have / 2**30:,.1f} GiB is available"
        )
    torch.set_num_threads(_int(args.threads, "--threads", 1))
    out = args.out if args.out is not None else Path("runs") / f"yes-{args.task}"
    check_output_dir(out, "--out")

    from tqdm.auto import tqdm

    total = (cfg.epochs or DEFAULT_EPOCHS[cfg.task]) + 1  # epoch 0 is the initialization
    bar = tqdm(total=total, desc=f"yes-demo {cfg.task}", unit="epoch", disable=args.no_progress)

    def on_epoch(row: dict[str, Any]) -> None:
        bar.update(1)
        bar.set_postfix(loss_db=f"{row['train_loss_db']:.2f}", verdict=row["verdict"])

    try:
        result = run_yes_demo(cfg, out, on_epoch=on_epoch)
    finally:
        bar.close()
    s = result.summary
    n_hidden = len(s["final"]["yes_min"])
    print(f"task: {s['task']}")
    print(
        f"after {s['epochs']} epochs: training loss {s['final_train_loss_db']:.2f} dB, "
        f"YES-0 {s['yes0_db']:.2f} dB, YES-{n_hidden} {s[f'yes{n_hidden}_db']:.2f} dB"
    )
    print(f"verdict: {s['verdict']} ({s['verdict_words']}); {s['seconds']:.1f} s")
    for path in [result.out_dir / "metrics.jsonl", *result.figures]:
        print(f"wrote {path}")
    return 0
