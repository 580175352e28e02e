"""Low-bit weights: quantizers, QuantLinear with a straight-through estimator, `quantize_`."""

from layerpeel.quant.linear import (
    GlobalScale,
    QuantConfig,
    QuantEmbedding,
    QuantLinear,
    bits_per_weight,
    dequantize_,
    model_scheme,
    quantize_,
)
from layerpeel.quant.schemes import SCHEMES, Quantizer, get_quantizer, register_scheme

__all__ = [
    "GlobalScale",
    "QuantConfig",
    "QuantEmbedding",
    "QuantLinear",
    "Quantizer",
    "SCHEMES",
    "bits_per_weight",
    "dequantize_",
    "get_quantizer",
    "model_scheme",
    "quantize_",
    "register_scheme",
]
