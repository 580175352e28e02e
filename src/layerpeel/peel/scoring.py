"""Scoring references in held-out cross-entropy: per-sequence CE, paired bootstrap, verdicts."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from layerpeel.arch.views import ModelView
from layerpeel.peel.config import PeelConfig
from layerpeel.peel.rows import GapRow
from layerpeel.verdict import Verdict

HEAD_ELEMENTS = 1 << 22  # logits per head chunk on a CPU (16 MB in float32): they stay in cache
HEAD_ROWS = 2048  # token rows per head chunk on an accelerator, which wants large products


def head_rows(vocab: int, device: torch.device) -> int:
    """Token rows per head chunk: about `HEAD_ELEMENTS` logits on a CPU, `HEAD_ROWS` elsewhere."""
    return max(64, HEAD_ELEMENTS // vocab) if device.type == "cpu" else HEAD_ROWS


def token_ce(
    head: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    targets: torch.Tensor,
    rows: int | None = None,
) -> torch.Tensor:
    """Next-token CE (nats) of each position: the head on the final residual x (B,T,C), (B,T).

    The logits are formed a chunk of `rows` tokens at a time, and the CE is taken on contiguous
    (rows, V) logits. By default the chunks after the first (64 rows, which tell the vocabulary
    size) are `head_rows` long: on a CPU, logits that stay in cache between the head's product
    and the CE make the two faster at a 50k vocabulary than chunks of thousands of rows, whose
    logits go through memory twice (docs/benchmarks.md).
    """
    flat_x, flat_t = x.reshape(-1, 1, x.shape[-1]), targets.reshape(-1)
    out: list[torch.Tensor] = []
    s, step = 0, rows or 64
    while s < flat_t.numel():
        logits = head(flat_x[s : s + step]).flatten(0, 1).float()  # (step, V)
        out.append(F.cross_entropy(logits, flat_t[s : s + step], reduction="none"))
        s += step
        step = rows or head_rows(logits.shape[-1], x.device)
    return torch.cat(out).view(targets.shape)


@torch.no_grad()
def sequence_ce(
    view: ModelView,
    start: int,
    x: torch.Tensor,
    targets: torch.Tensor,
    replace: dict[int, nn.Module] | None = None,
    batch: int = 16,
    dtype: str = "float32",
    stride: int = 1,
) -> torch.Tensor:
    """Mean next-token CE (nats) of each sequence, entering block `start` with residual x (S,T,C).

    With `stride` k > 1 the head and its CE take every k-th position only (the blocks still run
    on every position): an unbiased estimate of each sequence's mean at about 1/k of the head's
    cost, which dominates a forward pass with a large vocabulary.

    `replace` maps block indices to reference blocks; start = L scores the head alone. With
    `dtype="bfloat16"` the matrix products of the blocks and the head run in bfloat16 (autocast
    on the tensors' device: float32 accumulation, bfloat16 results; the residual stream, the norms and the
    softmax stay float32). That is several times faster on CPUs with bfloat16 units, and its CE
    is comparable only with CE scored the same way from the same block.
    """
    replace = replace or {}
    out = []
    for s in range(0, x.shape[0], batch):
        h = x[s : s + batch]
        with torch.autocast(h.device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            for i in range(start, view.n_blocks):
                h = view.run_block(replace.get(i, view.blocks[i]), h)
            ce = token_ce(view.head, h[:, ::stride], targets[s : s + batch, ::stride])
        out.append(ce.mean(1).double())
    return torch.cat(out)


def same_block(a: nn.Module, b: nn.Module) -> bool:
    """Whether two blocks hold identical parameters and buffers (so they compute the same)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def bootstrap_interval(
    diff: torch.Tensor, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-sequence differences (S,)."""
    d = diff.double().cpu().numpy()  # once per row, after its scores
    if d.size < 2:
        return float(d.mean()), float(d.mean())
    rng = np.random.Generator(np.random.PCG64(seed))
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    means = d[idx].mean(1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


@dataclass
class Thresholds:
    """Verdict thresholds on a gap and on a block's work, in nats per token."""

    red: float = PeelConfig.red  # red when the interval's lower end exceeds this
    yellow: float = PeelConfig.yellow  # yellow when the gap itself exceeds this
    idle: float = PeelConfig.idle  # idle below this fraction of the peers' median work; 0: off

    @classmethod
    def of(cls, config: PeelConfig | dict[str, Any]) -> Thresholds:
        """The thresholds of settings, or of a report's recorded settings (defaults if missing)."""
        if isinstance(config, PeelConfig):
            return cls(config.red, config.yellow, config.idle)
        return cls(**{k: float(config[k]) for k in ("red", "yellow", "idle") if k in config})

    def verdict(self, gap: float, ci_low: float) -> Verdict:
        """Red when the interval clears `red`, yellow when the gap exceeds `yellow`."""
        if ci_low > self.red:
            return Verdict.RED
        if gap > self.yellow:
            return Verdict.YELLOW
        return Verdict.GREEN

    def is_idle(self, work: float, work_ci_high: float, others: list[float]) -> bool:
        """Whether a block does no measurable work next to the other blocks of its model.

        Idle: removing the block costs less than `red` (the whole interval below it) and less
        than `idle` times the median of what removing each other block costs. Needs at least two
        other blocks to compare with.
        """
        median = peer_median(others)
        if self.idle <= 0 or median is None:
            return False
        return work_ci_high < self.red and work < self.idle * median


def peer_median(others: list[float]) -> float | None:
    """The median work of the other blocks, the idle rule's yardstick; None with fewer than two."""
    return float(np.median(others)) if len(others) >= 2 else None


def mark_idle(
    rows: list[GapRow], thresholds: Thresholds, peers: dict[int, float] | None = None
) -> None:
    """Set `idle` and the verdict of every whole-block P1 row that carries its `work`.

    The other blocks' work comes from `rows` and, for blocks not in them, from `peers` (block ->
    work, e.g. from earlier analyses). An idle block is red whatever its gap; the other rows keep
    their gap's verdict.
    """
    known = {**(peers or {}), **block_works(rows)}
    for r in rows:
        if r.part != "block" or r.work is None or r.work_ci_high is None:
            continue
        others = [w for b, w in known.items() if b != r.block]
        median = peer_median(others)
        r.work_ratio = r.work / median if median is not None and median > 0 else None
        r.idle = thresholds.is_idle(r.work, r.work_ci_high, others)
        r.verdict = Verdict.RED if r.idle else gap_verdict(r, thresholds)


def gap_verdict(row: GapRow, thresholds: Thresholds) -> Verdict:
    """A row's verdict by its gap: yellow, not red, when an earlier block's fix explains it."""
    verdict = thresholds.verdict(row.gap, row.ci_low)
    explained = verdict == Verdict.RED and row.explained_by is not None
    return Verdict.YELLOW if explained else verdict


def block_works(rows: list[GapRow]) -> dict[int, float]:
    """The work of each block whose whole-block row carries it: block -> work."""
    return {r.block: float(r.work) for r in rows if r.part == "block" and r.work is not None}


def alarm(row: GapRow, thresholds: Thresholds) -> float:
    """How near a row is to being red, as a multiple of its line: 1 at the line, more past it.

    The larger of the gap over the red line and, for a whole block whose work was compared
    with its peers' (`work_ratio`, its work over their median), the idle line over that ratio:
    a block doing 0.2 of its peers' median work is half-way to idle at the 0.1 line, one whose
    removal helps (ratio <= 0) is past any line.
    """
    level = float(row.gap) / thresholds.red if thresholds.red > 0 else 0.0
    ratio = row.work_ratio
    if ratio is not None and thresholds.idle > 0:
        level = max(level, thresholds.idle / ratio if ratio > 0 else math.inf)
    return level


def severity(row: GapRow, thresholds: Thresholds | None = None) -> tuple[int, float]:
    """Sort key of a row, most worrying first when sorted in reverse: verdict, then `alarm`."""
    level = alarm(row, thresholds or Thresholds())
    return Verdict(row.verdict).rank, level
