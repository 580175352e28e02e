"""YES bounds speed: layerpeel against a plain per-subset pinv computation, timed side by side.

    python benchmarks/yes_speed.py                 # the paper's setting, then L = 3..10
    python benchmarks/yes_speed.py --paper-only --repeats 9
    python benchmarks/yes_speed.py --threads 4 --naive-max-layers 8

Setting: the paper's synthetic task (y = |Ax|, n = 20, m = 100, N = 800 training samples), the
hidden outputs of an MLP trained for a few epochs with the paper's recipe. "plain" is the method
written directly: for every anchor subset and every layer, W = T pinv([H; 1]) with numpy's (or
torch's) pinv, nothing shared.

Every method runs on one thread and on `--threads` threads (BLAS, OpenMP and torch, set at run
time), interleaved in one process: in each repeat each job runs three times in a row; the first
call (after the other jobs ran) and the best of the next two (steady state) are kept, and the
table shows their medians over the repeats, with the steady call's CPU time (this process's and
the YES helper processes'). The ratio is against the fastest plain configuration, so each side
is compared at its best. On more than one thread, layerpeel shares each walk with helper
processes (`layerpeel.yes.helper`); they are started, and awaited, before the timing.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from layerpeel.models import MLP, MLPConfig
from layerpeel.yes import YesTracker, yes_bounds
from layerpeel.yes import helper as yes_helper
from layerpeel.yes.paper import TASKS

_ARGS = argparse.ArgumentParser(description=__doc__.splitlines()[0])
_ARGS.add_argument(
    "--threads", type=int, default=os.cpu_count() or 1, help="the threaded configuration"
)
_ARGS.add_argument("--repeats", type=int, default=5, help="interleaved repeats per timing")
_ARGS.add_argument("--train-epochs", type=int, default=30, help="epochs of the paper's recipe")
_ARGS.add_argument("--naive-max-layers", type=int, default=7, help="time plain pinv up to this L")
_ARGS.add_argument("--cap", type=int, default=2, help="max_anchors of the capped column")
_ARGS.add_argument("--torch-pinv", action="store_true", help="also time plain torch.linalg.pinv")
_ARGS.add_argument("--paper-only", action="store_true", help="skip the table against depth")


def plain_losses(x: np.ndarray, y: np.ndarray, hidden: list[np.ndarray], pinv: Callable) -> dict:
    """J(sigma) for every subset: per subset, per layer, one pinv of [H; 1]; nothing shared."""
    n_layers, n = len(hidden) + 1, y.shape[1]
    losses = {}
    for k in range(n_layers):
        for sub in itertools.combinations(range(1, n_layers), k):
            h = x
            for layer in range(1, n_layers + 1):
                anchor = min([s for s in sub if s >= layer], default=n_layers)
                t = y if anchor == n_layers else hidden[anchor - 1]
                ht = np.vstack([h, np.ones((1, n))])
                h = (t @ pinv(ht)) @ ht
                if layer < n_layers:
                    h = np.maximum(h, 0.0)
            losses[sub] = float(((h - y) ** 2).sum() / n)
    return losses


def numpy_pinv(a: np.ndarray) -> np.ndarray:
    return np.linalg.pinv(a, rcond=max(a.shape) * np.finfo(float).eps)


def torch_pinv(a: np.ndarray) -> np.ndarray:
    return torch.linalg.pinv(torch.from_numpy(a)).numpy()


def synthetic_setting(n_layers: int, epochs: int, seed: int = 0):
    """X (20, 800), Y (100, 800) and the L-1 hidden outputs (100, 800) of a briefly trained MLP."""
    task = TASKS["synthetic"](np.random.default_rng(seed), 0)
    torch.manual_seed(seed)
    net = MLP(MLPConfig(n_in=20, width=100, n_layers=n_layers))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(task.x_train.shape[0])
        for s in range(0, len(perm), 50):
            idx = perm[s : s + 50]
            loss = (net(task.x_train[idx]) - task.y_train[idx]).square().sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        hidden = [h.T.double().numpy() for h in net.hidden(task.x_train)]
    return task.x_train.T.double().numpy(), task.y_train.T.double().numpy(), hidden


class Threads:
    """BLAS, OpenMP and torch on `n` threads meanwhile."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        self.before = torch.get_num_threads()
        self.limits = threadpool_limits(limits=self.n)
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)
        self.limits.restore_original_limits()


def side_by_side(
    jobs: dict[str, tuple[int, Callable[[], object]]], repeats: int
) -> dict[str, tuple[float, float, float]]:
    """(first-call wall, steady wall, steady CPU) seconds of each (threads, job), interleaved.

    In each repeat each job runs three times in a row under its thread count: the first call comes
    right after the other jobs, the best of the next two is the steady state. Medians over repeats.
    """
    first: dict[str, list[float]] = {name: [] for name in jobs}
    wall: dict[str, list[float]] = {name: [] for name in jobs}
    cpu: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, (threads, fn) in jobs.items():
            runs = []
            with Threads(threads):
                for _ in range(3):
                    t0, c0 = time.perf_counter(), time.process_time() + yes_helper.helper_cpu()
                    fn()
                    c1 = time.process_time() + yes_helper.helper_cpu()
                    runs.append((time.perf_counter() - t0, c1 - c0))
            first[name].append(runs[0][0])
            steady = min(runs[1:])
            wall[name].append(steady[0])
            cpu[name].append(steady[1])
    med = statistics.median
    return {n: (med(first[n]), med(wall[n]), med(cpu[n])) for n in jobs}


