"""Comparing detectors with the oracle: per-case rows, the summaries, the calibration figure.

Definitions used by every table:
- the oracle's most improvable block is the one with the largest oracle gap; it is
  *identifiable* when its best model beats the runner-up's on the same held-out sequences by
  more than two standard errors of that paired difference, and by more than the oracle's seed
  spread (how much the top block's gain moves when it is trained again on other windows).
  A fault case counts toward the first-ranked floor only then ("cost-bearing": the oracle's
  spread exceeds its noise).
- the oracle's spread is significant when the most and least improvable blocks differ by more
  than two paired standard errors; Spearman is averaged over those cases. Its *noise ceiling*
  is the mean Spearman a ranking by the measured gains themselves gets against the same gains
  measured again with the oracle's noise (each block's SE and the seed spread, simulated): on
  four blocks a perfect detector cannot expect more.
- a pair of blocks is *told apart* when one's best model beats the other's by more than two
  paired standard errors and by more than the seed spread; a detector orders it right when it
  scores the better block higher.
- "whole model still training" (uniform): every block's gap is above twice its own standard
  error and the smallest is at least half the largest: the blocks are about equally improvable.
- a false red is a red block other than the faulty one; on a healthy model every red is false.
- the whole-model verdict is lp-default's report's (`PeelReport.whole`), judged without a loss
  trend; a false "behind" is a block behind on a healthy model.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from .cases import SUB_BLOCK_FAULTS
from .oracle import OracleRun, paired_margin

Z = 2.0  # standard errors a difference must exceed to count
UNIFORM = 0.5  # "about equally improvable": the smallest oracle gap at least this x the largest


@dataclass
class Judged:
    """One analysed snapshot set against its oracle."""

    name: str  # case name @ step
    fault: str
    block: int  # faulty block, -1 for none
    quant: str
    arch: str
    seed: int
    step: int
    final: bool  # the last step of its run
    ce: float  # held-out CE of the model
    gains: list[float]
    ses: list[float]
    capped: list[bool]
    top: int
    identifiable: bool
    spread_sig: bool
    uniform: bool
    seed_spread: float  # |gain of the top block trained again on other windows - its gain|
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (better, worse), told apart
    detectors: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> judged fields
    cost: float | None = None  # held-out CE above the healthy model of the same seed


def _spearman(a: list[float], b: list[float]) -> float:
    if len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan
    return float(spearmanr(a, b).statistic)


def judge(result: dict[str, Any]) -> Judged:
    case = result["case"]
    runs = [OracleRun(**r) for r in result["oracle"]]
    gains = [r.gain for r in runs]
    order = list(np.argsort(gains)[::-1])
    top, second, bottom = runs[order[0]], runs[order[1]], runs[order[-1]]
    m, se = paired_margin(top, second)
    ms, ses = paired_margin(top, bottom)
    repeat = result.get("oracle_repeat")
    seed_spread = abs(repeat["gain"] - top.gain) if repeat else 0.0
    identifiable = m > Z * se and m > seed_spread
    sig = [r.gain > Z * r.se for r in runs]
    pairs = []
    for a, b in itertools.combinations(range(len(runs)), 2):
        m_ab, se_ab = paired_margin(runs[a], runs[b])  # (b, a) is (-m_ab, se_ab)
        if abs(m_ab) > Z * se_ab and abs(m_ab) > seed_spread:
            pairs.append((a, b) if m_ab > 0 else (b, a))
    j = Judged(
        name=f"{result['name']}@{result['step']}",
        fault=case["fault"],
        block=case["block"],
        quant=case["quant"],
        arch=case["spec"]["arch"],
        seed=case["seed"],
        step=result["step"],
        final=result["step"] == case["steps"],
        ce=result["ce"],
        gains=gains,
        ses=[r.se for r in runs],
        capped=[r.capped for r in runs],
        top=int(order[0]),
        identifiable=identifiable,
        spread_sig=ms > Z * ses,
        uniform=all(sig) and min(gains) >= UNIFORM * max(gains),
        seed_spread=seed_spread,
        pairs=pairs,
    )
    for d in result["detections"]:
        reds = d["reds"]
        false_reds = None if reds is None else sum(1 for b in reds if b != j.block)
        j.detectors[d["name"]] = {
            "first": d["first"],
            "hit": d["first"] == j.top,
            "on_fault": d["first"] == j.block,
            "spearman": _spearman(d["scores"], gains),
            "reds": reds,
            "faulty_red": None if reds is None or j.block < 0 else j.block in reds,
            "false_reds": false_reds,
            "verdict": d.get("verdict"),
            "pairs_right": sum(d["scores"][a] > d["scores"][b] for a, b in pairs),
        }
    return j


def noise_ceiling(judged: list[Judged], draws: int = 400, seed: int = 0) -> float:
    """Mean Spearman of the measured gains against themselves measured again with their noise."""
    rng = np.random.default_rng(seed)
    means = []
    for j in judged:
        if not j.spread_sig:
            continue
        g = np.asarray(j.gains)
        sd = np.sqrt(np.asarray(j.ses) ** 2 + j.seed_spread**2)
        rhos = [_spearman(list(g), list(g + rng.normal(0.0, sd))) for _ in range(draws)]
        means.append(np.nanmean(rhos))
    return float(np.mean(means)) if means else math.nan


def add_costs(judged: list[Judged]) -> None:
    """Each final snapshot's CE over the healthy final model of the same kind and seed."""
    healthy = {
        (j.arch, j.quant, j.step, j.seed): j.ce for j in judged if j.fault == "none" and j.final
    }
    for j in judged:
        key = (j.arch, j.quant, j.step, j.seed)
        if j.final and key in healthy:
            j.cost = j.ce - healthy[key]


