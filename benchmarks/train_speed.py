"""Training throughput (tokens/s) of the demo model in full precision and under each quantizer.

Run: .venv/bin/python benchmarks/train_speed.py [--steps 20] [--batch 32]
All schemes are timed in one process, one after the other, on the same batches.
"""

from __future__ import annotations

import argparse
import time

import torch

from layerpeel.commands.demo import DEMO_MODEL
from layerpeel.quant import QuantConfig, bits_per_weight
from layerpeel.training.run_folder import build_gpt

SCHEMES = ["none", "binary-global", "binary-channel", "ternary", "int2", "int4", "int8"]


def tokens_per_second(scheme: str, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    model = build_gpt(DEMO_MODEL, QuantConfig(scheme=scheme)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, DEMO_MODEL.vocab_size, (batch, DEMO_MODEL.block_size))
    for i in range(steps + 3):  # three warm-up steps
        if i == 3:
            start = time.perf_counter()
        loss = model.loss(x, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch * DEMO_MODEL.block_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    print(f"demo model, batch {args.batch} x {DEMO_MODEL.block_size} tokens, {args.steps} steps")
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'scheme':<16}{'bits/weight':>12}{'tokens/s':>12}{'vs fp32':>9}")
    base = None
    for scheme in SCHEMES:
        tps = tokens_per_second(scheme, args.steps, args.batch)
        base = base or tps
        print(f"{scheme:<16}{bits_per_weight(scheme):>12.3f}{tps:>12,.0f}{tps / base:>9.2f}")


if __name__ == "__main__":
    main()
