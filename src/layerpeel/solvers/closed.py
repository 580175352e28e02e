"""Closed-form peel of one transformer block onto a target residual stream.

With the block's own attention patterns held fixed, the attention output is linear in each head's
value-output map, and given fixed MLP hidden features the MLP output is linear in its output
projection: both are least-squares problems, solved through streamed Grams (`lstsq.Gram`).
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

from layerpeel.arch import BlockView, ModelView, effective_weight
from layerpeel.solvers.lstsq import DTYPE, Gram
from layerpeel.solvers.quantized import constrained_solve

log = logging.getLogger(__name__)

PARTS = ("block", "attn", "mlp")


@dataclass
class ClosedFormOptions:
    """Settings of the closed-form block solver."""

    ridge: float = 1e-6  # ridge relative to the mean feature energy
    batch: int = 16  # sequences per streamed batch
    scheme: str | None = None  # quantizer the reference must obey (None = full precision)


def _set_linear(linear: nn.Linear, w: torch.Tensor, b: torch.Tensor | None) -> None:
    """Write a solution w (in, out) and bias (out,) into a Linear (weight (out, in))."""
    with torch.no_grad():
        linear.weight.copy_(w.T.to(linear.weight.dtype))
        if linear.bias is not None and b is not None:
            linear.bias.copy_(b.to(linear.bias.dtype))


def _linear_params(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """The (w (in, out), b (out,)) of a Linear, in float64."""
    w = effective_weight(linear).T.to(DTYPE)
    bias = getattr(linear, "bias", None)
    b = bias.detach().to(DTYPE) if bias is not None else torch.zeros(w.shape[1], dtype=DTYPE)
    return w, b


def _batches(x: torch.Tensor, t: torch.Tensor, size: int):
    for s in range(0, x.shape[0], size):
        yield x[s : s + size], t[s : s + size]


def _head_mix(patterns: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Sum over keys of A_h x: patterns (B,H,T,T), xs (B,H,T,D) -> (B,T,H*D)."""
    b, h, t, _ = patterns.shape
    return (patterns @ xs).transpose(1, 2).reshape(b, t, -1)


@torch.no_grad()
def fit_attention(
    bv: BlockView, x: torch.Tensor, target: torch.Tensor, opts: ClosedFormOptions
) -> None:
    """Re-solve the block's value and output projections so that the block output nears `target`.

    x, target: (S, T, C). The MLP contribution is held at its value on the trained attention.
    """
    v_lin, out_lin = bv.linear(bv.v_name), bv.linear(bv.out_name)
    h, hd = bv.n_head, bv.head_dim
    c = x.shape[-1]
    has_bias = out_lin.bias is not None
    g_joint = Gram(h * c, c, bias=has_bias)  # features A_h xn per head -> attention target
    g_out = Gram(h * hd, c, bias=has_bias)  # trained value mix -> attention target
    for xb, tb in _batches(x, target, opts.batch):
        xn = bv.attn_norm(xb)
        a = bv.patterns(xn)  # (B,H,T,T)
        x1 = xb + bv.attn(xb)
        r = tb - xb - bv.mlp(x1)  # what attention should add, MLP held at the trained attention
        bsz, t, _ = xb.shape
        xs = xn[:, None].expand(bsz, h, t, c)
        g_joint.update(_head_mix(a, xs), r)
        vals = v_lin(xn).view(bsz, t, h, hd).transpose(1, 2)  # (B,H,T,hd)
        g_out.update(_head_mix(a, vals), r)
    w0, b0 = _linear_params(out_lin)
    candidates: list[tuple[str, float, Any]] = [("trained", g_out.sse(w0, b0), None)]
    w1, b1 = constrained_solve(g_out, opts.scheme, opts.ridge)
    candidates.append(("out", g_out.sse(w1, b1), (None, (w1, b1))))
    joint = _joint_value_out(bv, x, target, g_joint, opts)
    if joint is not None:
        candidates.append(joint)
    # a new solution must beat the trained one by more than rounding noise
    margin = 1e-9 * float(g_out.yy)
    name, sse, sol = min(candidates, key=lambda c_: c_[1] + (margin if c_[2] is not None else 0.0))
    log.debug("attention candidates %s -> %s", [(n, round(s, 3)) for n, s, _ in candidates], name)
    if sol is None:
        return
    v_sol, out_sol = sol
    if v_sol is not None:
        _set_linear(v_lin, *v_sol)
    _set_linear(out_lin, *out_sol)


