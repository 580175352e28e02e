"""Does the monitor flag a block that never trains? Train a GPT with one block frozen from step 0.

Run: .venv/bin/python benchmarks/monitor_frozen_block.py [--steps 500] [--frozen 2] [--every 50]

Trains the demo model (or a smaller one with --n-layer/--d-model) on the built-in corpus with
block `--frozen` excluded from the optimizer from step 0, under a monitor without a budget that
analyses every `--every` steps after `--warmup` (preset economy: P1 closed form, all parts).
Prints each analysis's verdicts, then the first step at which the frozen block is red and whether
it stays red. A second run without the frozen block gives the final held-out CE the frozen block
costs, which says how large a gap an honest bound could find.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from layerpeel.models import GPTConfig
from layerpeel.monitor import MonitorConfig, every, read_events
from layerpeel.monitor.trainer import attach
from layerpeel.quant import QuantConfig
from layerpeel.training.trainer import TrainConfig, Trainer


def train(root: Path, args: argparse.Namespace, frozen: int | None) -> tuple[Path, float]:
    model = GPTConfig(n_layer=args.n_layer, n_head=4, d_model=args.d_model, block_size=128)
    cfg = TrainConfig(
        max_steps=args.steps,
        batch_size=32,
        warmup_steps=50,
        eval_every=10**6,
        log_every=10**6,
        checkpoint_every=10**6,
    )
    out = root / ("frozen" if frozen is not None else "plain")
    trainer = Trainer.create(out, model, QuantConfig(), cfg)
    if frozen is not None:
        trainer.model.blocks[frozen].requires_grad_(False)  # AdamW skips parameters without grad
        attach(
            trainer,
            MonitorConfig(preset="economy", max_overhead=None, warmup=args.warmup),
            every(args.every),
        )
    summary = trainer.fit()
    return out, float(summary["final_val_loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--frozen", type=int, default=2)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=MonitorConfig().warmup)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        out, frozen_ce = train(Path(tmp), args, args.frozen)
        _, plain_ce = train(Path(tmp), args, None)
        verdicts: list[tuple[int, str]] = []
        others_red: list[tuple[int, int, str]] = []
        print("| step | unit | block/part: verdict gap [ci_low] |")
        print("|---|---|---|")
        for e in read_events(out / "monitor.jsonl"):
            if e["event"] != "analysis":
                print(f"| {e['step']} | {e['event']} | {e.get('message', e.get('reason', ''))} |")
                continue
            rows = e["report"]["layers"]
            cells = " ".join(
                f"{r['block']}/{r['part']}: {r['verdict']} {r['gap']:+.3f} [{r['ci_low']:+.3f}]"
                + (f" work {r['work']:+.3f}" if r.get("work") is not None else "")
                + (" idle" if r.get("idle") else "")
                for r in rows
            )
            print(f"| {e['step']} | {e['unit']} | {cells} |")
            for r in rows:
                if r["block"] == args.frozen and r["part"] == "block":
                    verdicts.append((e["step"], r["verdict"]))
                elif r["verdict"] == "red":
                    others_red.append((e["step"], r["block"], r["part"]))
    red = [s for s, v in verdicts if v == "red"]
    first = red[0] if red else None
    stays = first is not None and all(v == "red" for s, v in verdicts if s >= first)
    print()
    print(f"frozen block {args.frozen}: analysed at steps {[s for s, _ in verdicts]}")
    print(f"first red: {first if first is not None else 'never'}; red from then on: {stays}")
    print(f"red rows of other blocks (step, block, part): {others_red or 'none'}")
    print(
        f"final held-out CE: frozen run {frozen_ce:.4f}, plain run {plain_ce:.4f} "
        f"(the frozen block costs {frozen_ce - plain_ce:+.4f} nats/token)"
    )


if __name__ == "__main__":
    main()
