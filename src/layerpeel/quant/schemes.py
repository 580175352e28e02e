"""Weight quantizers, one registered class per scheme: value sets, scales and bits per weight.

Every quantizer maps a weight W (out, in) to `scale * codes`, with integer codes taken from the
fixed set `levels`. A scale is one per tensor (shape `()`) or one per output row (shape
`(out, 1)`, broadcasting against W). Where the scale comes from is part of the scheme:

- `learnable_scale = False`: the scale is recomputed from the latent weight at every forward
  (`init_scale(W)`, no gradient flows through it);
- `learnable_scale = True`: the scale is a Parameter, initialised with `init_scale` and trained
  through the straight-through estimator; with `shared_scale = True` too, one Parameter serves
  every quantized layer of a model (PIBiNN's single global lambda).

Bits per weight (the convention every report uses): `bits_per_weight` counts only the code of
one weight -- 1 for binary, log2(3) ~ 1.585 for ternary (the information bound; a packed
5-codes-per-byte format reaches 1.6), k for int-k. `storage_bits(shape)` adds the scales at
`scale_bits` each (float32 by default), so per-channel scales cost 32 / in_features per weight
and a model's one global scale costs 32 bits in total; `layerpeel.quant.bits` sums it per model.

Adding a scheme is one decorated class:

    @register_scheme("my-scheme")
    class MyScheme(Quantizer):
        levels = (-1, 1)
        ...
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from layerpeel.errors import ConfigError

FULL_PRECISION = "none"  # the scheme name that means "no quantizer"


class Quantizer:
    """A weight quantizer: integer `levels`, a scale rule, and the codes of a weight.

    Subclasses set the class attributes and implement `init_scale` and `codes`. Instances are
    stateless singletons held in `SCHEMES`; copying or pickling one gives back the registered
    instance.
    """

    name: str = ""  # registry name, set by `register_scheme`
    levels: tuple[int, ...] = ()  # the integer codes a weight may take; values are scale * level
    code_bits: float = 0.0  # bits to store one code (log2 of the number of levels, or packed)
    per_channel: bool = False  # one scale per output row (dim 0), else one per tensor
    learnable_scale: bool = False  # scale is a trained Parameter, else recomputed from W
    shared_scale: bool = False  # one learnable scale for every quantized layer of a model

    @property
    def bits_per_weight(self) -> float:
        """Bits to store one weight's code; scales are not included (see `storage_bits`)."""
        return self.code_bits

    def init_scale(self, w: torch.Tensor) -> torch.Tensor:
        """The scheme's scale for weight `w` (out, in): `(out, 1)` per channel or `()`."""
        raise NotImplementedError

    def codes(self, w: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Integer codes of `w` (out, in) in `levels`, in w's dtype; `scale` as from `init_scale`.

        Schemes whose codes depend on the scale (k-bit rounding) use `scale`, or `init_scale(w)`
        when it is None; sign and threshold schemes ignore it.
        """
        raise NotImplementedError

    def quantize(self, w: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """`scale * codes(w, scale)` (out, in), with `init_scale(w)` when no scale is given."""
        s = self.init_scale(w) if scale is None else scale
        return s * self.codes(w, s)

    def values(self, scale: torch.Tensor) -> torch.Tensor:
        """The real values a weight may take for `scale`: `scale[..., None] * levels`."""
        lv = torch.tensor(self.levels, dtype=scale.dtype, device=scale.device)
        return scale[..., None] * lv

    def num_scales(self, shape: tuple[int, ...] | torch.Size) -> int:
        """How many scales one weight of `shape` (out, in) carries (0 when shared by the model)."""
        if self.shared_scale:
            return 0
        return int(shape[0]) if self.per_channel else 1

    def storage_bits(self, shape: tuple[int, ...] | torch.Size, scale_bits: int = 32) -> float:
        """Bits to store one weight of `shape`: its codes plus its own scales."""
        return math.prod(shape) * self.code_bits + self.num_scales(shape) * scale_bits

    def __reduce__(self) -> tuple[Any, ...]:
        return (get_quantizer, (self.name,))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


SCHEMES: dict[str, Quantizer] = {}

Q = TypeVar("Q", bound=type[Quantizer])


def register_scheme(name: str) -> Callable[[Q], Q]:
    """Class decorator: register one instance of a `Quantizer` subclass under `name`."""
    if name == FULL_PRECISION:
        raise ValueError(f"{FULL_PRECISION!r} is reserved for full precision")

    def deco(cls: Q) -> Q:
        if name in SCHEMES:
            raise ValueError(f"quant scheme {name!r} is already registered")
        inst = cls()
        inst.name = name
        if inst.shared_scale and (inst.per_channel or not inst.learnable_scale):
            raise ValueError(f"{name}: a shared scale must be learnable and per tensor")
        SCHEMES[name] = inst
        return cls

    return deco


def known_schemes() -> list[str]:
    """Every valid `QuantConfig.scheme`: "none" and the registered schemes."""
    return [FULL_PRECISION, *SCHEMES]


def get_quantizer(name: str) -> Quantizer:
    """The registered quantizer called `name`; `ConfigError` naming the known ones otherwise."""
    try:
        return SCHEMES[name]
    except (KeyError, TypeError):
        if name == FULL_PRECISION:
            raise ConfigError(
                f"quant scheme {name!r} is full precision and has no quantizer"
            ) from None
        raise ConfigError(
            f"unknown quant scheme {name!r}; known: {', '.join(known_schemes())}"
        ) from None


def sign(w: torch.Tensor) -> torch.Tensor:
    """The sign of each entry, +1 for zero entries, so binary codes are never zero."""
    return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)


def _work(w: torch.Tensor) -> torch.Tensor:
    """W in at least float32, so scales of half-precision weights neither underflow nor round."""
    return w.float() if w.is_floating_point() and w.element_size() < 4 else w


@register_scheme("binary-global")
class BinaryGlobal(Quantizer):
    """PIBiNN: lambda * sign(W), with ONE learnable lambda shared by every quantized layer.

    `init_scale(W)` is mean |W| of one tensor; `quantize_` initialises the shared lambda to mean
    |W| over all quantized weights together.
    """

    levels = (-1, 1)
    code_bits = 1.0
    learnable_scale = True
    shared_scale = True

    def init_scale(self, w: torch.Tensor) -> torch.Tensor:
        return _work(w).abs().mean().to(w.dtype)

    def codes(self, w: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        return sign(w)


@register_scheme("binary-channel")
class BinaryChannel(Quantizer):
    """XNOR-style: lambda_r * sign(W_r), lambda_r = mean |W_r| recomputed from the latent weight."""

    levels = (-1, 1)
    code_bits = 1.0
    per_channel = True

    def init_scale(self, w: torch.Tensor) -> torch.Tensor:
        return _work(w).abs().mean(dim=1, keepdim=True).to(w.dtype)

    def codes(self, w: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        return sign(w)


@register_scheme("ternary")
class Ternary(Quantizer):
    """TWN, per tensor: codes sign(W) where |W| > delta = 0.7 mean |W|, else 0.

    The scale a = mean |W| over the entries above delta is recomputed from the latent weight.
    """

    levels = (-1, 0, 1)
    code_bits = math.log2(3)
    threshold = 0.7  # delta = threshold * mean |W|

    def init_scale(self, w: torch.Tensor) -> torch.Tensor:
        a = _work(w).abs()
        big = a > self.threshold * a.mean()
        return ((a * big).sum() / big.sum().clamp_min(1)).to(w.dtype)

    def codes(self, w: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        a = _work(w).abs()
        return torch.where(a > self.threshold * a.mean(), sign(w), torch.zeros_like(w))


class IntK(Quantizer):
    """Symmetric uniform k-bit codes {-(2^(k-1)-1) .. 2^(k-1)-1}, one scale per output row.

    s_r = max |W_r| / (2^(k-1) - 1), recomputed from the latent weight; codes round to nearest
    (ties to even) and clamp. int2 is therefore {-s, 0, s} per row.
    """

    bits: int = 8
    per_channel = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        qmax = 2 ** (cls.bits - 1) - 1
        cls.levels = tuple(range(-qmax, qmax + 1))
        cls.code_bits = float(cls.bits)

    @property
    def qmax(self) -> int:
        """The largest code, 2^(k-1) - 1."""
        return 2 ** (self.bits - 1) - 1

    def init_scale(self, w: torch.Tensor) -> torch.Tensor:
        wf = _work(w)
        tiny = torch.finfo(wf.dtype).tiny
        return (wf.abs().amax(dim=1, keepdim=True).clamp_min(tiny) / self.qmax).to(w.dtype)

    def codes(self, w: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        wf = _work(w)
        s = _work(self.init_scale(w) if scale is None else scale)
        s = torch.where(s == 0, torch.ones_like(s), s)  # a zero scale gives zero values anyway
        return torch.clamp(torch.round(wf / s), -self.qmax, self.qmax).to(w.dtype)


@register_scheme("int2")
class Int2(IntK):
    """2-bit symmetric per channel: {-s, 0, s} (the fourth code is unused)."""

    bits = 2


@register_scheme("int3")
class Int3(IntK):
    """3-bit symmetric per channel: {-3 .. 3} * s."""

    bits = 3


@register_scheme("int4")
class Int4(IntK):
    """4-bit symmetric per channel: {-7 .. 7} * s."""

    bits = 4


@register_scheme("int8")
class Int8(IntK):
    """8-bit symmetric per channel: {-127 .. 127} * s."""

    bits = 8
