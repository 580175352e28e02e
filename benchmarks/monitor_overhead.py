"""What the training monitor costs: the demo run with and without it, and each preset's price.

Run: .venv/bin/python benchmarks/monitor_overhead.py [--steps 1500] [--chunk 50] [--threads 2]

Part 1 trains the demo model (`layerpeel demo`: 4 blocks, d_model 128, batch 32 x 128 bytes) twice
in one process, side by side: a plain run and a run with the default monitor (`layerpeel train`'s:
preset standard, max_overhead 0.05, warm-up 100), alternating chunks of `--chunk` steps so that
both see the same machine load. The two runs start from the same weights and see the same
batches. It prints both wall times, the overhead (monitored / plain - 1) and the monitor's own
measured overhead.

Part 2 measures, on the monitored run's final weights, the wall time of each analysis unit of each
preset (one P1 unit per block, then P3, then P2, as the rotation runs them) and prints the
overhead each preset would cost without a budget if it analysed every 10, 100 or 1000 steps:
(mean unit time) / (n x measured plain step time). The last column is how many analyses per
1000 steps the default 5 % budget leaves room for.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from layerpeel.commands.demo import DEMO_MODEL, DEMO_TRAIN
from layerpeel.monitor import PRESETS, MonitorConfig, PeelAnalysis
from layerpeel.monitor.checkpoints import run_monitoring_set
from layerpeel.monitor.state import ShadowModel, preserved_rng
from layerpeel.monitor.trainer import attach
from layerpeel.quant import QuantConfig
from layerpeel.training.trainer import Trainer


def make_trainer(root: Path, name: str, steps: int) -> Trainer:
    cfg = dataclasses.replace(DEMO_TRAIN, max_steps=steps)
    return Trainer.create(root / name, DEMO_MODEL, QuantConfig(), cfg)


def side_by_side(root: Path, steps: int, chunk: int) -> dict[str, float | int]:
    plain = make_trainer(root, "plain", steps)
    watched = make_trainer(root, "watched", steps)
    monitor = attach(watched, MonitorConfig())
    times = {"plain": 0.0, "watched": 0.0}
    step_times: list[float] = []
    while plain.step < steps:
        until = min(steps, plain.step + chunk)
        t0 = time.perf_counter()
        while plain.step < until:
            s0 = time.perf_counter()
            plain.train_step()
            step_times.append(time.perf_counter() - s0)
        times["plain"] += time.perf_counter() - t0
        monitor.budget.pause()  # the plain chunk is not the monitored run's training time
        t0 = time.perf_counter()
        while watched.step < until:
            loss = watched.train_step()
            assert watched.on_step is not None
            watched.on_step(watched.step, loss, watched.model)
        times["watched"] += time.perf_counter() - t0
        print(
            f"  step {until}: plain {times['plain']:.0f} s, monitored {times['watched']:.0f} s, "
            f"{monitor.analyses} analyses",
            flush=True,
        )
    same = all(
        torch.equal(a, b)
        for a, b in zip(plain.model.parameters(), watched.model.parameters(), strict=True)
    )
    monitor.close()
    return {
        "plain_s": times["plain"],
        "watched_s": times["watched"],
        "overhead": times["watched"] / times["plain"] - 1.0,
        "monitor_overhead": monitor.overhead,
        "monitor_s": monitor.budget.monitor_s,
        "analyses": monitor.analyses,
        "failures": monitor.failures,
        "step_s": statistics.median(step_times),
        "identical": int(same),
        "trainer": watched,  # type: ignore[dict-item]
    }


def unit_costs(trainer: Trainer, preset: str) -> list[tuple[str, float]]:
    """Wall time of each unit of one rotation of `preset`, on the trainer's current weights."""
    config = MonitorConfig(preset=preset)
    mset = run_monitoring_set(trainer.run, config)
    analysis = PeelAnalysis(trainer.model, mset, preset, config.peel)
    analysis.advance()  # skip the sweep: time the rotation itself
    shadow = ShadowModel(trainer.model)
    out = []
    for _ in analysis.rotation:
        unit = analysis.next_unit()
        t0 = time.perf_counter()
        with preserved_rng():
            analysis.run(shadow.refresh(), unit)
        out.append(
            (f"{unit.kind}{list(unit.blocks) if unit.blocks else ''}", time.perf_counter() - t0)
        )
        analysis.advance()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=DEMO_TRAIN.max_steps)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps")
    with tempfile.TemporaryDirectory() as tmp:
        print("part 1: demo run, plain and with the default monitor, side by side")
        res = side_by_side(Path(tmp), args.steps, args.chunk)
        print()
        print("| run | wall time (s) |")
        print("|---|---|")
        print(f"| plain | {res['plain_s']:.1f} |")
        print(f"| default monitor (standard, max_overhead 0.05) | {res['watched_s']:.1f} |")
        print()
        print(
            f"overhead (monitored / plain - 1): {res['overhead']:+.1%}; monitor's own measure: "
            f"{res['monitor_overhead']:.1%} ({res['monitor_s']:.1f} s in {res['analyses']} "
            f"analyses, {res['failures']} failures); final weights bit-identical: "
            f"{bool(res['identical'])}"
        )
        step_s = float(res["step_s"])
        print(f"median plain step: {step_s * 1000:.0f} ms")
        print()
        print("part 2: cost of each preset's analyses on the final weights (no budget)")
        trainer = res["trainer"]
        assert isinstance(trainer, Trainer)
        print()
        print(
            "| preset | units of one rotation (s) | mean unit (s) | every 10 | every 100 "
            "| every 1000 | analyses / 1000 steps at 5 % |"
        )
        print("|---|---|---|---|---|---|---|")
        for preset in PRESETS:
            costs = unit_costs(trainer, preset)
            mean = statistics.fmean(c for _, c in costs)
            cells = [f"{mean / (n * step_s):.1%}" for n in (10, 100, 1000)]
            room = 0.05 * 1000 * step_s / mean
            units = ", ".join(f"{k} {c:.1f}" for k, c in costs)
            print(f"| {preset} | {units} | {mean:.2f} | {' | '.join(cells)} | {room:.1f} |")


if __name__ == "__main__":
    main()
