"""Quantizer-constrained least squares: quantize a least-squares solution, re-fit its scales exactly.

Given the Grams of features X (N, p) and targets Y (N, q) and integer codes Q (p, q) from the
scheme, the fit Y ~ X (Q * s) + 1 b^T with scales s (one per tensor or one per output channel) and
a free bias b is a least-squares problem in (s, b) with a closed form. For one global scale and no
bias it is METHOD.md's lambda = <T, S H~> / ||S H~||^2; with a bias it is the same on centred data.
"""

from __future__ import annotations

import torch

from layerpeel.quant import get_quantizer
from layerpeel.solvers.lstsq import DTYPE, Gram


def scheme_codes(scheme: str, w: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Integer codes of a solution w (in, out) under `scheme`, and whether scales are per channel.

    The codes come from the scheme's own `Quantizer` (which works on (out, in) weights), so the
    constrained fit and training quantize by one rule.
    """
    quantizer = get_quantizer(scheme)
    return quantizer.codes(w.T).T.to(w.dtype), bool(quantizer.per_channel)


def refit_scales(
    gram: Gram, codes: torch.Tensor, per_channel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares scales (and bias) for fixed codes Q (p, q): returns weight Q * s (p, q), bias (q,)."""
    q_ = codes.to(DTYPE)
    p = gram.p
    xx, xy = gram.xx[:p, :p], gram.xy[:p]
    xxq = xx @ q_  # (p, q)
    quad = (q_ * xxq).sum(0)  # (q,)  ||X Q_c||^2
    lin = (q_ * xy).sum(0)  # (q,)  <Y_c, X Q_c>
    if gram.bias:
        n = float(gram.n)
        x1 = gram.xx[:p, p]  # X^T 1, (p,)
        one_y = gram.xy[p]  # 1^T Y, (q,)
        xq1 = x1 @ q_  # (q,) 1^T X Q_c
        quad = quad - xq1 * xq1 / n
        lin = lin - xq1 * one_y / n
    if per_channel:
        s = torch.where(quad > 0, lin / quad.clamp_min(1e-300), torch.zeros_like(lin))
    else:
        total = float(quad.sum())
        s = torch.full_like(lin, float(lin.sum()) / total if total > 0 else 0.0)
    weight = q_ * s[None, :]
    if gram.bias:
        bias = (one_y - x1 @ weight) / float(gram.n)
    else:
        bias = torch.zeros(gram.q, dtype=DTYPE)
    return weight, bias


STEPS = (0.125, 0.25, 0.5, 1.0)  # fractions of the way from the trained to the free solution


def constrained_solve(
    gram: Gram,
    scheme: str | None,
    ridge: float = 1e-6,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares, then (for a quantized scheme) codes of the solution with exact scale re-fit.

    Quantizing the free solution in one go can land far from where the trained weights `start`
    (p, q) are, and fit worse than they do. With `start` given, the codes of each point
    start + t (free - start), t in `STEPS`, are tried (each with its exact scales) and the one
    with the least squared error is returned.
    """
    w, b = gram.solve(ridge)
    if scheme is None or scheme == "none":
        return w, b
    points = [w] if start is None else [start + t * (w - start) for t in STEPS]
    best: tuple[torch.Tensor, torch.Tensor] | None = None
    best_sse = float("inf")
    for point in points:
        codes, per_channel = scheme_codes(scheme, point)
        cand = refit_scales(gram, codes, per_channel)
        sse = gram.sse(*cand)
        if sse < best_sse:
            best, best_sse = cand, sse
    assert best is not None
    return best
