"""Closed-form peel of one transformer block onto a target residual stream.

With the block's own attention patterns held fixed, the attention output is linear in each head's
value-output map, and given fixed MLP hidden features (GELU, or act(gate) * up for a gated MLP)
the MLP output is linear in its output projection: both are least-squares problems, solved through
streamed Grams (`lstsq.Gram`). Parallel blocks (the MLP reads the block input) and grouped-query
attention (heads of one key-value group share a value map) are handled through the `BlockView`.
For each linear map the solver keeps whichever candidate -- the trained weights, the re-fitted
output projection, or the joint value-output solution factored back per head -- has the lowest
squared error on the fit part, so the reference never fits worse than the trained block.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from layerpeel.arch import BlockView, ModelView, WeightSlot
from layerpeel.solvers.lstsq import DTYPE, Gram
from layerpeel.solvers.quantized import constrained_solve, scheme_codes

log = logging.getLogger(__name__)

PARTS = ("block", "attn", "mlp")


@dataclass
class ClosedFormOptions:
    """Settings of the closed-form block solver."""

    ridge: float = 1e-6  # ridge relative to the mean feature energy
    batch: int = 16  # sequences per streamed batch
    scheme: str | None = None  # quantizer the reference must obey (None = full precision)


def _slot_params(slot: WeightSlot) -> tuple[torch.Tensor, torch.Tensor]:
    """The (w (in, out), b (out,)) of a slot, in float64 (b = 0 without a bias)."""
    w, b = slot.get()
    w = w.to(DTYPE)
    return w, (b.to(DTYPE) if b is not None else torch.zeros(w.shape[1], dtype=DTYPE))


def _batches(x: torch.Tensor, t: torch.Tensor, size: int):
    for s in range(0, x.shape[0], size):
        yield x[s : s + size], t[s : s + size]


def _head_mix(patterns: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Sum over keys of A_h x: patterns (B,H,T,T), xs (B,H,T,D) -> (B,T,H*D)."""
    b, h, t, _ = patterns.shape
    return (patterns @ xs).transpose(1, 2).reshape(b, t, -1)


