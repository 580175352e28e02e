"""Quantizer-constrained least squares: quantize a least-squares solution, re-fit its scales exactly.

Given the Grams of features X (N, p) and targets Y (N, q) and integer codes Q (p, q) from the
scheme, the fit Y ~ X (Q * s) + 1 b^T with scales s (one per tensor or one per output channel) and
a free bias b is a least-squares problem in (s, b) with a closed form. For one global scale and no
bias it is the closed-form lambda = <T, S H~> / ||S H~||^2; with a bias it is the same on centred data.
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
        bias = torch.zeros(gram.q, dtype=DTYPE, device=gram.xy.device)
    return weight, bias


def gguf_quantize(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """W (in, out) rounded to a GGUF block format, as llama.cpp's reference quantizers do.

    Blocks are 32 consecutive input weights of one output row, each with an fp16 scale d (and for
    Q4_1 an fp16 minimum m): Q4_0 w = d (q - 8), q in 0..15, d = signed absmax / -8; Q4_1
    w = d q + m, q in 0..15, d = (max - min) / 15, m = min; Q8_0 w = d q, q in -127..127,
    d = absmax / 127. The result is a weight a GGUF file of that type can hold exactly.
    """
    rows = w.T  # (out, in): GGUF blocks run along the input
    out_f, in_f = rows.shape
    if in_f % GGUF_BLOCK:
        raise ValueError(f"GGUF blocks need the input width divisible by 32, got {in_f}")
    x = rows.reshape(out_f, in_f // GGUF_BLOCK, GGUF_BLOCK).to(torch.float32)

    def fp16(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.float16).to(torch.float32)

    def inverse(d: torch.Tensor) -> torch.Tensor:
        return torch.where(d != 0, 1 / d, torch.zeros_like(d))

    # codes come from the float32 scale, the stored scale is its fp16 rounding (as in ggml)
    if fmt == "gguf-q4_1":
        lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        d = (hi - lo) / 15
        q = ((x - lo) * inverse(d) + 0.5).floor().clamp(0, 15)
        y = q * fp16(d) + fp16(lo)
    elif fmt == "gguf-q4_0":
        d = x.gather(-1, x.abs().argmax(-1, keepdim=True)) / -8
        q = (x * inverse(d) + 8.5).floor().clamp(0, 15)
        y = (q - 8) * fp16(d)
    elif fmt == "gguf-q8_0":
        d = x.abs().amax(-1, keepdim=True) / 127
        v = x * inverse(d)
        q = v.sign() * (v.abs() + 0.5).floor()  # round half away from zero
        y = q * fp16(d)
    else:
        raise ValueError(f"unknown GGUF format {fmt!r}")
    return y.reshape(out_f, in_f).T.to(w.dtype)


GGUF_BLOCK = 32  # weights per GGUF quantization block
GGUF_FORMATS = ("gguf-q4_0", "gguf-q4_1", "gguf-q8_0")


def project_weight(w: torch.Tensor, scheme: str) -> torch.Tensor:
    """A weight w (in, out) with no target of its own, moved into `scheme`'s value set.

    GGUF formats round block by block; layerpeel's schemes take their codes and an l1-mean scale.
    """
    if scheme in GGUF_FORMATS:
        return gguf_quantize(w, scheme)
    codes, per_channel = scheme_codes(scheme, w)
    denom = codes.abs().sum(0 if per_channel else None).clamp_min(1)
    return codes * (w.abs() * codes.abs()).sum(0 if per_channel else None) / denom


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

    GGUF block formats keep the rounded solution's block scales (they are part of the format's
    rounding rule) and re-fit only the free bias.
    """
    w, b = gram.solve(ridge)
    if scheme is None or scheme == "none":
        return w, b
    if scheme in GGUF_FORMATS:
        wq = gguf_quantize(w, scheme)
        if gram.bias:
            p = gram.p
            b = (gram.xy[p] - gram.xx[p, :p] @ wq) / float(gram.n)  # the best bias for wq
        return wq, b
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
