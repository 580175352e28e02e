"""P1, the layer gap: how much end cross-entropy re-optimizing one block (or sub-block) can save.

gap = CE_trained - CE(model with the reference block), on the held-out part. Two solvers:
target propagation (the local target G_l - eta dCE/dG_l, eta by line search on the fit part,
then a closed-form peel) and local Adam on the block's parameters through the frozen rest.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from layerpeel.peel.config import PeelConfig
from layerpeel.peel.context import PeelContext
from layerpeel.peel.rows import GapRow
from layerpeel.peel.scoring import Thresholds, bootstrap_interval, same_block, sequence_ce
from layerpeel.solvers.adam import AdamOptions, adam_reference
from layerpeel.solvers.closed import BlockProblem, ClosedFormOptions

log = logging.getLogger(__name__)


def is_trained(ref: nn.Module, block: nn.Module) -> bool:
    """Whether reference `ref` computes as the trained `block` (it is it, or holds its weights)."""
    return ref is block or same_block(ref, block)


def _kept(ctx: PeelContext, index: int, ref: nn.Module) -> nn.Module:
    """A reference to keep: a copy when it is the trained block itself, which must not be shared."""
    return ctx.view.reference_copy(index) if ref is ctx.view.blocks[index] else ref


def block_influence(ctx: PeelContext, index: int, chunk: int = 16) -> float:
    """How much block `index` turns the residual stream: 1 - mean cos(G_index, G_index+1).

    ShortGPT's block influence, per held-out token. Under a scale-free optimizer (Adam moves each
    weight by about the same fraction) a block's reach over the output grows with its share of
    the residual stream, which this measures: the block that turns the stream most is the one
    whose further training moves the loss most (docs/validation.md measures it against training
    each block alone).
    """
    x, y = ctx.held[index], ctx.held[index + 1]
    total, count = 0.0, 0
    for s in range(0, x.shape[0], chunk):
        cos = torch.nn.functional.cosine_similarity(
            x[s : s + chunk].double(), y[s : s + chunk].double(), dim=-1
        )
        total += float(cos.sum())
        count += cos.numel()
    return 1.0 - total / max(count, 1)


def _rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


def block_work(
    ctx: PeelContext, index: int, trained: torch.Tensor, opts: PeelConfig
) -> tuple[float, float, float]:
    """What block `index` does: held-out CE without it minus CE with it, and its interval.

    Without the block is the model whose block `index` has zero output maps (the identity on
    the residual stream): a network of the same class, under every quantizer too. It is scored
    as the trained model is, from the same block, so `trained` is the trained tail's CE.
    """
    without = ctx.held_ce(index + 1, ctx.held[index], {})
    diff = without - trained
    lo, hi = bootstrap_interval(diff, opts.n_boot, seed=opts.seed)
    return float(diff.mean()), lo, hi


class _TargetPropagation:
    """The closed-form P1 references of one block: targets G_l - eta * dCE/dG_l, eta by search.

    One `BlockProblem` on the search sequences and one on the whole fit part serve every part and
    every eta, for the quantized and the full-precision reference alike; the second is built only
    when some part takes a step (eta 0 is the trained block itself). The search fits on one half
    of its sequences and scores on the other, so it does not reward a step that only helps the
    sequences it was fitted on.
    """

    def __init__(self, ctx: PeelContext, index: int, opts: PeelConfig) -> None:
        self.ctx, self.index, self.opts = ctx, index, opts
        x, out = ctx.fit[index], ctx.fit[index + 1]
        g = ctx.grads()[index]  # dCE/dG_{index+1}, (S, T, C)
        self.unit = _rms(out) / max(_rms(g), 1e-30)
        n_search = min(opts.search_sequences, x.shape[0])
        half = max(1, n_search // 2)
        self.score = slice(half, max(half + 1, n_search))
        self.copts = ClosedFormOptions(ridge=opts.ridge)
        self.search = BlockProblem(ctx.view, index, x[:half], [out[:half], g[:half]], self.copts)
        self._full: BlockProblem | None = None  # on the whole fit part: only for a step eta > 0
        self._scores: dict[
            tuple[str, float, str | None], float
        ] = {}  # search CE by (move, eta, scheme)
        self._trained_ce: float | None = None  # the trained block's search score, on demand
        self._refs: dict[tuple[str, float, str | None], nn.Module] = {}  # full solves, by key

    @property
    def full(self) -> BlockProblem:
        """The block's problem on the whole fit part, built when a step eta > 0 is taken."""
        if self._full is None:
            ctx, i = self.ctx, self.index
            out, g = ctx.fit[i + 1], ctx.grads()[i]
            self._full = BlockProblem(ctx.view, i, ctx.fit[i], [out, g], self.copts)
        return self._full

    def _solve_full(self, move: str, eta: float, scheme: str | None) -> nn.Module:
        """The reference of `move` at step eta on the whole fit part, solved once per key."""
        key = (move, eta, scheme)
        if key not in self._refs:
            self._refs[key] = self._solve(self.full, move, eta, scheme)
        return self._refs[key]

    def _solve(self, problem: BlockProblem, move: str, eta: float, scheme: str | None) -> nn.Module:
        """The reference of `move` at step eta; at eta 0, the trained block itself.

        At eta 0 the target is the block's own output, which the trained block reproduces exactly:
        no map can fit it better, so the trained block is that step's reference (the solver would
        keep it too, up to rounding) and nothing is solved.
        """
        if eta == 0.0:
            return self.ctx.view.blocks[self.index]
        return problem.solve(move, (1.0, -eta), scheme)

    def _search_ce(self, ref: nn.Module) -> float:
        """Mean CE of the search's scoring sequences with `ref` in place of the block."""
        ctx, i, b = self.ctx, self.index, self.score
        same = is_trained(ref, ctx.view.blocks[i])  # scores as the trained block: run it once
        if same and self._trained_ce is not None:
            return self._trained_ce
        per_seq = sequence_ce(ctx.view, i, ctx.fit[i][b], ctx.fit_targets[b], {i: ref},
                              ctx.batch, ctx.score_dtype, self.opts.search_stride)  # fmt: skip
        if same:
            self._trained_ce = float(per_seq.mean())
        return float(per_seq.mean())

    @torch.no_grad()
    def reference(self, part: str, scheme: str | None) -> tuple[nn.Module, float, str]:
        """The reference of `part`, its step eta, and which maps it re-solved.

        A whole-block reference may re-solve only the attention or only the MLP: those are
        blocks too, and re-solving both maps at once can score worse than one alone (the MLP's
        fixed hidden features see a changed input), so the search tries all three.
        """
        moves = ("block", "attn", "mlp") if part == "block" else (part,)
        best_eta, best_move, best_ce = 0.0, part, float("inf")
        for c in self.opts.etas:
            eta = c * self.unit
            for move in moves:
                key = (move, eta, scheme)  # each search solve is scored once per block
                if key not in self._scores:
                    self._scores[key] = self._search_ce(self._solve(self.search, move, eta, scheme))
                ce = self._scores[key]
                if ce < best_ce:
                    best_eta, best_move, best_ce = eta, move, ce
        return self._solve_full(best_move, best_eta, scheme), best_eta, best_move

    @torch.no_grad()
    def twin(self, part: str, eta: float | None, move: str) -> nn.Module:
        """The full-precision reference of the same peel: the maps `move` re-solved at step eta."""
        return self._solve_full(move, eta or 0.0, None)


