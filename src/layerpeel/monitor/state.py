"""Leaving the watched run exactly as it was: random-number states and a shadow copy of the model.

Analyses run on a shadow copy of the model whose tensors are refreshed from the live model before
each analysis, without gradients, with every random number generator state saved and restored
around them. The live model's parameters, buffers, `.grad`s and train/eval modes are never touched.
"""

from __future__ import annotations

import copy
import random
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


class ShadowModel:
    """A deep copy of a model, refreshed in place from the live model before each analysis."""

    def __init__(self, live: nn.Module) -> None:
        self.live = live
        with torch.no_grad():
            self.copy = copy.deepcopy(live)
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
        src, dst = self._tensors(self.live), self._tensors(self.copy)
        same = len(src) == len(dst) and all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
            for a, b in zip(src, dst, strict=True)
        )
        if not same:  # the live model changed its structure or device: copy it again
            self.copy = copy.deepcopy(self.live)
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
