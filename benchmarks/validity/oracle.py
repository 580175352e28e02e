"""The oracle gap: what training one block (or sub-block) alone, everything else frozen, wins.

Block k's parameters (its quantizer scales included, when it has its own) are trained with
AdamW on fresh windows of the training split, every other parameter frozen; held-out CE (on
validation windows no model was trained on) is evaluated every `eval_every` steps, and training
stops after `patience` evaluations without a new best, or at `max_steps`. The oracle gap is the
realized gain at the best evaluation: base CE minus best CE, never negative (step 0 counts as an
evaluation). Its noise is the standard error of the per-sequence gain over the held-out
sequences; `capped` says training was still improving when `max_steps` stopped it.

One learning rate does not suit every block (a first block that does most of the model's work
can lose more than it gains in its first steps at a rate that suits the others), so a run that
wins nothing beyond its noise is repeated at the next, smaller rate of `lrs`, and the better of
the runs is the oracle.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cases import copy_model, logits_of, part_parameters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OracleConfig:
    """How the oracle trains one part alone."""

    lrs: tuple[float, ...] = (1e-3, 3e-4)  # AdamW rates, constant after a warm-up; tried in
    # turn while a run wins nothing beyond twice its standard error
    warmup: int = 10  # linear warm-up steps
    batch: int = 16  # training windows per step
    max_steps: int = 200  # most steps per part
    eval_every: int = 25  # steps between held-out evaluations
    patience: int = 2  # evaluations without a new best before stopping
    seed: int = 1234  # seed of the windows drawn


@dataclass
class OracleRun:
    """What training one part alone won on the held-out windows."""

    block: int
    part: str  # "block", "attn" or "mlp"
    lr: float  # learning rate of the run kept
    gain: float  # base CE minus best CE (>= 0), nats per token
    se: float  # standard error of the gain over held-out sequences
    best_step: int  # step of the best evaluation (0: nothing better than the model as it is)
    steps: int  # steps taken
    capped: bool  # still improving at max_steps
    curve: list[tuple[int, float]]  # (step, gain) at each evaluation
    best_ce: list[float] = field(repr=False, default_factory=list)  # per held-out sequence

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@torch.no_grad()
def sequence_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 64) -> np.ndarray:
    """Mean next-token CE of each sequence (S,), float64, of a model on windows x, y (S, T)."""
    out = []
    for s in range(0, x.shape[0], batch):
        logits = logits_of(model, x[s : s + batch])  # (B, T, V)
        ce = F.cross_entropy(logits.transpose(1, 2), y[s : s + batch], reduction="none")
        out.append(ce.mean(1).double())
    return torch.cat(out).numpy()


def oracle_gap(
    model: nn.Module,
    block: int,
    part: str,
    data: object,
    train_ids: np.ndarray,
    held: tuple[torch.Tensor, torch.Tensor],
    cfg: OracleConfig,
    base: np.ndarray | None = None,
) -> OracleRun:
    """Train `part` of block `block` of a copy of `model` alone and measure its best gain.

    `data` is a `SequenceDataset`, `train_ids` the windows to draw from, `held` the held-out
    inputs and targets (S, T); `base` the model's per-sequence CE on them, if known.
    """
    base = sequence_ce(model, *held) if base is None else base
    best: OracleRun | None = None
    for lr in cfg.lrs:
        run = _train_alone(model, block, part, data, train_ids, held, cfg, base, lr)
        if best is None or run.gain > best.gain:
            best = run
        if best.gain > 2 * best.se:
            break
    assert best is not None
    log.info(
        "oracle block %d %s: gain %.4f +- %.4f at step %d, lr %g",
        block, part, best.gain, best.se, best.best_step, best.lr,
    )  # fmt: skip
    return best


def _train_alone(
    model: nn.Module,
    block: int,
    part: str,
    data: object,
    train_ids: np.ndarray,
    held: tuple[torch.Tensor, torch.Tensor],
    cfg: OracleConfig,
    base: np.ndarray,
    lr: float,
) -> OracleRun:
    """One run of the oracle at learning rate `lr`."""
    m = copy_model(model)
    for p in m.parameters():
        p.requires_grad_(False)
    params = part_parameters(m, block, part)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = np.random.Generator(np.random.PCG64(cfg.seed + 7919 * block))
    m.eval()  # no dropout in any model here; eval also keeps HF models off their training paths
    best, best_step, since, step = base, 0, 0, 0
    curve = [(0, 0.0)]
    while step < cfg.max_steps and since < cfg.patience:
        step += 1
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / max(cfg.warmup, 1))
        x, y = data.batch(train_ids[gen.integers(0, len(train_ids), cfg.batch)])  # type: ignore[attr-defined]
        logits = logits_of(m, x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            ce = sequence_ce(m, *held)
            curve.append((step, float(base.mean() - ce.mean())))
            if ce.mean() < best.mean():
                best, best_step, since = ce, step, 0
            else:
                since += 1
    diff = base - best
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return OracleRun(
        block=block,
        part=part,
        lr=lr,
        gain=float(diff.mean()),
        se=se,
        best_step=best_step,
        steps=step,
        capped=best_step == step and step == cfg.max_steps,
        curve=curve,
        best_ce=[float(v) for v in best],
    )


def paired_margin(a: OracleRun, b: OracleRun) -> tuple[float, float]:
    """How much better a's best model is than b's on the same held-out sequences: mean, SE."""
    d = np.asarray(b.best_ce) - np.asarray(a.best_ce)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