def _head_values(bv: BlockView, vals: torch.Tensor) -> torch.Tensor:
    """Values (B,T,H_kv*hd) -> per query head (B,H,T,hd); head h reads key-value group h // rep."""
    b, t, _ = vals.shape
    v = vals.view(b, t, bv.kv_heads, bv.head_dim).transpose(1, 2)
    return v.repeat_interleave(bv.n_head // bv.kv_heads, dim=1)


@torch.no_grad()
def attention_targets(
    bv: BlockView, x: torch.Tensor, target: torch.Tensor, size: int = 16
) -> torch.Tensor:
    """What attention should add, r = target - x - mlp (S,T,C), the MLP at the trained attention."""
    return torch.cat(
        [tb - xb - bv.mlp(bv.mlp_residual(xb)) for xb, tb in _batches(x, target, size)]
    )


@torch.no_grad()
def attention_grams(
    bv: BlockView, x: torch.Tensor, r_all: torch.Tensor, size: int = 16
) -> tuple[Gram, Gram]:
    """The two attention least-squares problems, as Grams, for inputs x and targets r (S,T,C).

    joint: features A_h xn for every head h (H*C) -> r, unknowns the per-head maps W_v^h W_o^h;
    out: the trained values mixed by the patterns (H*hd) -> r, unknown the output map.
    """
    h, hd, c = bv.n_head, bv.head_dim, x.shape[-1]
    has_bias = bv.out.has_bias
    g_joint = Gram(h * c, r_all.shape[-1], bias=has_bias)
    g_out = Gram(h * hd, r_all.shape[-1], bias=has_bias)
    v_slot = bv.value
    for xb, rb in _batches(x, r_all, size):
        xn = bv.attn_norm(xb)
        a = bv.patterns(xn)  # (B,H,T,T)
        bsz, t, _ = xb.shape
        g_joint.update(_head_mix(a, xn[:, None].expand(bsz, h, t, c)), rb)
        g_out.update(_head_mix(a, _head_values(bv, v_slot(xn))), rb)
    return g_joint, g_out


@torch.no_grad()
def fit_attention(
    bv: BlockView, x: torch.Tensor, target: torch.Tensor, opts: ClosedFormOptions
) -> None:
    """Re-solve the block's value and output maps so that the block output nears `target`.

    x, target: (S, T, C). The MLP contribution is held at its value on the trained attention.
    """
    v_slot, out_slot = bv.value, bv.out
    r_all = attention_targets(bv, x, target, opts.batch)
    g_joint, g_out = attention_grams(bv, x, r_all, opts.batch)
    w0, b0 = _slot_params(out_slot)
    candidates: list[tuple[str, float, Any]] = [("trained", g_out.sse(w0, b0), None)]
    w1, b1 = constrained_solve(g_out, opts.scheme, opts.ridge)
    candidates.append(("out", g_out.sse(w1, b1), (None, (w1, b1))))
    candidates.append(_joint_value_out(bv, x, r_all, g_joint, opts))
    # a new solution must beat the trained one by more than rounding noise
    margin = 1e-9 * float(g_out.yy)
    name, sse, sol = min(candidates, key=lambda c_: c_[1] + (margin if c_[2] is not None else 0.0))
    log.debug("attention candidates %s -> %s", [(n, round(s, 3)) for n, s, _ in candidates], name)
    if sol is None:
        return
    v_sol, out_sol = sol
    if v_sol is not None:
        v_slot.set(*v_sol)
    out_slot.set(*out_sol)


def factor_value_maps(m: torch.Tensor, bv: BlockView) -> torch.Tensor:
    """Value map W_v (C, H_kv*hd) from joint per-head maps m (H*C, C_out), by truncated SVD.

    The heads of one key-value group share their value map, so the group's maps are stacked side
    by side, [M_h1 | M_h2 | ...] (C, rep*C_out), and their best rank-hd factor gives W_v^g.
    """
    h, hd, h_kv = bv.n_head, bv.head_dim, bv.kv_heads
    c = m.shape[0] // h
    rep = h // h_kv
    wv = torch.zeros(c, h_kv * hd, dtype=DTYPE)
    for g in range(h_kv):
        group = torch.cat([m[(g * rep + j) * c : (g * rep + j + 1) * c] for j in range(rep)], 1)
        u, s, _ = torch.linalg.svd(group, full_matrices=False)
        k = min(hd, s.numel())
        wv[:, g * hd : g * hd + k] = u[:, :k] * s[:k].sqrt()
    return wv


def _joint_value_out(
    bv: BlockView, x: torch.Tensor, r_all: torch.Tensor, g_joint: Gram, opts: ClosedFormOptions
):
    """Joint least squares in the per-head maps M_h = W_v^h W_o^h, factored back per key-value group.

    The output map is then re-fitted exactly to the new values.
    """
    out_slot = bv.out
    m, _ = g_joint.solve(opts.ridge)  # (H*C, C)
    wv = factor_value_maps(m, bv)
    if opts.scheme not in (None, "none"):
        # the value map has no target of its own: quantize with the scheme's codes, scale by l1 mean
        codes, per_channel = scheme_codes(str(opts.scheme), wv)
        denom = codes.abs().sum(0 if per_channel else None).clamp_min(1)
        scale = (wv.abs() * codes.abs()).sum(0 if per_channel else None) / denom
        wv = codes * scale
    bv_zero = torch.zeros(wv.shape[1], dtype=DTYPE)
    g2 = Gram(bv.n_head * bv.head_dim, r_all.shape[-1], bias=out_slot.has_bias)
    for xb, rb in _batches(x, r_all, opts.batch):
        xn = bv.attn_norm(xb)
        vals = xn @ wv.to(xn.dtype)  # (B,T,H_kv*hd), no value bias
        g2.update(_head_mix(bv.patterns(xn), _head_values(bv, vals)), rb)
    w2, b2 = constrained_solve(g2, opts.scheme, opts.ridge)
    return ("value-out", g2.sse(w2, b2), ((wv, bv_zero), (w2, b2)))


@torch.no_grad()
def fit_mlp(bv: BlockView, x: torch.Tensor, target: torch.Tensor, opts: ClosedFormOptions) -> None:
    """Re-solve the MLP output map so that the block output nears `target` (S, T, C)."""
    proj = bv.proj
    g = Gram(proj.in_features, proj.out_features, bias=proj.has_bias)
    for xb, tb in _batches(x, target, opts.batch):
        base = xb + bv.attn(xb)
        g.update(bv.mlp_hidden(bv.mlp_norm(bv.mlp_residual(xb))), tb - base)
    w0, b0 = _slot_params(proj)
    w1, b1 = constrained_solve(g, opts.scheme, opts.ridge)
    if g.sse(w1, b1) < g.sse(w0, b0) - 1e-9 * float(g.yy):
        proj.set(w1, b1)


def peel_block(
    view: ModelView,
    index: int,
    x: torch.Tensor,
    target: torch.Tensor,
    part: str = "block",
    opts: ClosedFormOptions | None = None,
) -> nn.Module:
    """A reference for block `index` mapping x (S,T,C) towards target (S,T,C); `part` picks what moves.

    The reference is a copy of the block with plain Linear layers whose weights lie in the value
    set of `opts.scheme`; the trained model is not touched.
    """
    opts = opts or ClosedFormOptions()
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    ref = view.reference_copy(index)
    bv = view.block_view(ref)
    if part in ("block", "attn"):
        fit_attention(bv, x, target, opts)
    if part in ("block", "mlp"):
        fit_mlp(bv, x, target, opts)
    return ref
