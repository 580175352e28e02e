"""Wall time of `analyze` on 1 and 2 processes and of a checkpoint sweep in turn and on Ray.

    python benchmarks/scale.py [--tokens 8192] [--checkpoints 8] [--predict-only]

Trains the demo model (4 blocks, width 128, bytes) for a few steps with a checkpoint every two,
so the run has --checkpoints checkpoints (the cost of an analysis does not depend on how trained
the weights are), then, side by side in this one run:

1. `layerpeel analyze RUN` as one process with one thread, as one process with two threads, and
   under `torchrun --nproc-per-node 2` with one thread per rank (gloo), each a fresh process as a
   user would start it; the JSON rows of all three must agree to 1e-6;
2. `layerpeel analyze RUN --all-checkpoints` (one process, checkpoints in turn) against
   `layerpeel sweep RUN` on a local Ray with one CPU per task, on copies of the same run;
3. the cost model of `layerpeel.peel.plan` against the row times measured in (1);
4. what the cost model predicts for 7B and 70B models on 8 and 64 GPUs (docs/scaling.md).

Timings on a shared machine are noisy: compare the ratios within one run, and read the load
average printed with them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from layerpeel.peel.analysis import PeelConfig
from layerpeel.peel.plan import Shape, make_plan, units


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sh(cmd: list[str], threads: int, cwd: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (every process it started, all threads) of a command."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0, c0 = time.perf_counter(), children_cpu()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return wall, cpu


def make_run(folder: Path, checkpoints: int, monitor_tokens: int) -> Path:
    from layerpeel.commands.demo import DEMO_MODEL
    from layerpeel.monitor import MonitorConfig
    from layerpeel.quant import QuantConfig
    from layerpeel.training.trainer import TrainConfig, Trainer

    cfg = TrainConfig(
        max_steps=2 * checkpoints,
        batch_size=8,
        checkpoint_every=2,
        eval_every=2 * checkpoints,
        eval_sequences=8,
        val_fraction=0.005,  # the final evaluation runs on the whole validation split
    )
    trainer = Trainer.create(folder, DEMO_MODEL, QuantConfig(), cfg)
    trainer.fit()
    sections = trainer.run.read_config()
    sections["monitor"] = MonitorConfig(tokens=monitor_tokens).to_dict()
    for key in ("kind", "version", "layerpeel"):
        sections.pop(key, None)
    trainer.run.write_config(sections)
    return folder


def max_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between numbers of two reports, wall-clock fields aside."""
    if isinstance(a, dict):
        return max(
            (max_diff(a[k], b[k]) for k in a if k not in ("time_s", "timings", "seconds", "time")),
            default=0.0,
        )
    if isinstance(a, list):
        if len(a) != len(b):
            return math.inf
        return max((max_diff(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    if isinstance(a, float) and isinstance(b, float):
        return 0.0 if (math.isnan(a) and math.isnan(b)) else abs(a - b)
    return 0.0 if a == b else math.inf


def analyze_side_by_side(run: Path, tokens: int, work: Path) -> dict[str, Any]:
    base = [sys.executable, "-m", "layerpeel", "analyze", str(run), "--tokens", str(tokens)]
    base += ["--no-progress"]
    tr = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cases = {
        "1 process, 1 thread": (base, 1),
        "1 process, 2 threads": (base, 2),
        "torchrun 2 ranks x 1 thread": ([*tr, "-m", "layerpeel", *base[3:]], 1),
    }
    out: dict[str, Any] = {}
    for name, (cmd, threads) in cases.items():
        path = work / f"{len(out)}.json"
        wall, cpu = sh([*cmd, "--json", str(path)], threads, work)
        out[name] = {"wall": wall, "cpu": cpu, "report": json.loads(path.read_text())}
    return out


def sweep_side_by_side(run: Path, work: Path) -> dict[str, Any]:
    seq, ray_run = work / "seq", work / "ray"
    shutil.copytree(run, seq)
    shutil.copytree(run, ray_run)
    py = [sys.executable, "-m", "layerpeel"]
    wall_seq, cpu_seq = sh(
        [*py, "analyze", str(seq), "--all-checkpoints", "--no-progress"], 1, work
    )
    cmd = [*py, "sweep", str(ray_run), "--local-cpus", "2", "--cpus-per-task", "1", "--no-progress"]
    wall_ray, cpu_ray = sh(cmd, 1, work)
    start = [sys.executable, "-c", "import ray; ray.init(num_cpus=2, include_dashboard=False)"]
    wall_start, _ = sh([*start[:2], start[2] + "; ray.shutdown()"], 1, work)

    def events(folder: Path) -> list[dict[str, Any]]:
        lines = (folder / "monitor.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines if x.strip()]

    a, b = events(seq), events(ray_run)
    return {
        "sequential": wall_seq,
        "ray": wall_ray,
        "cpu_seq": cpu_seq,
        "cpu_ray": cpu_ray,
        "ray_start": wall_start,
        "task_seconds_seq": sum(e["seconds"] for e in a),
        "task_seconds_ray": sum(e["seconds"] for e in b),
        "n": len(a),
        "diff": max_diff(a, b),
    }


def cost_check(run: Path, tokens: int) -> list[tuple[str, float, float]]:
    """(unit, modelled block passes, CPU seconds) of every unit, each run alone on one thread.

    CPU time of this thread, not wall time: other processes on a shared machine do not count.
    Each unit runs as a rank would run it (its own cascade references, its own final target).
    """
    import torch

    from layerpeel.peel.analysis import load_target, monitoring_from_run
    from layerpeel.peel.context import build_context
    from layerpeel.peel.plan import plan_analysis
    from layerpeel.peel.run import run_units

    torch.set_num_threads(1)
    target = load_target(run)
    mset = monitoring_from_run(target.run, None, tokens)
    cfg = PeelConfig()
    a, plan = plan_analysis(target.model, mset, cfg, 1)
    ctx = build_context(a.view, mset, cfg.batch, int(cfg.budget_mb * 2**20))
    ctx.grads()
    rows = []
    for i, unit in enumerate(plan.units):
        t0 = time.thread_time()
        run_units(ctx, a, cfg, plan, (i,))
        name = f"{unit.phase} {'/'.join(map(str, unit.key)) or '-'}"
        rows.append((name, unit.cost, time.thread_time() - t0))
    return rows


def plan_analysis_for(run: Path, tokens: int, world: int) -> Any:
    from layerpeel.peel.analysis import load_target, monitoring_from_run
    from layerpeel.peel.plan import plan_analysis

    target = load_target(run)
    return plan_analysis(
        target.model, monitoring_from_run(target.run, None, tokens), PeelConfig(), world
    )


# -- predictions ----------------------------------------------------------------------------------

MODELS = {  # layers, width, vocabulary, MLP hidden width (gated), key/value width
    "7B": (32, 4096, 32000, 11008, 4096),
    "70B": (80, 8192, 32000, 28672, 1024),
}


def block_flops_per_token(c: int, hidden: int, kv: int, seq: int) -> float:
    """Forward flops per token of a Llama-style block: projections, gated MLP, causal attention."""
    return 2 * (2 * c * c + 2 * c * kv) + 2 * 3 * c * hidden + 4 * seq * c


def predict(tokens: int, seq: int, gpus: int, rate: float) -> dict[str, Any]:
    """Time and memory per rank of the default analysis of each model (closed form, P1+P2+P3).

    `rate` is the sustained TFLOP/s of one rank. Every rank holds the whole model (bf16) and the
    cached residual streams and gradients (float32): the sharded analysis splits the work, not
    the memory.
    """
    cfg = PeelConfig()
    out = {}
    for name, (layers, c, vocab, hidden, kv) in MODELS.items():
        n_seq = tokens // seq
        per_pass = seq * block_flops_per_token(c, hidden, kv, seq)  # one block, one sequence
        head = 2 * c * vocab * seq / per_pass  # the head's 2 C V flops per token, in block passes
        s = Shape(layers, head, n_seq - n_seq // 2, n_seq // 2, False)
        cap = 2  # the default cascade for L > 8: singletons and pairs
        work = units(s, tuple(range(layers)), cfg, cap, gpus)
        plan = make_plan(work, gpus)
        # forward over both parts, then forward and backward over the fit part for dCE/dG_l
        capture = (s.fit + s.held) * (layers + head) + 3 * s.fit * (layers + head)
        passes = max(plan.load(r) for r in range(gpus)) + capture
        seconds = passes * per_pass / (rate * 1e12)
        params = layers * (2 * c * c + 2 * c * kv + 3 * c * hidden) + 2 * vocab * c
        streams = 4 * (layers + 1) * tokens * c + 4 * layers * (tokens // 2) * c  # G_l, dCE/dG_l
        gram = 8 * (hidden**2 + c**2)  # float64 Gram matrices of one block problem
        out[name] = {
            "units": len(work),
            "balance": plan.balance,
            "hours": seconds / 3600,
            "rank_hours": (sum(u.cost for u in work) + gpus * capture)
            * per_pass
            / (rate * 1e12)
            / 3600,
            "cache_gb": (streams + 2 * gram) / 2**30,
            "weights_gb": 2 * params / 2**30,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192, help="monitoring tokens of analyze")
    ap.add_argument("--checkpoints", type=int, default=8)
    ap.add_argument("--monitor-tokens", type=int, default=2048, help="tokens per sweep analysis")
    ap.add_argument("--predict-only", action="store_true", help="only the 7B / 70B predictions")
    ap.add_argument(
        "--rate", type=float, default=200.0, help="sustained TFLOP/s per rank (predictions)"
    )
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    if not args.predict_only:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            t0 = time.perf_counter()
            run = make_run(work / "run", args.checkpoints, args.monitor_tokens)
            print(f"demo run with {args.checkpoints} checkpoints: {time.perf_counter() - t0:.1f} s")
            res = analyze_side_by_side(run, args.tokens, work)
            one = res["1 process, 1 thread"]
            print(
                f"\nanalyze, demo model, {args.tokens} tokens; whole command, wall and CPU seconds:"
            )
            print(
                f"{'':<28} {'wall s':>7} {'speed-up':>8} {'CPU s':>7} {'capture':>8} {'P1':>7}"
                f" {'P2':>7} {'P3':>7} {'gather':>7} {'max |diff|':>10}"
            )
            for name, r in res.items():
                t = r["report"]["timings"]
                print(
                    f"{name:<28} {r['wall']:>7.1f} {one['wall'] / r['wall']:>7.2f}x {r['cpu']:>7.1f}"
                    + "".join(
                        f" {t.get(k, 0.0):>7.2f}" for k in ("capture", "p1", "p2", "p3", "gather")
                    )
                    + f" {max_diff(one['report'], r['report']):>10.1e}"
                )
            print("(phase columns: wall seconds inside the analysis, the slowest rank's)")
            rows = cost_check(run, args.tokens)
            scale = sum(t for *_, t in rows) / sum(c for _, c, _ in rows)
            print("\ncost model against the CPU time of each unit alone (one thread):")
            print(f"{'unit':<12} {'modelled':>9} {'CPU s':>7} {'CPU/modelled':>13}")
            for name, cost, t in rows:
                print(f"{name:<12} {cost:>9.0f} {t:>7.2f} {t / (cost * scale):>13.2f}")
            print(f"(one block pass over one sequence: {scale * 1e3:.2f} ms of CPU on average)")
            measured = {name: t for name, _, t in rows}
            for world in (2, 4):
                _, plan = plan_analysis_for(run, args.tokens, world)
                names = [f"{u.phase} {'/'.join(map(str, u.key)) or '-'}" for u in plan.units]
                line = f"plan for {world} ranks: modelled balance {plan.balance:.3f}"
                if all(n in measured for n in names):
                    loads = [sum(measured[names[i]] for i in plan.ranks[r]) for r in range(world)]
                    line += f", measured {max(loads) / (sum(loads) / world):.3f}"
                print(line + " (largest rank / mean)")
            sw = sweep_side_by_side(run, work)
            print(
                f"\nsweep over {sw['n']} checkpoints ({args.monitor_tokens} tokens each, preset standard):"
            )
            print(
                f"  in turn (analyze --all-checkpoints, 1 thread): {sw['sequential']:>6.1f} s wall,"
                f" {sw['cpu_seq']:.1f} s CPU, {sw['task_seconds_seq']:.1f} s analysing"
            )
            print(
                f"  local Ray (sweep, 2 tasks of 1 CPU at a time): {sw['ray']:>6.1f} s wall,"
                f" {sw['cpu_ray']:.1f} s CPU, {sw['task_seconds_ray']:.1f} s analysing"
            )
            print(
                f"  speed-up {sw['sequential'] / sw['ray']:.2f}x; a local Ray started and stopped"
                f" alone: {sw['ray_start']:.1f} s; max |diff| {sw['diff']:.1e}"
            )
        print(f"load average after: {os.getloadavg()}")
    print(
        f"\npredictions: 65536 tokens in sequences of 2048, closed form, P1 + P2 + P3 (pairs), "
        f"{args.rate:.0f} TFLOP/s per rank"
    )
    print(
        f"{'model':<6} {'ranks':>5} {'units':>6} {'balance':>8} {'hours':>7} {'rank-hours':>10}"
        f" {'cache GB/rank':>13} {'weights GB/rank':>15}"
    )
    for gpus in (8, 64):
        for name, p in predict(65536, 2048, gpus, args.rate).items():
            print(
                f"{name:<6} {gpus:>5} {p['units']:>6} {p['balance']:>8.3f} {p['hours']:>7.2f}"
                f" {p['rank_hours']:>10.1f} {p['cache_gb']:>13.0f} {p['weights_gb']:>15.0f}"
            )


if __name__ == "__main__":
    main()