def _f(v: float | None, fmt: str = "+.4f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def case_table(judged: list[Judged], names: list[str]) -> list[str]:
    """One block of lines per snapshot: oracle gaps, each detector's pick, Spearman, reds."""
    lines = []
    for j in judged:
        fault = j.fault if j.block < 0 else f"{j.fault} b{j.block}"
        lines.append(
            f"{j.name}  [{fault}, {j.quant}, step {j.step}]  CE {j.ce:.4f}  cost {_f(j.cost)}"
        )
        gains = " ".join(
            f"{g:+.4f}±{s:.4f}{'^' if c else ''}"
            for g, s, c in zip(j.gains, j.ses, j.capped, strict=True)
        )
        flags = [
            "identifiable" if j.identifiable else "top not identifiable",
            "spread>noise" if j.spread_sig else "spread within noise",
        ] + (["whole model still training"] if j.uniform else [])
        lines.append(
            f"  oracle top {j.top}: {gains}  seed spread {j.seed_spread:.4f}  ({', '.join(flags)})"
        )
        for name in names:
            d = j.detectors.get(name)
            if d is None:
                continue
            reds = "-" if d["reds"] is None else (",".join(map(str, d["reds"])) or "none")
            lines.append(
                f"    {name:<13} first {d['first']} {'hit ' if d['hit'] else 'miss'}"
                f"  rho {_f(d['spearman'], '+.2f'):>5}  reds {reds:<8}"
                f" faulty red {_f(d['faulty_red'], '') if d['faulty_red'] is not None else '-'}"
            )
    return lines


def summary_table(judged: list[Judged], names: list[str]) -> list[str]:
    """The verdict-quality floors per detector: first-ranked hit rate, Spearman, false reds."""
    faults = [j for j in judged if j.fault != "none" and j.final]
    costly = [j for j in faults if j.identifiable]
    spread = [j for j in judged if j.spread_sig]
    healthy = [j for j in judged if j.fault == "none" and j.final]
    identified = [j for j in judged if j.identifiable]
    lines = [
        f"{len(faults)} fault cases ({len(costly)} with an identifiable oracle top), "
        f"{len(healthy)} healthy models, {len(spread)} snapshots with oracle spread > noise",
        f"{'detector':<13} {'top=oracle':>12} {'top=fault':>10} {'mean rho':>9} "
        f"{'pairs right':>12} {'faulty red':>11} {'false reds healthy':>19} "
        f"{'false reds faults':>18} {'top=oracle, any identifiable':>10}",
    ]
    n_pairs = sum(len(j.pairs) for j in judged)
    for name in names:
        rows = [j.detectors[name] for j in judged if name in j.detectors]
        if not rows:
            continue

        def rate(js: list[Judged], key: str, name: str = name) -> str:
            vals = [j.detectors[name][key] for j in js if name in j.detectors]
            vals = [v for v in vals if v is not None]
            return f"{sum(vals)}/{len(vals)}" if vals else "-"

        rhos = [j.detectors[name]["spearman"] for j in spread if name in j.detectors]
        rhos = [r for r in rhos if not math.isnan(r)]
        fr_h = [j.detectors[name]["false_reds"] for j in healthy if name in j.detectors]
        fr_f = [j.detectors[name]["false_reds"] for j in faults if name in j.detectors]
        lines.append(
            f"{name:<13} {rate(costly, 'hit'):>12} {rate(faults, 'on_fault'):>10} "
            f"{_f(float(np.mean(rhos)) if rhos else None, '+.2f'):>9} "
            f"{sum(j.detectors[name]['pairs_right'] for j in judged if name in j.detectors):>5}"
            f"/{n_pairs:<6} "
            f"{rate(faults, 'faulty_red'):>11} "
            f"{'-' if not fr_h or None in fr_h else sum(fr_h):>19}"
            f" {'-' if not fr_f or None in fr_f else sum(fr_f):>18}"
            f" {rate(identified, 'hit'):>10}"
        )
    lines.append(
        f"noise ceiling of mean rho (the oracle's own gains against a re-measurement with its "
        f"noise): {noise_ceiling(judged):+.2f}; {n_pairs} block pairs told apart by the oracle"
    )
    return lines


def _lp_default(result: dict[str, Any]) -> dict[str, Any]:
    """The lp-default detection of an evaluation's result."""
    return next(d for d in result["detections"] if d["name"] == "lp-default")


def training_table(judged: list[Judged], results: list[dict[str, Any]]) -> list[str]:
    """Along training: CE, oracle gaps, P1 gaps and the default's verdict per checkpoint."""
    by_name = {f"{r['name']}@{r['step']}": r for r in results}
    runs = sorted({j.name.split("@")[0] for j in judged if not j.final})
    lines = []
    for run in runs:
        lines.append(run)
        lines.append(
            f"  {'step':>5} {'CE':>7}  {'oracle gaps':<32} {'P1 block gaps (closed)':<32}"
            f" {'state':<10} default"
        )
        for j in sorted((j for j in judged if j.name.startswith(run + "@")), key=lambda j: j.step):
            r = by_name[j.name]
            det = _lp_default(r)
            gaps = det["values"]["gap_block"]
            state = _state(j)
            reds = ",".join(map(str, det["reds"])) or "none"
            lines.append(
                f"  {j.step:>5} {j.ce:7.4f}  {' '.join(f'{g:+.4f}' for g in j.gains):<32}"
                f" {' '.join(f'{g:+.4f}' for g in gaps):<32} {state:<10}"
                f" first {det['first']}, reds {reds}"
            )
    return lines


def _state(j: Judged) -> str:
    """The oracle's state: the whole model still training, an identifiable top, or neither."""
    return "uniform" if j.uniform else (f"top {j.top}" if j.identifiable else "-")


def verdict_table(judged: list[Judged]) -> list[str]:
    """Per snapshot the oracle's state next to lp-default's whole-model verdict; a summary."""
    rows = [
        (j, j.detectors["lp-default"]["verdict"]) for j in judged if "lp-default" in j.detectors
    ]
    rows = [(j, v) for j, v in rows if v is not None]
    if not rows:
        return ["no lp-default detection records a whole-model verdict"]
    lines = [f"{'snapshot':<46} {'fault':<14} {'oracle':<8} {'colour':<7} {'answers':<36} behind"]
    for j, v in rows:
        fault = "none" if j.block < 0 else f"{j.fault} b{j.block}"
        behind = ",".join(map(str, v["behind"])) or "none"
        lines.append(
            f"{j.name:<46} {fault:<14} {_state(j):<8} {v['colour']:<7}"
            f" {' + '.join(v['answers']) or '-':<36} {behind}"
        )
    uniform = [v for j, v in rows if j.uniform]
    faults = [(j, v) for j, v in rows if j.fault != "none" and j.final]
    healthy = [v for j, v in rows if j.fault == "none" and j.final]
    still = sum("still training" in v["answers"] for v in uniform)
    lines += [
        f"uniform snapshots with 'still training': {still}/{len(uniform)}",
        f"fault cases with the faulty block behind: "
        f"{sum(j.block in v['behind'] for j, v in faults)}/{len(faults)}",
        f"healthy models with a block behind (false 'behind'): "
        f"{sum(bool(v['behind']) for v in healthy)}/{len(healthy)}",
        f"green verdicts on uniform snapshots: "
        f"{sum(v['colour'] == 'green' for v in uniform)}/{len(uniform)}",
        *_part_spike_lines(rows),
    ]
    return lines


def _part_spike_lines(rows: list[tuple[Judged, dict[str, Any]]]) -> list[str]:
    """Sub-block weight spikes: the frozen sub-blocks against every sub-block without a fault.

    The evidence for the rule that a sub-block whose weights never trained puts its block behind.
    """
    frozen, trained = [], []
    for j, v in rows:
        for b, parts in v.get("part_spikes", {}).items():
            for part, spike in parts.items():
                if spike is None:
                    continue
                if int(b) != j.block:
                    trained.append(spike)
                elif SUB_BLOCK_FAULTS.get(j.fault) == part:
                    frozen.append(spike)
    if not trained:
        return []
    lines = [
        f"sub-block weight spikes, blocks with no fault: {min(trained):.2f}-{max(trained):.2f}"
        f" ({len(trained)} sub-blocks)"
    ]
    if frozen:
        lines.append(
            f"sub-block weight spikes, frozen at initialization: {min(frozen):.2f}-"
            f"{max(frozen):.2f} ({len(frozen)} sub-blocks)"
        )
    return lines


def calibration_pairs(results: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """(oracle gain, layerpeel gap) for every layerpeel gap that has an oracle beside it."""
    pairs: dict[str, list[tuple[float, float]]] = {"closed": [], "adam": []}
    for r in results:
        oracle = {(o["block"], o["part"]): o["gain"] for o in r["oracle"] + r["oracle_sub"]}
        for solver, rows in r["rows"].items():
            for row in rows:
                key = (row["block"], row["part"])
                if key in oracle:
                    pairs[solver].append((oracle[key], row["gap"]))
    return pairs


def calibration_lines(pairs: dict[str, list[tuple[float, float]]]) -> list[str]:
    lines = []
    for solver, ps in pairs.items():
        if not ps:
            continue
        o, g = np.array(ps).T
        ratio = g.sum() / o.sum() if o.sum() > 0 else math.nan
        lines.append(
            f"{solver}: {len(ps)} gaps; oracle mean {o.mean():.4f}, layerpeel mean {g.mean():.4f},"
            f" sum ratio {ratio:.2f}, Spearman {_f(_spearman(list(o), list(g)), '+.2f')}"
        )
    return lines


def calibration_figure(pairs: dict[str, list[tuple[float, float]]], path: Path) -> None:
    """Predicted gap (layerpeel P1) against realized gain (oracle), one point per gap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    top = 0.0
    for (solver, ps), marker in zip(pairs.items(), ("o", "^"), strict=False):
        if ps:
            o, g = np.array(ps).T
            ax.scatter(o, g, s=16, alpha=0.7, marker=marker, label=f"P1 {solver} ({len(ps)})")
            top = max(top, float(o.max()), float(g.max()))
    ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--", label="predicted = realized")
    ax.set_xlabel("oracle gain: block trained alone (nats/token)")
    ax.set_ylabel("layerpeel P1 gap (nats/token)")
    ax.set_title("P1 gap vs the gain training the block alone realizes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def short_solve_lines(results: list[dict[str, Any]], step: int = 25) -> list[str]:
    """How the oracle's gain after `step` steps ranks the blocks, next to its best gain."""
    rhos = []
    for r in results:
        early = []
        for o in r["oracle"]:
            at = {int(s): g for s, g in o["curve"]}
            early.append(at.get(step, o["gain"]))  # a run that stopped earlier keeps its best
        rhos.append(_spearman(early, [o["gain"] for o in r["oracle"]]))
    found = [v for v in rhos if not math.isnan(v)]
    if not found:
        return []
    return [
        f"oracle gain after {step} steps vs best gain, Spearman per snapshot: "
        + " ".join(f"{v:+.2f}" for v in found)
        + f"  (mean {np.mean(found):+.2f})"
    ]


def along_figure(judged: list[Judged], results: list[dict[str, Any]], path: Path) -> bool:
    """Along training, per run: held-out CE, and how far below it the best references reach.

    Top: the trained model's held-out CE at each checkpoint. Bottom: the largest P1 block gap
    (the best reference layerpeel finds, below the trained CE) and the largest oracle gain (the
    best block trained alone). False when no run of the suite has checkpoints along training.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {f"{r['name']}@{r['step']}": r for r in results}
    runs = sorted({j.name.split("@")[0] for j in judged if not j.final})
    if not runs:
        return False
    fig, axes = plt.subplots(2, 1, figsize=(6.0, 5.6), sharex=True)
    for run, colour in zip(runs, ("C0", "C1", "C2", "C3", "C4"), strict=False):
        points = sorted((j for j in judged if j.name.startswith(run + "@")), key=lambda j: j.step)
        steps = [j.step for j in points]
        p1 = [max(_lp_default(by_name[j.name])["values"]["gap_block"]) for j in points]
        label = by_name[points[0].name]["case"]["quant"]
        label = "full precision" if label == "none" else label
        axes[0].plot(steps, [j.ce for j in points], "o-", color=colour, label=label)
        axes[1].plot(steps, [max(j.gains) for j in points], "o-", color=colour,
                     label=f"{label}: oracle, best block alone")  # fmt: skip
        axes[1].plot(steps, p1, "s--", color=colour, label=f"{label}: P1, largest block gap")
    axes[0].set_ylabel("held-out CE (nats/token)")
    axes[0].legend(fontsize=8)
    axes[1].axhline(0.0, color="grey", lw=0.8)
    axes[1].set_ylabel("below the trained CE (nats/token)")
    axes[1].set_xlabel("training step")
    axes[1].set_xscale("log")
    ticks = sorted({j.step for j in judged if j.name.split("@")[0] in runs})
    axes[1].set_xticks(ticks, [str(t) for t in ticks])
    axes[1].xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axes[1].legend(fontsize=7)
    axes[0].set_title(
        "Along training: the trained loss, and the best references below it", fontsize=10
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
