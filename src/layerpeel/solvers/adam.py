"""Local Adam: re-optimize one block's own parameters against the end cross-entropy, rest frozen.

Starts from a copy of the trained block; for a quantized model the copy's weights are constrained
to the scheme with a straight-through estimator and exported as exactly quantized values.
A quarter of the fit sequences is kept aside: the reference returned is the state with the lowest
CE on them among the starting point and the checks every `check_every` steps, so a few thousand
monitoring tokens do not get memorised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from layerpeel.arch.views import ModelView
from layerpeel.quant import get_quantizer


@dataclass
class AdamOptions:
    """Settings of the local Adam solver."""

    steps: int = 200  # Adam steps
    lr: float = 1e-3  # learning rate
    batch: int = 8  # fit sequences per step
    seed: int = 0  # seed of the batch order
    check_every: int = 20  # steps between checks on the set-aside sequences
    scheme: str | None = None  # quantizer the reference must obey (None = full precision)


class _STE(nn.Module):
    """Parametrization: weight -> scheme's quantized weight, gradient straight through."""

    def __init__(self, scheme: str) -> None:
        super().__init__()
        self.quantizer = get_quantizer(scheme)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q = self.quantizer.quantize(w.detach())
        return q + (w - w.detach())


def adam_reference(
    view: ModelView,
    index: int,
    x: torch.Tensor,
    targets: torch.Tensor,
    part: str = "block",
    opts: AdamOptions | None = None,
) -> nn.Module:
    """A reference for block `index` trained on inputs x (S,T,C) to lower the end CE on `targets`.

    Gradients are taken with `torch.autograd.grad` with respect to the copy's parameters only,
    so the trained model's parameters and their `.grad` are never touched.
    """
    opts = opts or AdamOptions()
    ref = view.reference_copy(index)
    linears = [m for m in ref.modules() if isinstance(m, nn.Linear)]
    if opts.scheme not in (None, "none"):
        for m in linears:
            parametrize.register_parametrization(m, "weight", _STE(str(opts.scheme)))
    bv = view.block_view(ref)
    params = bv.part_parameters(part)
    for p in ref.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    adam = torch.optim.Adam(params, lr=opts.lr)
    gen = torch.Generator().manual_seed(opts.seed)
    n_check = x.shape[0] // 4
    n = x.shape[0] - n_check  # fitted on the first n sequences, checked on the rest

    @torch.no_grad()
    def check() -> float:
        if n_check == 0:
            return 0.0
        logits = view.run_from(index, x[n:], {index: ref})
        return float(F.cross_entropy(logits.transpose(1, 2), targets[n:]))

    best_ce, best_state = check(), [p.detach().clone() for p in params]
    for step in range(opts.steps):
        ids = torch.randint(n, (min(opts.batch, n),), generator=gen, device="cpu").to(x.device)
        with torch.enable_grad():
            logits = view.run_from(index, x[ids], {index: ref})
            loss = F.cross_entropy(logits.transpose(1, 2), targets[ids])
            grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        adam.step()
        adam.zero_grad(set_to_none=True)
        if n_check == 0:
            best_state = [p.detach().clone() for p in params]
        elif (step + 1) % opts.check_every == 0 or step + 1 == opts.steps:
            ce = check()
            if ce < best_ce:
                best_ce, best_state = ce, [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, b in zip(params, best_state, strict=True):
            p.copy_(b)
    for m in linears:
        if parametrize.is_parametrized(m):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
