"""Scoped hooks that record the residual stream and sub-block activations; hooks never outlive the scope."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from layerpeel.arch.views import ModelView
from layerpeel.errors import LayerpeelError

DEFAULT_BUDGET_BYTES = 2 * 1024**3


class MemoryBudgetError(LayerpeelError):
    """Cached activations would exceed the memory budget."""


class NonFiniteError(LayerpeelError):
    """NaN or Inf in the activations."""


@contextmanager
def hooks(
    pre: dict[nn.Module, Callable] | None = None, post: dict[nn.Module, Callable] | None = None
) -> Iterator[None]:
    """Register forward pre-hooks and hooks for the scope only; removed in `finally`."""
    handles = []
    try:
        for module, fn in (pre or {}).items():
            handles.append(module.register_forward_pre_hook(fn))
        for module, fn in (post or {}).items():
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class Activations:
    """Recorded activations, batches concatenated along the first dimension.

    residual[l] is G_l (N, T, C): G_0 the stream after the embeddings, G_l the output of block l.
    attn_in / attn_out / mlp_in / mlp_out[i] are the inputs and outputs of block i's sub-blocks.
    """

    budget_bytes: int
    residual: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    attn_in: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    attn_out: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    mlp_in: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    mlp_out: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    nbytes: int = 0

    def add(self, store: dict[int, list[torch.Tensor]], key: int, t: torch.Tensor) -> None:
        t = t.detach().float()  # kept on the model's device, where the analysis runs
        self.nbytes += t.numel() * t.element_size()
        if self.nbytes > self.budget_bytes:
            raise MemoryBudgetError(
                f"cached activations exceed the memory budget of {self.budget_bytes / 2**20:.0f} MiB;"
                " raise the budget or use fewer monitoring tokens"
            )
        store.setdefault(key, []).append(t)

    @staticmethod
    def _cat(store: dict[int, list[torch.Tensor]]) -> dict[int, torch.Tensor]:
        return {k: torch.cat(v, 0) for k, v in sorted(store.items())}

    def stacked(self) -> dict[str, dict[int, torch.Tensor]]:
        return {
            "residual": self._cat(self.residual),
            "attn_in": self._cat(self.attn_in),
            "attn_out": self._cat(self.attn_out),
            "mlp_in": self._cat(self.mlp_in),
            "mlp_out": self._cat(self.mlp_out),
        }


def _first(args: tuple) -> torch.Tensor:
    x = args[0]
    return x[0] if isinstance(x, tuple) else x


@contextmanager
def capture(
    view: ModelView, sub_blocks: bool = False, budget_bytes: int = DEFAULT_BUDGET_BYTES
) -> Iterator[Activations]:
    """Record G_0..G_L (and sub-block inputs/outputs if `sub_blocks`) of every forward in scope."""
    acts = Activations(budget_bytes)
    pre: dict[nn.Module, Callable] = {}
    post: dict[nn.Module, Callable] = {}
    blocks = view.blocks

    def keep_input(store: dict[int, list[torch.Tensor]], i: int) -> Callable:
        return lambda module, args: acts.add(store, i, _first(args))

    def keep_output(store: dict[int, list[torch.Tensor]], i: int) -> Callable:
        return lambda module, args, out: acts.add(store, i, _first((out,)))

    pre[blocks[0]] = keep_input(acts.residual, 0)
    for i, block in enumerate(blocks):
        post[block] = keep_output(acts.residual, i + 1)
        if sub_blocks:
            bv = view.block_view(block)
            attn = bv.linear(bv.out_name.rpartition(".")[0])
            mlp = bv.linear(bv.proj_name.rpartition(".")[0])
            pre[attn], post[attn] = keep_input(acts.attn_in, i), keep_output(acts.attn_out, i)
            pre[mlp], post[mlp] = keep_input(acts.mlp_in, i), keep_output(acts.mlp_out, i)
    with hooks(pre, post):
        yield acts


@torch.no_grad()
def residual_stream(
    view: ModelView,
    tokens: torch.Tensor,
    batch_size: int = 16,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> list[torch.Tensor]:
    """G_0..G_L of the model on token windows (S, T): a list of L+1 tensors (S, T, C), float32.

    The tokens go to the device of the model's parameters, and the streams stay there.
    Raises `NonFiniteError` naming the first block whose output holds NaN or Inf.
    """
    tokens = tokens.to(model_device(view.model))
    with capture(view, budget_bytes=budget_bytes) as acts:
        for start in range(0, tokens.shape[0], batch_size):
            view.forward(tokens[start : start + batch_size])
    res = acts.stacked()["residual"]
    out = [res[i] for i in range(view.n_blocks + 1)]
    check_finite(out)
    return out


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def check_finite(stream: list[torch.Tensor]) -> None:
    for i, g in enumerate(stream):
        if not torch.isfinite(g).all():
            where = "the embeddings" if i == 0 else f"block {i - 1}"
            raise NonFiniteError(f"NaN or Inf in the activations, first at the output of {where}")
