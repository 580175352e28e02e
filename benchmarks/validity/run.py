"""Validity benchmark: is a detector's first-ranked block the one that training alone improves most.

    python benchmarks/validity/run.py --quick                 # tiny byte GPTs, about 10 minutes
    python benchmarks/validity/run.py --full --jobs 2         # the full suite (HF models too,
                                                              # when transformers is installed)
    options: --cache runs/validity/  --figure docs/img/validation_calibration.png  --only REGEX
             --along-figure docs/img/validation_along.png

Trains (or loads from the cache) every model of the suite, measures the oracle gap of every
block (and of every attention / MLP sub-block in sub-block fault cases), runs every detector on
the same models, and prints per case the oracle gaps with their standard errors, each
detector's first-ranked block, its Spearman correlation with the oracle, its reds; then the
summary against the floors, the along-training table, and the calibration of layerpeel's gaps
against the oracle's realized gains (with a figure).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `validity`

from validity.suite import evaluate, full_suite, quick_suite, train_job  # noqa: E402
from validity.tables import (  # noqa: E402
    add_costs,
    along_figure,
    calibration_figure,
    calibration_lines,
    calibration_pairs,
    case_table,
    judge,
    short_solve_lines,
    summary_table,
    training_table,
    verdict_table,
)

DETECTORS = [
    "lp-default", "lp-behind", "lp-gap", "lp-adam", "loo", "shortgpt", "gradnorm", "update-ratio", "gain-rate",
    "ww", "depth",
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="the quick suite (default)")
    which.add_argument("--full", action="store_true", help="the full suite")
    ap.add_argument("--cache", type=Path, default=Path("runs/validity"), help="models and results")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each)")
    ap.add_argument("--only", default=None, help="only cases whose name matches this regex")
    ap.add_argument("--figure", type=Path, default=None, help="calibration figure (PNG)")
    ap.add_argument("--along-figure", type=Path, default=None, help="along-training figure (PNG)")
    args = ap.parse_args()
    hf = importlib.util.find_spec("transformers") is not None
    cases, settings = full_suite(hf) if args.full else quick_suite()
    if args.only:
        cases = [c for c in cases if re.search(args.only, c.name)]
    t_start = time.perf_counter()
    snapshots = [(c, s) for c in cases for s in c.snapshots]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for line in pool.map(train_job, cases, [args.cache] * len(cases)):
            print(line, flush=True)
        results = list(
            pool.map(
                evaluate,
                [c for c, _ in snapshots],
                [s for _, s in snapshots],
                [args.cache] * len(snapshots),
                [settings] * len(snapshots),
            )
        )
    seconds = time.perf_counter() - t_start
    judged = [judge(r) for r in results]
    add_costs(judged)
    names = [n for n in DETECTORS if any(n in j.detectors for j in judged)]
    print("\n".join(["", "== per case (gain±SE, ^ = still improving when stopped)"]))
    print("\n".join(case_table(judged, names)))
    print("\n== summary")
    print("\n".join(summary_table(judged, names)))
    if "ww" not in names:
        print("WeightWatcher alpha: skipped (weightwatcher is not installed)")
    print("\n== along training")
    print("\n".join(training_table(judged, results)))
    print("\n== whole-model verdict (lp-default) against the oracle")
    print("\n".join(verdict_table(judged)))
    pairs = calibration_pairs(results)
    print("\n== calibration: layerpeel gap vs oracle gain")
    print("\n".join(calibration_lines(pairs)))
    print("\n".join(short_solve_lines(results)))
    if args.figure:
        calibration_figure(pairs, args.figure)
        print(f"figure: {args.figure}")
    if args.along_figure and along_figure(judged, results, args.along_figure):
        print(f"figure: {args.along_figure}")
    spent = sum(r["seconds"]["oracle"] + r["detector_seconds"] for r in results)
    print(
        f"\n{len(cases)} runs, {len(snapshots)} snapshots; {seconds:.0f} s wall "
        f"({spent:.0f} s of evaluation recorded in the results, cached ones included)"
    )


if __name__ == "__main__":
    main()
