"""Planted faults: whether layerpeel's P1 report finds the block that training left behind.

Side by side with WeightWatcher's per-layer power-law alpha on the same checkpoints.

    pip install 'layerpeel[bench]'       # WeightWatcher, optional; without it the alpha columns are skipped
    python benchmarks/planted_faults.py [--seeds 0 1] [--positions 0 1 2 3] [--steps 300] [--quant binary-global] [--solvers closed adam] [--attribute]

For every seed, fault kind (frozen, slow = learning rate 100x too small, reinit = re-initialised
at 80 % of the run) and faulty block, a 4-layer GPT (d_model 64, context 64, bytes; full
precision or `--quant`) is trained on the built-in corpus with `planted`; a healthy
model is trained per seed as well. Then:
- layerpeel: P1 rows of whole blocks (gap and work, the cost of removing the block) on a
  monitoring set from the training split, with each solver of `--solvers` on the same model;
  the top-1 pick is the first row of the report's ranking (red rows first -- a red verdict for a
  large gap or for an idle block -- then by how near red a row is: its gap over the red line, or
  the idle line over its share of the other blocks' median work); a false red is a red verdict
  on a block without a fault (every red of a healthy model is false). With `--attribute` each
  solver is also counted after attribution (`PeelConfig.attribute`: the reds after the first
  red block re-checked with its reference in place; those it explains turn yellow), from the
  same run, as "<solver>+attr".
- cost: the faulty model's held-out CE minus the healthy model's of the same seed (what there is
  to find; a fault that costs nothing cannot be found by a loss bound);
- WeightWatcher: alpha of every Linear of a block, averaged per block; the top-1 pick is the block
  with the largest mean alpha (larger alpha = less trained); its red is a mean alpha above 6,
  WeightWatcher's own line for an under-trained layer, and a false red is such a block without a
  fault.
"Faulty block red" is the share of faulty models whose faulty block gets the detector's alarm:
a ranking always names some block, an alarm has to clear a line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from layerpeel.data import ByteTokenizer, SequenceDataset, prepare_tokens, split_sequences
from layerpeel.data.monitoring import monitoring_set
from layerpeel.models import GPT, GPTConfig
from layerpeel.peel.analysis import PeelConfig, peel
from layerpeel.training.trainer import token_cache_dir
from layerpeel.verdict import Verdict
from planted import PlantedRun, train_planted

CFG = GPTConfig(vocab_size=256, n_layer=4, n_head=4, d_model=64, block_size=64)
WW_UNDERTRAINED = 6.0


@dataclass
class Peeled:
    """What layerpeel made of one trained model with one solver."""

    pick: int
    false_reds: int
    gaps: list[float]
    works: list[float]
    reds: list[int]
    caught: bool  # the faulty block's row is red


@dataclass
class Outcome:
    """What both detectors made of one trained model."""

    fault: str
    block: int
    seed: int
    lp: dict[str, Peeled]  # by solver
    ww_pick: int | None
    ww_false_reds: int | None
    ww_caught: bool | None  # the faulty block's alpha is above WeightWatcher's line
    ce: float


def ww_block_alpha(model: GPT) -> list[float] | None:
    """Mean WeightWatcher alpha of each block's Linear layers, or None without weightwatcher."""
    try:
        import weightwatcher as ww
    except ImportError:
        return None
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    details = ww.WeightWatcher(model=model).analyze()
    alphas = []
    for i, block in enumerate(model.blocks):
        names = {
            f"blocks.{i}.{n}" for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)
        }
        rows = details[details["longname"].isin(names)]
        alphas.append(float(rows["alpha"].mean()))
    return alphas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--positions", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--kinds", nargs="+", default=["frozen", "slow", "reinit"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--sequences", type=int, default=256, help="monitoring sequences of 64 tokens")
    ap.add_argument(
        "--solvers", nargs="+", default=["closed"], help="P1 solvers, each on every model"
    )
    ap.add_argument("--quant", default="none", help="quantizer of every model, e.g. binary-global")
    ap.add_argument(
        "--attribute",
        action="store_true",
        help="also count each solver's verdicts after attribution (PeelConfig.attribute)",
    )
    args = ap.parse_args()
    tokens = prepare_tokens(None, ByteTokenizer(), token_cache_dir())
    data = SequenceDataset(tokens, CFG.block_size)
    train_ids, _ = split_sequences(len(data), 0.1, seed=0)
    pick = np.linspace(0, len(train_ids) - 1, args.sequences).round().astype(np.int64)
    mset = monitoring_set(data.windows(train_ids[pick]))
    pcfgs = {
        s: PeelConfig(
            parts=("block",), ladder=False, cascade=False, solver=s, attribute=args.attribute
        )
        for s in args.solvers
    }
    labels = [
        label for s in args.solvers for label in ([s, s + "+attr"] if args.attribute else [s])
    ]
    jobs = [("none", -1, s) for s in args.seeds]
    jobs += [(k, b, s) for s in args.seeds for k in args.kinds for b in args.positions]
    outcomes: list[Outcome] = []
    t_start = time.perf_counter()
    healthy_ce: dict[int, float] = {}  # held-out CE of the healthy model of each seed
    print(
        f"{'fault':>7} {'block':>5} {'seed':>4} {'CE':>7} {'cost':>7}  {'solver':<11} {'layerpeel gaps':<32} {'work (* red)':<36} {'pick':>4} {'WW alpha':<28} {'pick':>4}"
    )
    for kind, block, seed in jobs:
        run = PlantedRun(
            fault=kind, block=max(block, 0), steps=args.steps, seed=seed, quant=args.quant
        )
        model = train_planted(CFG, data, train_ids, run)
        lp: dict[str, Peeled] = {}
        ce = 0.0
        for solver, pcfg in pcfgs.items():
            report = peel(model, mset, pcfg)
            # without attribution, the rows it explained are red as measured
            plain = dataclasses.replace(
                report,
                layers=[
                    dataclasses.replace(r, verdict=Verdict.RED) if r.explained_by is not None else r
                    for r in report.layers
                ],
            )
            views = [(solver, plain)] + ([(solver + "+attr", report)] if args.attribute else [])
            for label, view in views:
                by_block = sorted(view.layers, key=lambda r: r.block)
                reds = [r.block for r in view.layers if r.verdict == "red"]
                lp[label] = Peeled(
                    pick=view.ranked()[0].block,
                    false_reds=sum(1 for b in reds if b != block),
                    gaps=[r.gap for r in by_block],
                    works=[r.work for r in by_block],
                    reds=reds,
                    caught=block in reds,
                )
            ce = report.layers[0].ce_trained
        alphas = ww_block_alpha(model)
        ww_pick = int(np.argmax(alphas)) if alphas else None
        ww_reds = (
            None if alphas is None else [i for i, a in enumerate(alphas) if a > WW_UNDERTRAINED]
        )
        out = Outcome(
            fault=kind,
            block=block,
            seed=seed,
            lp=lp,
            ww_pick=ww_pick,
            ww_false_reds=None if ww_reds is None else sum(1 for b in ww_reds if b != block),
            ww_caught=None if ww_reds is None else block in ww_reds,
            ce=ce,
        )
        outcomes.append(out)
        if kind == "none":
            healthy_ce[seed] = out.ce
        # what the fault costs: held-out CE above the healthy model of the same seed
        cost = out.ce - healthy_ce.get(seed, out.ce)
        a = " ".join(f"{v:5.2f}" for v in alphas) if alphas else "-"
        for solver, res in lp.items():
            g = " ".join(f"{v:+.4f}" for v in res.gaps)
            w = " ".join(
                f"{v:+.4f}" + ("*" if b in res.reds else "") for b, v in enumerate(res.works)
            )
            print(
                f"{kind:>7} {block:>5} {seed:>4} {out.ce:7.4f} {cost:+7.4f}  {solver:<11} {g:<32} {w:<36} {res.pick:>4} {a:<28} {ww_pick if ww_pick is not None else '-':>4}",
                flush=True,
            )
    faulty = [o for o in outcomes if o.fault != "none"]
    healthy = [o for o in outcomes if o.fault == "none"]
    print(
        f"\n{len(faulty)} faulty and {len(healthy)} healthy models ({args.quant}), {args.steps} steps each, {time.perf_counter() - t_start:.0f} s"
    )
    n = max(len(faulty), 1)
    print(f"{'detector':<28} {'top-1 accuracy':>15} {'faulty block red':>17} {'false reds':>11}")
    for solver in labels:
        lp_acc = sum(o.lp[solver].pick == o.block for o in faulty) / n
        lp_caught = sum(o.lp[solver].caught for o in faulty) / n
        lp_false = sum(o.lp[solver].false_reds for o in outcomes)
        print(
            f"{'layerpeel P1 (' + solver + ')':<28} {lp_acc:>15.0%} {lp_caught:>17.0%} {lp_false:>11d}"
        )
    if all(o.ww_pick is not None for o in outcomes):
        ww_acc = sum(o.ww_pick == o.block for o in faulty) / n
        ww_caught = sum(bool(o.ww_caught) for o in faulty) / n
        ww_false = sum(o.ww_false_reds or 0 for o in outcomes)
        print(f"{'WeightWatcher alpha':<28} {ww_acc:>15.0%} {ww_caught:>17.0%} {ww_false:>11d}")
    else:
        print("WeightWatcher: not installed (pip install weightwatcher)")
    print(f"chance level of top-1: {1 / CFG.n_layer:.0%}")


if __name__ == "__main__":
    main()
