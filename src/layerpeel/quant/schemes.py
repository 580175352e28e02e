"""Weight quantizers, one registered class per scheme: value sets, scales and bits per weight.

Every quantizer maps a weight W (out, in) to scale * codes, with integer codes in a fixed set.
Scales are one per tensor (`per_channel = False`) or one per output row.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from layerpeel.errors import ConfigError


class Quantizer:
    """Base class: `codes(w)` gives integer codes, `init_scale(w)` the scale the codes multiply."""

    name: str = ""
    per_channel: bool = True  # one scale per output row (else one per tensor)
    code_bits: float = 0.0  # bits to store one code
    levels: tuple[int, ...] = ()  # the integer codes a weight may take

    @property
    def bits_per_weight(self) -> float:
        """Bits to store one weight's code (scales are a handful of floats and are not counted)."""
        return self.code_bits

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def init_scale(self, w: torch.Tensor) -> torch.Tensor:
        """Scale of `w` under this scheme: (out, 1) per channel or () per tensor."""
        raise NotImplementedError

    def quantize(self, w: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Scale * codes(w), with the scheme's own scale when none is given."""
        s = self.init_scale(w) if scale is None else scale
        return s * self.codes(w)


SCHEMES: dict[str, Quantizer] = {}


def register_scheme(name: str) -> Callable[[type[Quantizer]], type[Quantizer]]:
    """Class decorator: register a `Quantizer` under `name`."""

    def deco(cls: type[Quantizer]) -> type[Quantizer]:
        inst = cls()
        inst.name = name
        SCHEMES[name] = inst
        return cls

    return deco


def get_quantizer(name: str) -> Quantizer:
    if name not in SCHEMES:
        raise ConfigError(f"unknown quant scheme {name!r}; known: none, {', '.join(SCHEMES)}")
    return SCHEMES[name]


def _sign(w: torch.Tensor) -> torch.Tensor:
    """Sign with sign(0) = +1, so binary values are never zero."""
    return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)


@register_scheme("binary-global")
class BinaryGlobal(Quantizer):
    """PIBiNN: lambda * sign(W) with ONE learnable lambda shared by every quantized layer."""

    per_channel = False
    code_bits = 1.0
    levels = (-1, 1)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        return _sign(w)

    def init_scale(self, w: torch.Tensor) -> torch.Tensor:
        return w.abs().mean()


@register_scheme("binary-channel")
class BinaryChannel(Quantizer):
    """sign(W) times one scale per output row, mean |W_r| recomputed from the latent weight."""

    per_channel = True
    code_bits = 1.0
    levels = (-1, 1)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        return _sign(w)

    def init_scale(self, w: torch.Tensor) -> torch.Tensor:
        return w.abs().mean(dim=1, keepdim=True)


@register_scheme("ternary")
class Ternary(Quantizer):
    """TWN: codes in {-1, 0, 1} with threshold 0.7 mean|W|; scale = mean |W| above the threshold."""

    per_channel = False
    code_bits = math.log2(3)
    levels = (-1, 0, 1)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        delta = 0.7 * w.abs().mean()
        return torch.where(w.abs() > delta, _sign(w), torch.zeros_like(w))

    def init_scale(self, w: torch.Tensor) -> torch.Tensor:
        mask = self.codes(w) != 0
        return (w.abs() * mask).sum() / mask.sum().clamp_min(1)


class IntK(Quantizer):
    """Symmetric uniform k-bit codes per output row: s_r = max|W_r| / (2^(k-1) - 1)."""

    bits = 8
    per_channel = True

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def code_bits(self) -> float:  # type: ignore[override]
        return float(self.bits)

    @property
    def levels(self) -> tuple[int, ...]:  # type: ignore[override]
        return tuple(range(-self.qmax, self.qmax + 1))

    def init_scale(self, w: torch.Tensor) -> torch.Tensor:
        return w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / self.qmax

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(w / self.init_scale(w)), -self.qmax, self.qmax)


for _k in (2, 3, 4, 8):
    register_scheme(f"int{_k}")(type(f"Int{_k}", (IntK,), {"bits": _k}))
