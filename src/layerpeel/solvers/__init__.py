"""Local solvers, registered by name: `@register_solver("name")` adds one.

A solver maps (view, block index, inputs, target-or-tokens, part, **options) to a reference block.
"closed" takes a target residual stream; "adam" takes next-token targets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from layerpeel.arch.views import ModelView
from layerpeel.errors import ConfigError

Solver = Callable[..., nn.Module]
SOLVERS: dict[str, Solver] = {}


def register_solver(name: str) -> Callable[[Solver], Solver]:
    def deco(fn: Solver) -> Solver:
        SOLVERS[name] = fn
        return fn

    return deco


def get_solver(name: str) -> Solver:
    if name not in SOLVERS:
        raise ConfigError(f"unknown solver {name!r}; known: {', '.join(sorted(SOLVERS))}")
    return SOLVERS[name]


@register_solver("closed")
def closed_solver(
    view: ModelView,
    index: int,
    x: torch.Tensor,
    target: torch.Tensor,
    part: str = "block",
    scheme: str | None = None,
    ridge: float = 1e-3,
    **_: Any,
) -> nn.Module:
    """Closed-form peel of block `index` from x onto the residual target (both (S,T,C))."""
    from layerpeel.solvers.closed import ClosedFormOptions, peel_block

    return peel_block(view, index, x, target, part, ClosedFormOptions(ridge=ridge, scheme=scheme))


@register_solver("adam")
def adam_solver(
    view: ModelView,
    index: int,
    x: torch.Tensor,
    tokens: torch.Tensor,
    part: str = "block",
    scheme: str | None = None,
    steps: int = 200,
    lr: float = 1e-3,
    seed: int = 0,
    **_: Any,
) -> nn.Module:
    """Local Adam on block `index`'s parameters against the end CE on next-token `tokens` (S,T)."""
    from layerpeel.solvers.adam import AdamOptions, adam_reference

    opts = AdamOptions(steps=steps, lr=lr, seed=seed, scheme=scheme)
    return adam_reference(view, index, x, tokens, part, opts)
