"""Per-block detectors of under-optimization, each run on the same model and monitoring set.

Every detector returns a `Detection`: one score per block, larger = more suspect, the block it
ranks first, and, for a detector with a line of its own, the blocks it marks red.
- lp-default: layerpeel's default analysis (closed-form P1 on block, attention and MLP, with
  each block's work and influence); its first block is the verdict's `most_improvable`, its
  order the verdict's `order` (blocks behind last), its reds the blocks with a red row; it also
  records the report's whole-model verdict (`PeelReport.whole`), judged with the run's loss
  trend.
- lp-behind: the same verdict's other answer, the blocks behind (first: the first of them,
  -1 when none is).
- lp-gap: the same report's whole-block P1 gaps alone, ranked by gap (reds: red by gap).
- lp-adam: layerpeel with its other solver (local Adam), whole blocks, ranked by its rows'
  severity (`PeelReport.ranked`: verdict, then how near the red line).
- loo: leave-one-out ablation (SLEB's metric): held-out CE without the block minus with it;
  the block whose removal costs least is the most suspect.
- shortgpt: block influence, 1 - mean cos(block input, block output) over tokens; the block
  that changes its input least is the most suspect.
- gradnorm / update-ratio: norm of the loss gradient of the block's parameters, and that norm
  over the parameters' norm; the largest is the most suspect.
- gain-rate: the first-order drop in held-out CE of one Adam step (lr 1e-3) on the block alone,
  cross-fitted: the Adam direction from the even batches of 16 monitoring windows, the CE
  gradient it is judged by from the odd ones, so noise the halves do not share averages out;
  the largest is the most improvable.
- depth: a baseline that knows nothing of the model, the earliest block first.
- ww: WeightWatcher's mean power-law alpha of the block's Linear layers (largest = least
  trained; red above 6), only when `weightwatcher` is installed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from layerpeel.arch.table import model_view
from layerpeel.data.monitoring import MonitoringSet
from layerpeel.peel.analysis import PeelConfig, peel
from layerpeel.peel.evidence import Trend

from .cases import lm_loss, part_parameters
from .oracle import sequence_ce

log = logging.getLogger(__name__)

WW_UNDERTRAINED = 6.0  # WeightWatcher's alpha line for an under-trained layer


@dataclass
class Detection:
    """One detector's verdict on one model."""

    name: str
    scores: list[float]  # per block, larger = more suspect
    first: int  # the block ranked first
    reds: list[int] | None  # blocks marked red; None for a detector without a line
    values: dict[str, list[float]] = field(default_factory=dict)  # raw numbers, by what they are
    seconds: float = 0.0
    verdict: dict[str, Any] | None = None  # lp-default: the report's whole-model verdict

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _order_scores(order: list[int], n: int) -> list[float]:
    """Scores from a ranking: the first block n, the next n - 1, ...; unranked blocks 0."""
    scores = [0.0] * n
    for pos, b in enumerate(order):
        scores[b] = float(n - pos)
    return scores


def layerpeel_detections(
    model: nn.Module,
    mset: MonitoringSet,
    solver: str,
    parts: tuple[str, ...],
    trend: Trend | None = None,
) -> tuple[list[Detection], list[dict[str, Any]]]:
    """Run layerpeel's analysis with `solver`: its ranking (and, for closed, its gaps alone); rows.

    `trend` is the training loss trend the whole-model verdict is judged with (from the run's
    loss history).
    """
    t0 = time.perf_counter()
    cfg = PeelConfig(solver=solver, parts=parts, ladder=False, cascade=False)
    report = peel(model, mset, cfg, trend=trend)
    seconds = time.perf_counter() - t0
    n = model_view(model).n_blocks
    rows = sorted((r.to_dict() for r in report.layers), key=lambda r: (r["block"], r["part"]))
    values: dict[str, list[float]] = {}
    for part in parts:
        values[f"gap_{part}"] = [r["gap"] for r in rows if r["part"] == part]
        values[f"ci_low_{part}"] = [r["ci_low"] for r in rows if r["part"] == part]
    values["work"] = [r.get("work") or 0.0 for r in rows if r["part"] == "block"]
    values["influence"] = [r.get("influence") or 0.0 for r in rows if r["part"] == "block"]
    whole = report.whole()
    order: list[int] = []
    if solver == "closed":  # the verdict's order, blocks behind last
        order = [b for b in whole.order if b not in whole.behind] + list(whole.behind)
    for row in report.ranked():
        if row.block not in order:
            order.append(int(row.block))
    scores = _order_scores(order, n)
    reds = sorted({int(r["block"]) for r in rows if r["verdict"] == "red"})
    label = "lp-default" if solver == "closed" else f"lp-{solver}"
    out = [Detection(label, list(scores), order[0], reds, values, seconds)]
    if solver == "closed":
        out[0].verdict = whole.to_dict()
        behind = list(whole.behind)
        out.append(
            Detection("lp-behind", _order_scores(behind, n), behind[0] if behind else -1, None)
        )
        gaps = values["gap_block"]
        by_gap = sorted(range(n), key=lambda b: -gaps[b])
        gap_reds = sorted(
            {int(r["block"]) for r in rows if r["ci_low"] > float(report.config["red"])}
        )
        out.append(Detection("lp-gap", list(gaps), by_gap[0], gap_reds, {"gap_block": gaps}))
    return out, rows