def paper_setting() -> None:
    with Threads(1):
        x, y, hidden = synthetic_setting(5, ARGS.train_epochs)
        tracker = YesTracker(x, y)
        tracker.bounds(hidden)  # builds the cached X factorization and YES-0
    counts = sorted({1, ARGS.threads})
    # Walks on more than one thread hand subtrees to helper processes once they have started.
    helpers = yes_helper.wait_ready(ARGS.threads) if ARGS.threads > 1 else False
    methods: dict[str, Callable[[], object]] = {
        "plain numpy pinv per subset": lambda: plain_losses(x, y, hidden, numpy_pinv),
    }
    if ARGS.torch_pinv:
        methods["plain torch pinv per subset"] = lambda: plain_losses(x, y, hidden, torch_pinv)
    methods["layerpeel yes_bounds"] = lambda: yes_bounds(x, y, hidden)
    methods["layerpeel tracker check (YES-0 cached)"] = lambda: tracker.bounds(hidden)
    jobs = {f"{name} [{n}]": (n, fn) for name, fn in methods.items() for n in counts}
    load = os.getloadavg()
    times = side_by_side(jobs, ARGS.repeats)
    load_after = os.getloadavg()
    with Threads(1):
        fast = yes_bounds(x, y, hidden)
        ref = plain_losses(x, y, hidden, numpy_pinv)
    with Threads(ARGS.threads):
        split = yes_bounds(x, y, hidden)
    err = max(abs(b.losses[s] - v) / v for s, v in ref.items() for b in (fast, split))
    best = min(times[k][1] for k in jobs if k.startswith("plain"))
    best_cpu = min(times[k][2] for k in jobs if k.startswith("plain"))
    print(f"Paper setting: N=800, m=100, n=20, L=5, {ARGS.train_epochs} training epochs; ", end="")
    print(f"1 and {ARGS.threads} threads, medians of {ARGS.repeats} interleaved repeats")
    print(f"load average (1 min) {load[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"helper processes: {'yes' if helpers else 'no'}")
    print(f"work on 1 thread: {fast.stats}")
    print(f"work on {ARGS.threads} threads: {split.stats}")
    print(f"max relative difference of J(sigma), layerpeel vs plain pinv: {err:.1e}")
    print(f"fastest plain: {best * 1e3:.1f} ms steady wall, {best_cpu * 1e3:.1f} ms CPU")
    print(
        f"{'method [threads]':44s} {'first ms':>9s} {'steady ms':>9s} {'best plain/':>11s} "
        f"{'CPU ms':>8s} {'best plain/':>11s}"
    )
    for name in jobs:
        t_first, t_wall, t_cpu = times[name]
        print(
            f"{name:44s} {t_first * 1e3:9.1f} {t_wall * 1e3:9.1f} {best / t_wall:10.1f}x "
            f"{t_cpu * 1e3:8.1f} {best_cpu / t_cpu:10.1f}x"
        )


def depth_table() -> None:
    print()
    print(
        f"Time against depth (N=800, m=100; capped = max_anchors {ARGS.cap}; plain pinv up to "
        f"L={ARGS.naive_max_layers}; one run each, CPU seconds; nodes = factorizations; "
        f"load {os.getloadavg()[0]:.1f})"
    )
    print(
        f"full [{ARGS.threads}]: the full enumeration on {ARGS.threads} threads, wall seconds "
        "(one run each too)"
    )
    print(
        f"{'L':>3s} {'subsets':>8s} {'full':>8s} {'nodes':>6s} {f'full [{ARGS.threads}]':>9s} "
        f"{'capped':>8s} {'subsets':>8s} {'nodes':>6s} {'plain':>8s} {'plain/full':>10s}"
    )
    for n_layers in range(3, 11):
        x, y, hidden = synthetic_setting(n_layers, ARGS.train_epochs)
        t0 = time.process_time()
        full = yes_bounds(x, y, hidden)
        t_full = time.process_time() - t0
        with Threads(ARGS.threads):
            t0 = time.perf_counter()
            yes_bounds(x, y, hidden)
            t_threads = time.perf_counter() - t0
        t0 = time.process_time()
        cap = YesTracker(x, y, max_anchors=ARGS.cap).bounds(hidden)
        t_cap = time.process_time() - t0
        plain = f"{'-':>8s} {'-':>10s}"
        if n_layers <= ARGS.naive_max_layers:
            t0 = time.process_time()
            plain_losses(x, y, hidden, numpy_pinv)
            t_plain = time.process_time() - t0
            plain = f"{t_plain:8.2f} {t_plain / t_full:9.1f}x"
        print(
            f"{n_layers:3d} {full.stats['subsets']:8d} {t_full:8.2f} "
            f"{full.stats['factorizations']:6d} {t_threads:9.2f} {t_cap:8.2f} "
            f"{cap.stats['subsets']:8d} {cap.stats['factorizations']:6d} {plain}"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    ARGS = _ARGS.parse_args()
    paper_setting()
    if not ARGS.paper_only:
        with Threads(1):
            depth_table()