class _LocalAdam:
    """The Adam P1 references of one block: its parameters trained through the frozen rest."""

    def __init__(self, ctx: PeelContext, index: int, opts: PeelConfig) -> None:
        self.ctx, self.index, self.opts = ctx, index, opts

    def reference(self, part: str, scheme: str | None) -> tuple[nn.Module, float | None, str]:
        """The reference of `part`; Adam takes no target step, so eta is None."""
        ctx, o = self.ctx, self.opts
        adam = AdamOptions(steps=o.adam_steps, lr=o.adam_lr, seed=o.seed, scheme=scheme)
        ref = adam_reference(ctx.view, self.index, ctx.fit[self.index], ctx.fit_targets, part, adam)
        return ref, None, part

    def twin(self, part: str, eta: float | None, move: str) -> nn.Module:
        """The same local optimization without the quantizer."""
        return self.reference(part, None)[0]


# The P1 solvers by `PeelConfig.solver` (its choices name them): how a block's references are found.
P1_SOLVERS: dict[str, type[_TargetPropagation] | type[_LocalAdam]] = {
    "closed": _TargetPropagation,
    "adam": _LocalAdam,
}


def block_gaps(
    ctx: PeelContext,
    index: int,
    parts: tuple[str, ...],
    scheme: str | None,
    opts: PeelConfig,
    thresholds: Thresholds,
    keep: dict[Any, nn.Module] | None = None,
    keep_fp: dict[Any, nn.Module] | None = None,
    twins: bool = True,
) -> list[GapRow]:
    """P1 rows of block `index` for each of `parts`, with bootstrap intervals and verdicts.

    For a quantized model each part is also peeled in full precision, onto the same target with
    the same maps (the step and move its quantized reference took, so only the weight format
    differs), which splits the gap into an optimization part and a quantization part
    (unless `twins` is False). A row's `time_s` is its solves and scoring plus an equal share of the block's
    set-up. `keep` and `keep_fp`, when given, receive each reference block and each
    full-precision twin under (index, part).
    """
    t0 = time.perf_counter()
    solver = P1_SOLVERS[opts.solver](ctx, index, opts)
    setup = (time.perf_counter() - t0) / max(len(parts), 1)

    trained = ctx.trained_held_ce(index)

    def held_ce(ref: nn.Module) -> torch.Tensor:  # a reference equal to the block scores as it
        if is_trained(ref, ctx.view.blocks[index]):
            return trained
        return ctx.held_ce(index, ctx.held[index], {index: ref})

    # A whole-block search often settles on re-solving one sub-block at the step that sub-block's
    # own search takes: the solver returns the same reference, which is scored once.
    scored: dict[int, tuple[nn.Module, torch.Tensor]] = {}

    def held_ce_once(ref: nn.Module) -> torch.Tensor:
        seen = scored.get(id(ref))
        if seen is None or seen[0] is not ref:
            seen = scored[id(ref)] = (ref, held_ce(ref))
        return seen[1]

    rows: list[GapRow] = []
    for part in parts:
        t0 = time.perf_counter()
        ref, eta, moved = solver.reference(part, scheme)
        if keep is not None:
            keep[(index, part)] = _kept(ctx, index, ref)
        ce_ref = held_ce_once(ref)
        diff = trained - ce_ref
        gap = float(diff.mean())
        lo, hi = bootstrap_interval(diff, opts.n_boot, seed=opts.seed)
        row = GapRow(
            block=index,
            part=part,
            gap=gap,
            ci_low=lo,
            ci_high=hi,
            verdict=thresholds.verdict(gap, lo),
            ce_trained=float(trained.mean()),
            ce_reference=float(ce_ref.mean()),
            solver=opts.solver,
            eta=eta,
            moved=moved,
            quant=scheme,
        )
        if part == "block":
            row.influence = block_influence(ctx, index)
            if opts.work:
                row.work, row.work_ci_low, row.work_ci_high = block_work(ctx, index, trained, opts)
        if scheme is not None and twins:
            ref_fp = solver.twin(part, eta, moved)
            if keep_fp is not None:
                keep_fp[(index, part)] = _kept(ctx, index, ref_fp)
            ce_fp = float(held_ce_once(ref_fp).mean())
            row.ce_reference_fp = ce_fp
            row.opt_part = gap  # quantized reference vs trained: what optimization left
            row.quant_part = row.ce_reference - ce_fp  # full precision vs quantized reference
        row.time_s = time.perf_counter() - t0 + setup
        rows.append(row)
    log.info(
        "P1 block %d: %s",
        index,
        ", ".join(f"{r.part} {r.gap:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}]" for r in rows),
    )
    return rows


def layer_gap(
    ctx: PeelContext,
    index: int,
    part: str,
    scheme: str | None,
    opts: PeelConfig,
    thresholds: Thresholds,
) -> GapRow:
    """One P1 row: gap of block `index` / `part` with its bootstrap interval and verdict."""
    return block_gaps(ctx, index, (part,), scheme, opts, thresholds)[0]