@contextlib.contextmanager
def _block_io(model: nn.Module, block: int, skip: bool) -> Iterator[list[torch.Tensor]]:
    """Record block `block`'s input and output residual; with `skip`, output its input instead.

    With `skip` the block is removed. Works on the block's call as the model makes it.
    """
    seen: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        x = args[0] if args else kwargs["hidden_states"]
        y = output[0] if isinstance(output, tuple) else output
        seen[:] = [x.detach(), y.detach()]
        if not skip:
            return None
        return (x, *output[1:]) if isinstance(output, tuple) else x

    handle = model_view(model).blocks[block].register_forward_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


@torch.no_grad()
def loo_and_influence(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[Detection]:
    """Leave-one-out ablation cost and ShortGPT block influence of every block, on windows x, y."""
    t0 = time.perf_counter()
    n = model_view(model).n_blocks
    base = sequence_ce(model, x, y).mean()
    cost, influence = [], []
    for b in range(n):
        with _block_io(model, b, skip=True):
            cost.append(float(sequence_ce(model, x, y).mean() - base))
        cos = []
        for s in range(0, x.shape[0], 64):
            with _block_io(model, b, skip=False) as seen:
                model(x[s : s + 64])
            cos.append(torch.cosine_similarity(seen[0], seen[1], dim=-1).flatten())
        influence.append(float(1.0 - torch.cat(cos).mean()))
    seconds = (time.perf_counter() - t0) / 2
    loo = Detection("loo", [-c for c in cost], int(np.argmin(cost)), None, {"cost": cost}, seconds)
    bi = Detection(
        "shortgpt", [-v for v in influence], int(np.argmin(influence)), None,
        {"influence": influence}, seconds,
    )  # fmt: skip
    return [loo, bi]


def gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[Detection]:
    """Per-block gradient norm of the mean loss over windows x, y, and its ratio to the weights."""
    t0 = time.perf_counter()
    n = model_view(model).n_blocks
    blocks = [part_parameters(model, b, "block") for b in range(n)]
    params = [p for ps in blocks for p in ps]
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    grads = {id(p): torch.zeros_like(p) for p in params}
    try:
        for s in range(0, x.shape[0], 32):
            loss = lm_loss(model, x[s : s + 32], y[s : s + 32]) * (
                min(32, x.shape[0] - s) / x.shape[0]
            )
            for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
                grads[id(p)] += g
    finally:
        for p, w in zip(params, was, strict=True):
            p.requires_grad_(w)
    norm = [float(sum(grads[id(p)].pow(2).sum() for p in ps) ** 0.5) for ps in blocks]
    weight = [float(sum(p.detach().pow(2).sum() for p in ps) ** 0.5) for ps in blocks]
    ratio = [g / max(w, 1e-12) for g, w in zip(norm, weight, strict=True)]
    seconds = (time.perf_counter() - t0) / 2
    return [
        Detection("gradnorm", norm, int(np.argmax(norm)), None, {"grad": norm}, seconds),
        Detection("update-ratio", ratio, int(np.argmax(ratio)), None, {"ratio": ratio}, seconds),
    ]


def adam_halves(
    model: nn.Module, block: int, x: torch.Tensor, y: torch.Tensor
) -> tuple[list[nn.Parameter], list[torch.Tensor], list[torch.Tensor]]:
    """A block's parameters, an Adam direction fitted on half the windows, the other half's gradient.

    Over batches of 16 of windows x, y: direction = a / (sqrt(v) + 1e-8), with a the mean
    gradient of the even batches and v the mean square of every batch gradient (Adam's second
    moment at that batch size); check = the mean gradient of the odd batches. Float64, one
    tensor per parameter; the parameters' `requires_grad` are left as they were.
    """
    params = part_parameters(model, block, "block")
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        batches = [
            [g.double() for g in torch.autograd.grad(lm_loss(model, x[s : s + 16], y[s : s + 16]), params)]
            for s in range(0, x.shape[0], 16)
        ]  # fmt: skip
    finally:
        for p, w in zip(params, was, strict=True):
            p.requires_grad_(w)
    per_param = [torch.stack(g) for g in zip(*batches, strict=True)]
    direction = [g[0::2].mean(0) / (g.pow(2).mean(0).sqrt() + 1e-8) for g in per_param]
    check = [g[1::2].mean(0) for g in per_param]
    return params, direction, check


def gain_rates(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float = 1e-3) -> Detection:
    """Each block's cross-fitted first-order gain of one Adam step at `lr`, on windows x, y.

    rate = lr * sum_i d_i b_i, with d the Adam direction fitted on the even batches of 16
    windows and b the mean gradient of the odd ones (`adam_halves`).
    """
    t0 = time.perf_counter()
    rates = []
    for b in range(model_view(model).n_blocks):
        _, direction, check = adam_halves(model, b, x, y)
        rates.append(lr * float(sum((d * c).sum() for d, c in zip(direction, check, strict=True))))
    seconds = time.perf_counter() - t0
    return Detection("gain-rate", rates, int(np.argmax(rates)), None, {"rate": rates}, seconds)


def depth_order(n: int) -> Detection:
    """The baseline that ranks the earliest block first, knowing nothing of the model."""
    scores = [float(n - b) for b in range(n)]
    return Detection("depth", scores, 0, None, {})


def weightwatcher_alpha(model: nn.Module) -> Detection | None:
    """WeightWatcher's mean alpha per block, or None when weightwatcher is not installed."""
    try:
        import weightwatcher as ww
    except ImportError:
        return None
    t0 = time.perf_counter()
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    details = ww.WeightWatcher(model=model).analyze()
    view = model_view(model)
    prefix = {id(b): n for n, b in model.named_modules() if any(b is v for v in view.blocks)}
    alphas = []
    for b in view.blocks:
        names = {f"{prefix[id(b)]}.{n}" for n, _ in b.named_modules() if n}
        alphas.append(float(details[details["longname"].isin(names)]["alpha"].mean()))
    reds = [b for b, a in enumerate(alphas) if a > WW_UNDERTRAINED]
    return Detection(
        "ww", alphas, int(np.argmax(alphas)), reds, {"alpha": alphas}, time.perf_counter() - t0
    )


def run_detectors(
    model: nn.Module, mset: MonitoringSet, parts: tuple[str, ...], trend: Trend | None = None
) -> tuple[list[Detection], dict[str, list[dict[str, Any]]]]:
    """Every detector on `model`, its data-driven ones on the monitoring set's windows.

    Returns the detections and layerpeel's rows by solver; `trend` is the run's loss trend.
    """
    dets, rows = layerpeel_detections(model, mset, "closed", parts, trend)
    adam, adam_rows = layerpeel_detections(model, mset, "adam", ("block",), trend)
    x, y = mset.inputs("all"), mset.targets("all")
    dets += adam + loo_and_influence(model, x, y) + gradient_norms(model, x, y)
    dets += [gain_rates(model, x, y), depth_order(model_view(model).n_blocks)]
    ww = weightwatcher_alpha(model)
    if ww is not None:
        dets.append(ww)
    return dets, {"closed": rows, "adam": adam_rows}
