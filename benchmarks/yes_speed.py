"""YES bounds speed: layerpeel against a plain per-subset pinv computation, timed side by side.

    python benchmarks/yes_speed.py                 # the paper's setting, then L = 3..10
    python benchmarks/yes_speed.py --paper-only --repeats 5
    python benchmarks/yes_speed.py --paper-only --default-threads --torch-pinv

Setting: the paper's synthetic task (y = |Ax|, n = 20, m = 100, N = 800 training samples), the
hidden outputs of an MLP trained for a few epochs with the paper's recipe. "plain" is the method
written directly: for every anchor subset and every layer, W = T pinv([H; 1]) with numpy's (or
torch's) pinv, nothing shared.

Every job runs on one thread (numpy's OpenBLAS is held to one thread for the whole run through
OPENBLAS_NUM_THREADS, set before numpy loads; torch through `torch.set_num_threads`);
`--default-threads` adds layerpeel's rows at torch's default thread count. Jobs are interleaved
in one process: in each repeat each job runs three times in a row; the first call and the best of
the next two (steady state) are kept, and the table shows their medians over the repeats. The
ratios are the plain numpy computation's steady wall and CPU times over the job's (the CPU time of
this process, which a busy machine's time slicing does not inflate).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS on one thread (before numpy)

import argparse  # noqa: E402
import itertools  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from layerpeel.models import MLP, MLPConfig  # noqa: E402
from layerpeel.yes import YesTracker, yes_bounds  # noqa: E402
from layerpeel.yes.paper import TASKS  # noqa: E402

_ARGS = argparse.ArgumentParser(description=__doc__.splitlines()[0])
_ARGS.add_argument("--repeats", type=int, default=5, help="interleaved repeats per timing")
_ARGS.add_argument("--train-epochs", type=int, default=30, help="epochs of the paper's recipe")
_ARGS.add_argument("--naive-max-layers", type=int, default=7, help="time plain pinv up to this L")
_ARGS.add_argument("--cap", type=int, default=2, help="max_anchors of the capped column")
_ARGS.add_argument("--torch-pinv", action="store_true", help="also time plain torch.linalg.pinv")
_ARGS.add_argument(
    "--default-threads", action="store_true", help="also time layerpeel at torch's default threads"
)
_ARGS.add_argument("--paper-only", action="store_true", help="skip the table against depth")

DEFAULT_THREADS = torch.get_num_threads()


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


def side_by_side(
    jobs: dict[str, tuple[int, Callable[[], object]]], repeats: int
) -> dict[str, tuple[float, float, float]]:
    """(first-call wall, steady wall, steady CPU) seconds of each job at its thread count.

    In each repeat each job runs three times in a row: the first call comes right after the other
    jobs, the best of the next two is the steady state. Medians over the repeats.
    """
    first: dict[str, list[float]] = {name: [] for name in jobs}
    steady: dict[str, list[float]] = {name: [] for name in jobs}
    cpu: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, (threads, fn) in jobs.items():
            torch.set_num_threads(threads)
            runs = []
            for _ in range(3):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                runs.append((time.perf_counter() - t0, time.process_time() - c0))
            first[name].append(runs[0][0])
            best = min(runs[1:])
            steady[name].append(best[0])
            cpu[name].append(best[1])
    torch.set_num_threads(1)
    med = statistics.median
    return {n: (med(first[n]), med(steady[n]), med(cpu[n])) for n in jobs}


def paper_setting() -> None:
    x, y, hidden = synthetic_setting(5, ARGS.train_epochs)
    tracker = YesTracker(x, y)
    tracker.bounds(hidden)  # builds the cached X factorization and YES-0
    counts = [1, DEFAULT_THREADS] if ARGS.default_threads and DEFAULT_THREADS > 1 else [1]
    jobs: dict[str, tuple[int, Callable[[], object]]] = {
        "plain numpy pinv per subset [1]": (1, lambda: plain_losses(x, y, hidden, numpy_pinv)),
    }
    if ARGS.torch_pinv:
        jobs["plain torch pinv per subset [1]"] = (
            1,
            lambda: plain_losses(x, y, hidden, torch_pinv),
        )
    for n in counts:
        jobs[f"layerpeel yes_bounds [{n}]"] = (n, lambda: yes_bounds(x, y, hidden))
        jobs[f"layerpeel tracker check, YES-0 cached [{n}]"] = (n, lambda: tracker.bounds(hidden))
    load = os.getloadavg()
    times = side_by_side(jobs, ARGS.repeats)
    load_after = os.getloadavg()
    fast = yes_bounds(x, y, hidden)
    ref = plain_losses(x, y, hidden, numpy_pinv)
    err = max(abs(fast.losses[s] - v) / v for s, v in ref.items())
    _, plain, plain_cpu = times["plain numpy pinv per subset [1]"]
    print(f"Paper setting: N=800, m=100, n=20, L=5, {ARGS.train_epochs} training epochs; ", end="")
    print(f"medians of {ARGS.repeats} interleaved repeats; [threads]")
    print(f"load average (1 min) {load[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"work: {fast.stats}")
    print(f"max relative difference of J(sigma), layerpeel vs plain numpy pinv: {err:.1e}")
    print(
        f"{'method [torch threads]':44s} {'first ms':>9s} {'steady ms':>9s} {'plain/this':>10s} "
        f"{'CPU ms':>8s} {'plain/this':>10s}"
    )
    for name, (t_first, t_steady, t_cpu) in times.items():
        print(
            f"{name:44s} {t_first * 1e3:9.1f} {t_steady * 1e3:9.1f} {plain / t_steady:9.1f}x "
            f"{t_cpu * 1e3:8.1f} {plain_cpu / t_cpu:9.1f}x"
        )


def depth_table() -> None:
    print()
    print(
        f"Time against depth (N=800, m=100; capped = max_anchors {ARGS.cap}; plain pinv up to "
        f"L={ARGS.naive_max_layers}; one run each on one thread, CPU seconds; "
        f"nodes = factorizations; load {os.getloadavg()[0]:.1f})"
    )
    print(
        f"{'L':>3s} {'subsets':>8s} {'full':>8s} {'nodes':>6s} "
        f"{'capped':>8s} {'subsets':>8s} {'nodes':>6s} {'plain':>8s} {'plain/full':>10s}"
    )
    for n_layers in range(3, 11):
        x, y, hidden = synthetic_setting(n_layers, ARGS.train_epochs)
        t0 = time.process_time()
        full = yes_bounds(x, y, hidden)
        t_full = time.process_time() - t0
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
            f"{full.stats['factorizations']:6d} {t_cap:8.2f} "
            f"{cap.stats['subsets']:8d} {cap.stats['factorizations']:6d} {plain}"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    ARGS = _ARGS.parse_args()
    torch.set_num_threads(1)
    paper_setting()
    if not ARGS.paper_only:
        depth_table()
