"""Quantizer-constrained least squares: quantize a least-squares solution, re-fit its scales exactly.

Given the Grams of features X (N, p) and targets Y (N, q) and integer codes Q (p, q) from the
scheme, the fit Y ~ X (Q * s) + 1 b^T with scales s (one per tensor or one per output channel) and
a free bias b is a least-squares problem in (s, b) with a closed form. For one global scale and no
bias it is METHOD.md's lambda = <T, S H~> / ||S H~||^2; with a bias it is the same on centred data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from layerpeel.solvers.lstsq import DTYPE, Gram

# scheme -> function from a least-squares weight w (p, q) to (codes (p, q), per_channel)
CodeFn = Callable[[torch.Tensor], tuple[torch.Tensor, bool]]
CODE_FNS: dict[str, CodeFn] = {}


def register_codes(name: str) -> Callable[[CodeFn], CodeFn]:
    """Register how scheme `name` turns a least-squares weight into integer codes."""

    def deco(fn: CodeFn) -> CodeFn:
        CODE_FNS[name] = fn
        return fn

    return deco


def _sign(w: torch.Tensor) -> torch.Tensor:
    return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)


@register_codes("binary-global")
def _binary_global(w: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return _sign(w), False


@register_codes("binary-channel")
def _binary_channel(w: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return _sign(w), True


@register_codes("ternary")
def _ternary(w: torch.Tensor) -> tuple[torch.Tensor, bool]:
    delta = 0.7 * w.abs().mean()
    return torch.where(w.abs() > delta, _sign(w), torch.zeros_like(w)), False


def _intk(bits: int) -> CodeFn:
    qmax = 2 ** (bits - 1) - 1

    def fn(w: torch.Tensor) -> tuple[torch.Tensor, bool]:
        scale = w.abs().amax(dim=0, keepdim=True).clamp_min(1e-12) / qmax  # (1, q): per channel
        return torch.clamp(torch.round(w / scale), -qmax, qmax), True

    return fn


for _bits in (2, 3, 4, 8):
    register_codes(f"int{_bits}")(_intk(_bits))


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


def constrained_solve(
    gram: Gram, scheme: str | None, ridge: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares, then (for a quantized scheme) codes of the solution with exact scale re-fit."""
    w, b = gram.solve(ridge)
    if scheme is None or scheme == "none":
        return w, b
    if scheme not in CODE_FNS:
        raise KeyError(f"no constrained solver for scheme {scheme!r}")
    codes, per_channel = CODE_FNS[scheme](w)
    return refit_scales(gram, codes, per_channel)