def _joint_value_out(
    bv: BlockView, x: torch.Tensor, target: torch.Tensor, g_joint: Gram, opts: ClosedFormOptions
):
    """Joint least squares in the per-head maps M_h = W_v^h W_o^h, factored back by truncated SVD.

    The output projection is then re-fitted exactly to the new values.
    """
    v_lin, out_lin = bv.linear(bv.v_name), bv.linear(bv.out_name)
    h, hd = bv.n_head, bv.head_dim
    c = x.shape[-1]
    m, _ = g_joint.solve(opts.ridge)  # (H*C, C)
    wv = torch.zeros(c, h * hd, dtype=DTYPE)  # value map, (in C, out H*hd)
    for i in range(h):
        u, s, vt = torch.linalg.svd(m[i * c : (i + 1) * c], full_matrices=False)
        wv[:, i * hd : (i + 1) * hd] = u[:, :hd] * s[:hd].sqrt()
    bv_zero = torch.zeros(h * hd, dtype=DTYPE)
    if opts.scheme not in (None, "none"):
        # the value map has no target of its own: quantize with the scheme's codes, scale by l1 mean
        from layerpeel.solvers.quantized import scheme_codes

        codes, per_channel = scheme_codes(opts.scheme, wv)
        denom = codes.abs().sum(0 if per_channel else None).clamp_min(1)
        scale = (wv.abs() * codes.abs()).sum(0 if per_channel else None) / denom
        wv = codes * scale
    old_w, old_b = _linear_params(v_lin)
    _set_linear(v_lin, wv, bv_zero)
    has_bias = out_lin.bias is not None
    g2 = Gram(h * hd, c, bias=has_bias)
    with torch.no_grad():
        for xb, tb in _batches(x, target, opts.batch):
            xn = bv.attn_norm(xb)
            a = bv.patterns(xn)
            _set_linear(v_lin, old_w, old_b)  # the MLP term is held at the trained attention
            x1 = xb + bv.attn(xb)
            r = tb - xb - bv.mlp(x1)
            _set_linear(v_lin, wv, bv_zero)
            bsz, t, _ = xb.shape
            vals = v_lin(xn).view(bsz, t, h, hd).transpose(1, 2)
            g2.update(_head_mix(a, vals), r)
    _set_linear(v_lin, old_w, old_b)
    w2, b2 = constrained_solve(g2, opts.scheme, opts.ridge)
    return ("value-out", g2.sse(w2, b2), ((wv, bv_zero), (w2, b2)))


@torch.no_grad()
def fit_mlp(bv: BlockView, x: torch.Tensor, target: torch.Tensor, opts: ClosedFormOptions) -> None:
    """Re-solve the MLP output projection so that the block output nears `target` (S, T, C)."""
    proj = bv.linear(bv.proj_name)
    g = Gram(proj.in_features, proj.out_features, bias=proj.bias is not None)
    for xb, tb in _batches(x, target, opts.batch):
        x1 = xb + bv.attn(xb)
        g.update(bv.mlp_hidden(bv.mlp_norm(x1)), tb - x1)
    w0, b0 = _linear_params(proj)
    w1, b1 = constrained_solve(g, opts.scheme, opts.ridge)
    if g.sse(w1, b1) < g.sse(w0, b0) - 1e-9 * float(g.yy):
        _set_linear(proj, w1, b1)


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
