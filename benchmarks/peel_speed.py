"""Time, floating-point work and achieved rate of each phase of `layerpeel analyze` (closed form).

    python benchmarks/peel_speed.py [--run RUN] [--tokens 65536] [--threads N]

Analyses the demo model (the latest checkpoint of RUN, or a freshly initialised demo model when no
run is given: the work does not depend on the weights) on a monitoring set of --tokens tokens
from the built-in corpus. Each phase is timed in one run of `peel`, its floating-point operations
are counted in a second run under `torch.utils.flop_counter.FlopCounterMode`, and its rate is set
against a plain float32 matmul measured in the same process.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from layerpeel.commands.demo import DEMO_MODEL
from layerpeel.data import ByteTokenizer, SequenceDataset, prepare_tokens, split_sequences
from layerpeel.data.monitoring import MonitoringSet, monitoring_set
from layerpeel.models import GPT
from layerpeel.peel.analysis import PeelConfig, monitoring_from_run, peel
from layerpeel.training.trainer import token_cache_dir

PHASES = {
    "P1": PeelConfig(ladder=False, cascade=False),
    "P2": PeelConfig(parts=(), ladder=True, cascade=False),
    "P3": PeelConfig(parts=(), ladder=False, cascade=True),
}


def matmul_rate(n: int = 2048, k: int = 512, repeats: int = 20) -> float:
    """GFLOP/s of a plain float32 (n, k) @ (k, k) matmul."""
    a, b = torch.randn(n, k), torch.randn(k, k)
    a @ b  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n * k * k * repeats / (time.perf_counter() - t0) / 1e9


def demo_set(n_tokens: int) -> MonitoringSet:
    tokens = prepare_tokens(None, ByteTokenizer(), token_cache_dir())
    data = SequenceDataset(tokens, DEMO_MODEL.block_size)
    train_ids, _ = split_sequences(len(data), 0.1, seed=0)
    want = n_tokens // DEMO_MODEL.block_size
    ids = train_ids[np.linspace(0, len(train_ids) - 1, want).round().astype(np.int64)]
    return monitoring_set(data.windows(ids))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="run folder of the demo model (default: fresh model)")
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run is not None:
        from layerpeel.peel.analysis import load_target

        target = load_target(args.run)
        model, mset = target.model, monitoring_from_run(target.run, None, args.tokens)
    else:
        torch.manual_seed(0)
        model, mset = GPT(DEMO_MODEL).eval(), demo_set(args.tokens)
    rate0 = matmul_rate()
    t0 = time.perf_counter()
    report = peel(model, mset, PeelConfig())
    total = time.perf_counter() - t0
    rate1 = matmul_rate()
    ref_rate = (rate0 + rate1) / 2
    print(
        f"demo model, {mset.n_tokens} monitoring tokens ({len(mset.fit_ids)} fit / "
        f"{len(mset.held_ids)} held-out sequences), {torch.get_num_threads()} thread(s)"
    )
    print(f"plain float32 matmul: {ref_rate:.1f} GFLOP/s (before {rate0:.1f}, after {rate1:.1f})")
    print(f"{'phase':<8} {'time s':>8} {'GFLOP':>9} {'GFLOP/s':>8} {'of matmul':>10}")
    t_capture = report.timings.get("capture", 0.0)
    print(f"{'capture':<8} {t_capture:>8.1f} {'':>9} {'':>8} {'':>10}")
    for phase, cfg in PHASES.items():
        key = phase.lower()
        with FlopCounterMode(display=False) as counter:
            peel(model, mset, cfg)
        seconds = report.timings.get(key, 0.0)
        gflop = counter.get_total_flops() / 1e9  # includes this phase's capture
        rate = gflop / seconds if seconds else float("nan")
        print(f"{phase:<8} {seconds:>8.1f} {gflop:>9.1f} {rate:>8.1f} {rate / ref_rate:>9.0%}")
    print(f"{'total':<8} {total:>8.1f}   (one analyze: capture + P1 + P2 + P3)")
    print("GFLOP counts matmuls and attention only (torch's flop counter) and include a capture.")


if __name__ == "__main__":
    main()
