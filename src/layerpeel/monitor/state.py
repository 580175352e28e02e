"""Leaving the watched run exactly as it was: random-number states and a shadow copy of the model.

Analyses run on a shadow copy of the model whose tensors are refreshed from the live model before
each analysis, without gradients, with every random number generator state saved and restored
around them. The live model's parameters, buffers, `.grad`s and train/eval modes are never touched.
A model sharded by FSDP (`fully_shard`) gets a plain, unsharded copy whose parameters are gathered
from the shards on every rank (a collective: every rank refreshes at the same time).
"""

from __future__ import annotations

import copy
import random
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Save the torch (CPU and every CUDA device), Python and NumPy generator states; restore them."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    py = random.getstate()
    np_state = np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)
        np.random.set_state(np_state)


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP shard (a DTensor; gathered from every rank), else `t`."""
    full_tensor = getattr(t, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else t


def _fsdp_base(module: nn.Module) -> type[nn.Module] | None:
    """The module's own class when FSDP (`fully_shard`) wrapped it, else None."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return None
    if not isinstance(module, FSDPModule):
        return None
    return next(
        b
        for b in type(module).__mro__[1:]
        if issubclass(b, nn.Module) and not issubclass(b, FSDPModule)
    )


_HOOKS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
)


def _unsharded(module: nn.Module, memo: dict[int, nn.Parameter]) -> nn.Module:
    """A plain copy of an FSDP-wrapped module tree: own classes, whole parameters, no FSDP hooks.

    FSDP refuses `deepcopy`, so the tree is rebuilt module by module; tied parameters stay tied.
    """
    cls: type[nn.Module] = _fsdp_base(module) or type(module)
    new = cls.__new__(cls)
    state = {
        k: v
        for k, v in module.__dict__.items()
        if not k.startswith("__composable_api_state_key") and "fsdp" not in k
    }
    params: dict[str, nn.Parameter | None] = {}
    for name, p in module._parameters.items():
        if p is not None and id(p) not in memo:
            memo[id(p)] = nn.Parameter(_full(p).detach().clone(), requires_grad=False)
        params[name] = None if p is None else memo[id(p)]
    state["_parameters"] = params
    state["_buffers"] = {
        n: None if b is None else _full(b).detach().clone() for n, b in module._buffers.items()
    }
    state["_modules"] = {
        n: None if m is None else _unsharded(m, memo) for n, m in module._modules.items()
    }
    for hooks in _HOOKS:
        if hooks in state:
            state[hooks] = OrderedDict()
    new.__dict__ = state
    return new


def is_sharded(model: nn.Module) -> bool:
    """True when FSDP (`fully_shard`) wrapped the model or one of its modules."""
    return any(_fsdp_base(m) is not None for m in model.modules())


def plain_copy(live: nn.Module) -> nn.Module:
    """A deep copy of `live`; of an FSDP-sharded model, an unsharded one (collective)."""
    if is_sharded(live):
        return _unsharded(live, {})
    return copy.deepcopy(live)


class ShadowModel:
    """A deep copy of a model, refreshed in place from the live model before each analysis."""

    def __init__(self, live: nn.Module) -> None:
        self.live = live
        with torch.no_grad():
            self.copy = plain_copy(live)
        self._strip()

    def _strip(self) -> None:
        self.copy.requires_grad_(False)
        for p in self.copy.parameters():
            p.grad = None
        self.copy.eval()

    def _tensors(self, model: nn.Module) -> list[torch.Tensor]:
        return [*model.parameters(), *model.buffers()]

    @torch.no_grad()
    def refresh(self) -> nn.Module:
        """The copy, holding the live model's current parameters and buffers."""
        src = [_full(t) for t in self._tensors(self.live)]  # FSDP shards: gathered, in order
        dst = self._tensors(self.copy)
        same = len(src) == len(dst) and all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
            for a, b in zip(src, dst, strict=True)
        )
        if not same:  # the live model changed its structure or device: copy it again
            self.copy = plain_copy(self.live)
            self._strip()
            return self.copy
        for a, b in zip(src, dst, strict=True):
            b.copy_(a)
        return self.copy


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Every piece of a model's state a monitor could disturb, for tests: tensors, grads, modes."""
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {
            n: None if p.grad is None else p.grad.detach().clone()
            for n, p in model.named_parameters()
        },
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
    }
