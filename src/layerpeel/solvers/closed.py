"""Closed-form peel of one transformer block onto target residual streams.

With the block's own attention patterns held fixed, the attention output is linear in each head's
value-output map, and given fixed MLP hidden features (GELU, or act(gate) * up for a gated MLP)
the MLP output is linear in its output projection: both are least-squares problems, solved through
streamed Grams (`lstsq.Gram`). The maps are `WeightSlot`s (a Linear, a Conv1D, or the value rows of
a fused QKV projection); with grouped-query attention the heads of one key-value group share their
value map; in parallel blocks (GPT-NeoX, Phi) the MLP reads the block input.

A `BlockProblem` makes one pass over a block's inputs and keeps everything that does not depend on
the target: the Gram of the per-head mixed inputs A_h x (from which the Grams of the trained and
re-solved value maps follow by a linear change of features) and the MLP Gram on the trained
attention. Targets are linear combinations of the directions given at construction
(target = sum_k coef_k * directions[k]), so the eta line search of target propagation and the rows
of the projection ladder each cost a small solve, not a pass over the data. Only a block whose
attention was re-solved needs one more pass, for its MLP features.

For each linear map the solver keeps whichever candidate -- the trained weights, the re-fitted
output projection, or the joint value-output solution factored back per head -- has the lowest
squared error on the fit part, so the reference never fits worse than the trained block.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from layerpeel.arch.views import BlockView, ModelView, WeightSlot
from layerpeel.solvers.lstsq import DTYPE, Gram, sample_space_solve
from layerpeel.solvers.quantized import constrained_solve, project_weight

log = logging.getLogger(__name__)

PARTS = ("block", "attn", "mlp")

# A new solution must beat the trained one by more than rounding noise, relative to the residual.
MARGIN = 1e-9


@dataclass
class ClosedFormOptions:
    """Settings of the closed-form block solver."""

    ridge: float = 1e-3  # ridge relative to the mean feature energy
    batch: int = 16  # sequences per streamed batch
    scheme: str | None = None  # quantizer the reference must obey (None = full precision)


def _slot_params(slot: WeightSlot) -> tuple[torch.Tensor, torch.Tensor]:
    """The (w (in, out), b (out,)) of a slot, in float64 (b = 0 without a bias)."""
    w, b = slot.get()
    w = w.to(DTYPE)
    return w, (
        b.to(DTYPE) if b is not None else torch.zeros(w.shape[1], dtype=DTYPE, device=w.device)
    )


def group_to_heads(bv: BlockView, t: torch.Tensor) -> torch.Tensor:
    """Per key-value group columns (..., H_kv*hd) -> per query head (..., H*hd); head h reads h // rep."""
    lead = t.shape[:-1]
    g = t.reshape(*lead, bv.kv_heads, 1, bv.head_dim)
    g = g.expand(*lead, bv.kv_heads, bv.n_head // bv.kv_heads, bv.head_dim)
    return g.reshape(*lead, bv.n_head * bv.head_dim)


def _small_eigh(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs (ascending) of a small symmetric matrix, on one thread.

    LAPACK's eigensolver makes many small parallel calls; on a loaded machine their threads wait
    on each other, and one thread was measured 7 to 200 times faster for C = 576.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evals, evecs = torch.linalg.eigh(a)
    finally:
        torch.set_num_threads(threads)
    return evals, evecs


def factor_value_maps(m: torch.Tensor, bv: BlockView) -> torch.Tensor:
    """Value map W_v (C, H_kv*hd) from joint per-head maps m (H*C, C_out), by truncated SVD.

    The heads of one key-value group share their value map, so the group's maps are stacked side
    by side, [M_h1 | M_h2 | ...] (C, rep*C_out), and their best rank-hd factor gives W_v^g (one
    head per group: the per-head factor M_h ~ W_v^h W_o^h).
    """
    h, hd, h_kv = bv.n_head, bv.head_dim, bv.kv_heads
    c = m.shape[0] // h
    rep = h // h_kv
    wv = torch.zeros(c, h_kv * hd, dtype=DTYPE, device=m.device)
    for g in range(h_kv):
        group = torch.cat([m[(g * rep + j) * c : (g * rep + j + 1) * c] for j in range(rep)], 1)
        # left singular pairs from the (C, C) eigenproblem of group group^T: the same factor
        # u_k s_k^(1/2) as an SVD of the wide (C, rep*C_out) matrix, at a fraction of the cost
        evals, evecs = _small_eigh(group @ group.T)
        k = min(hd, evals.numel())
        top = evals.flip(0)[:k].clamp_min(0.0)
        wv[:, g * hd : g * hd + k] = evecs.flip(1)[:, :k] * top.pow(0.25)
    return wv


def _head_mix(patterns: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Sum over keys of A_h x: patterns (B,H,T,T), xs (B,H,T,D) -> (B,T,H*D)."""
    b, h, t, _ = patterns.shape
    return (patterns @ xs).transpose(1, 2).reshape(b, t, -1)


def _combine(gram: Gram, coef: torch.Tensor, dim: int) -> Gram:
    """The Gram of one target: the stacked directions' right-hand sides mixed by `coef` (K+1,).

    Column block k of `gram.xy` (width `dim`) holds X~^T of direction k; the last one is the
    offset the part's own input contributes, which enters with coefficient -1.
    """
    xy = gram.xy.view(gram.xy.shape[0], -1, dim)  # (p+1, K+1, C)
    return Gram.from_parts(gram.xx, torch.einsum("pkc,k->pc", xy, coef), gram.n, gram.bias)


def _partial_sse(gram: Gram, w: torch.Tensor, b: torch.Tensor) -> float:
    """||X W + 1 b^T - Y||^2 - ||Y||^2: the squared error up to a constant of the target."""
    return gram.sse(w, b) - float(gram.yy)


class BlockProblem:
    """Everything of one block's closed-form peel on inputs x (S,T,C) that no target changes.

    `directions` are K tensors (S,T,C); `solve(part, coef)` peels onto sum_k coef[k] directions[k].
    The trained model is never touched: references are copies (`ModelView.reference_copy`).
    """

    def __init__(
        self,
        view: ModelView,
        index: int,
        x: torch.Tensor,
        directions: Sequence[torch.Tensor],
        opts: ClosedFormOptions | None = None,
    ) -> None:
        self.view, self.index, self.x = view, index, x
        self.directions = list(directions)
        self.opts = opts or ClosedFormOptions()
        self.trained = view.reference_copy(index)
        bv = view.block_view(self.trained)
        self.bv = bv
        self.h, self.hd = bv.n_head, bv.head_dim
        self.c = x.shape[-1]
        k = len(self.directions)
        self.v_trained = _slot_params(bv.value)  # (C, H_kv*hd), (H_kv*hd,)
        self.out_bias = bv.out.has_bias
        self._mlp_trained: Gram | None = None  # MLP Gram on the trained attention, made on demand
        self._joint_maps: torch.Tensor | None = None  # joint solutions per direction, on demand
        # features [A_h xn]_h with a constant column; right-hand sides: the K directions, then
        # the offset x + mlp(x + attn(x)) that the attention output does not have to produce
        self.joint = Gram(self.h * self.c, (k + 1) * self.c, bias=True, device=x.device)
        # with fewer samples than half the features (a line search's few sequences), the joint
        # solve is cheaper in sample space: keep the samples for it (less memory than the Gram)
        few = x.shape[0] * x.shape[1] * 2 < self.h * self.c and self.opts.ridge > 0
        self._samples: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if few else None
        with torch.no_grad():
            for xb, ds in self._batches():
                xn = bv.attn_norm(xb)
                a = bv.patterns(xn)  # (B,H,T,T)
                bsz, t, _ = xb.shape
                feats = _head_mix(a, xn[:, None].expand(bsz, self.h, t, self.c))
                offset = xb + bv.mlp(bv.mlp_residual(xb))
                rhs = torch.cat([*ds, offset], -1)
                self.joint.update(feats, rhs)
                if self._samples is not None:
                    self._samples.append((feats.reshape(-1, feats.shape[-1]), rhs.flatten(0, -2)))

    def _batches(self):
        size = self.opts.batch
        for s in range(0, self.x.shape[0], size):
            yield self.x[s : s + size], [d[s : s + size] for d in self.directions]

    def _coef(self, coef: Sequence[float]) -> torch.Tensor:
        if len(coef) != len(self.directions):
            raise ValueError(f"need {len(self.directions)} coefficients, got {len(coef)}")
        return torch.tensor([*coef, -1.0], dtype=DTYPE, device=self.x.device)

    def _value_gram(self, wv: torch.Tensor, bv_: torch.Tensor, joint: Gram) -> Gram:
        """Gram of the mixed values A_h (xn W_v + 1 b_v) from the joint Gram: a change of features.

        wv (C, H_kv*hd), bv_ (H_kv*hd,): one value map per key-value group. Rows of A_h sum to one,
        so the value bias passes through as a constant.
        """
        wv, bv_ = group_to_heads(self.bv, wv), group_to_heads(self.bv, bv_)

        def t_left(mat: torch.Tensor) -> torch.Tensor:
            """t^T mat for mat (H*C+1, q), t the block-diagonal change of features (head by head)."""
            h, c, hd = self.h, self.c, self.hd
            per_head = mat[: h * c].reshape(h, c, -1)  # (H, C, q)
            rows = torch.einsum("hco,hcq->hoq", wv.reshape(c, h, hd).permute(1, 0, 2), per_head)
            rows = rows.reshape(h * hd, -1) + bv_[:, None] * mat[h * c][None, :]
            return torch.cat([rows, mat[h * c][None, :]], 0) if self.out_bias else rows

        xt = t_left(joint.xx)  # t^T xx, (H*hd(+1), H*C+1)
        return Gram.from_parts(
            t_left(xt.T.contiguous()).T, t_left(joint.xy), joint.n, self.out_bias, joint.yy
        )

    def _joint_map(self, coef: torch.Tensor) -> torch.Tensor:
        """Joint per-head maps M (H*C, C) of the target mixed by `coef` (K+1,).

        Least squares is linear in the right-hand side: the K+1 stacked solutions are solved once
        and mixed per target.
        """
        if self._joint_maps is None:  # (H*C, (K+1)*C)
            if self._samples is not None:
                feats, rhs = (torch.cat(t, 0) for t in zip(*self._samples, strict=True))
                self._joint_maps, _ = sample_space_solve(feats, rhs, self.opts.ridge)
                self._samples = None
            else:
                self._joint_maps, _ = self.joint.solve(self.opts.ridge)
        maps = self._joint_maps.view(self._joint_maps.shape[0], -1, self.c)
        return torch.einsum("pkc,k->pc", maps, coef)

    def joint_solution(self, coef: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Least-squares per-head maps M (H*C, C) and bias (C,) of the attention output."""
        return _combine(self.joint, self._coef(coef), self.c).solve(self.opts.ridge)

    def attention_grams(self, coef: Sequence[float]) -> tuple[Gram, Gram]:
        """The two attention Grams for the target sum_k coef[k] directions[k].

        joint: features A_h xn for every head (H*C); out: the trained values mixed by the
        patterns (H*hd), whose unknown is the output map.
        """
        joint = _combine(self.joint, self._coef(coef), self.c)
        return joint, self._value_gram(*self.v_trained, joint)

    def _attention(self, coef: torch.Tensor, scheme: str | None):
        """Best attention candidate: None (trained) or ((wv, bv), (w_out, b_out))."""
        joint = _combine(self.joint, coef, self.c)
        g_out = self._value_gram(*self.v_trained, joint)
        w0, b0 = _slot_params(self.bv.out)
        sse0 = _partial_sse(g_out, w0, b0)
        candidates: list[tuple[str, float, object]] = [("trained", sse0, None)]
        w1, b1 = constrained_solve(g_out, scheme, self.opts.ridge, start=w0)
        candidates.append(("out", _partial_sse(g_out, w1, b1), (self.v_trained, (w1, b1))))
        m = self._joint_map(coef)  # (H*C, C)
        wv = factor_value_maps(m, self.bv)  # (C, H_kv*hd)
        if scheme not in (None, "none"):
            wv = project_weight(wv, str(scheme))  # the value map has no target of its own
        bv_zero = torch.zeros(wv.shape[1], dtype=DTYPE, device=wv.device)
        g2 = self._value_gram(wv, bv_zero, joint)
        w2, b2 = constrained_solve(g2, scheme, self.opts.ridge)
        candidates.append(("value-out", _partial_sse(g2, w2, b2), ((wv, bv_zero), (w2, b2))))
        margin = MARGIN * abs(sse0)
        name, _, sol = min(candidates, key=lambda c_: c_[1] + (margin if c_[2] is not None else 0))
        log.debug(
            "attention candidates %s -> %s", [(n, round(v, 3)) for n, v, _ in candidates], name
        )
        return sol

    def _mlp_gram(self, ref: nn.Module) -> Gram:
        """MLP Gram of the re-solved attention in `ref`: one pass over the inputs."""
        bv = self.view.block_view(ref)
        proj = bv.proj
        g = Gram(
            proj.in_features,
            (len(self.directions) + 1) * self.c,
            bias=proj.has_bias,
            device=self.x.device,
        )
        with torch.no_grad():
            for xb, ds in self._batches():
                base = xb + bv.attn(xb)  # the MLP adds to this
                hidden = bv.mlp_hidden(bv.mlp_norm(bv.mlp_residual(xb)))
                g.update(hidden, torch.cat([*ds, base], -1))
        return g

    @torch.no_grad()
    def solve(
        self, part: str = "block", coef: Sequence[float] = (1.0,), scheme: str | None = None
    ) -> nn.Module:
        """A reference block for the target sum_k coef[k] directions[k]; `part` picks what moves.

        The reference is a copy of the block with plain Linear layers whose weights lie in the
        value set of `scheme` (None: full precision).
        """
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        k = self._coef(coef)
        ref = self.view.reference_copy(self.index)
        bv = self.view.block_view(ref)
        attn_sol = self._attention(k, scheme) if part in ("block", "attn") else None
        if attn_sol is not None:
            (wv, bvv), (wo, bo) = attn_sol  # type: ignore[misc]
            bv.value.set(wv, bvv)
            bv.out.set(wo, bo)
        if part in ("block", "mlp"):
            if attn_sol is None:
                self._mlp_trained = self._mlp_trained or self._mlp_gram(self.trained)
                g = _combine(self._mlp_trained, k, self.c)
            else:
                g = _combine(self._mlp_gram(ref), k, self.c)
            proj = bv.proj
            w0, b0 = _slot_params(proj)
            w1, b1 = constrained_solve(g, scheme, self.opts.ridge, start=w0)
            sse0 = _partial_sse(g, w0, b0)
            if _partial_sse(g, w1, b1) < sse0 - MARGIN * abs(sse0):
                proj.set(w1, b1)
        return ref


def peel_block(
    view: ModelView,
    index: int,
    x: torch.Tensor,
    target: torch.Tensor,
    part: str = "block",
    opts: ClosedFormOptions | None = None,
) -> nn.Module:
    """A reference for block `index` mapping x (S,T,C) towards target (S,T,C); `part` picks what moves."""
    opts = opts or ClosedFormOptions()
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    return BlockProblem(view, index, x, [target], opts).solve(part, (1.0,), opts.scheme)
