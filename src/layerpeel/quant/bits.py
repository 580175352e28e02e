"""Bits per weight of a scheme or a model: codes plus scales, per weight tensor and in total.

Convention: a quantized weight costs `code_bits` per entry (1 binary, log2(3) ternary, k for
int-k) plus `scale_bits` (float32: 32) per scale it owns -- one per output row for per-channel
schemes, one per tensor for ternary; the shared binary-global lambda is counted once for the
whole model. Full-precision weights cost their dtype's width. Only Linear and Embedding weights
count (biases and norms are left out), and a tied tensor counts once.
"""

from __future__ import annotations

import dataclasses
import math

from torch import nn

from layerpeel.quant.apply import GLOBAL_SCALE_NAME, global_scale, model_scheme
from layerpeel.quant.linear import QUANT_LAYERS
from layerpeel.quant.schemes import FULL_PRECISION, get_quantizer

SCALE_BITS = 32  # bits per stored scale (float32)
FULL_PRECISION_BITS = 32.0  # what bits_per_weight("none") reports: float32 weights


@dataclasses.dataclass(frozen=True)
class LayerBits:
    """Storage of one weight tensor (or of the model's shared scale): codes and scales."""

    name: str  # first module name holding the tensor ("quant_scale" for the shared scale)
    scheme: str  # quant scheme, "none" for full precision
    n_weights: int  # entries of the weight tensor (0 for the shared scale)
    code_bits: float  # bits of all its codes (full precision: of all its values)
    scale_bits: float  # bits of the scales it owns

    @property
    def total_bits(self) -> float:
        """Codes plus scales."""
        return self.code_bits + self.scale_bits

    @property
    def bits_per_weight(self) -> float:
        """Total bits over entries (nan for the shared-scale row, which has no entries)."""
        return self.total_bits / self.n_weights if self.n_weights else math.nan


def layer_bits(model: nn.Module, scale_bits: int = SCALE_BITS) -> list[LayerBits]:
    """One row per distinct Linear/Embedding weight of `model`, then one for a shared scale."""
    rows: list[LayerBits] = []
    seen: set[int] = set()
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Embedding)) or id(m.weight) in seen:
            continue
        seen.add(id(m.weight))
        shape, n = tuple(m.weight.shape), m.weight.numel()
        if isinstance(m, QUANT_LAYERS):
            q = m.quantizer
            rows.append(
                LayerBits(name, q.name, n, n * q.code_bits, q.num_scales(shape) * scale_bits)
            )
        else:
            rows.append(LayerBits(name, FULL_PRECISION, n, n * m.weight.element_size() * 8, 0.0))
    gs = global_scale(model)
    if gs is not None:
        rows.append(
            LayerBits(GLOBAL_SCALE_NAME, model_scheme(model), 0, 0.0, gs.value.numel() * scale_bits)
        )
    return rows


def bits_per_weight(
    scheme_or_model: str | nn.Module, quantized_only: bool = False, scale_bits: int = SCALE_BITS
) -> float:
    """Bits per weight of a scheme (its code alone) or of a model (codes and scales amortised).

    A scheme name gives `Quantizer.bits_per_weight` (32 for "none", i.e. float32). A model gives
    total bits over total entries of its Linear/Embedding weights (see the module docstring);
    `quantized_only` leaves its full-precision layers out.
    """
    if isinstance(scheme_or_model, str):
        if scheme_or_model == FULL_PRECISION:
            return FULL_PRECISION_BITS
        return get_quantizer(scheme_or_model).bits_per_weight
    rows = layer_bits(scheme_or_model, scale_bits)
    if quantized_only:
        rows = [r for r in rows if r.scheme != FULL_PRECISION]
    count = sum(r.n_weights for r in rows)
    return sum(r.total_bits for r in rows) / count if count else math.nan
