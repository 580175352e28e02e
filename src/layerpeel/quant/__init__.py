"""Low-bit weights: registered quantizers, QuantLinear with a straight-through estimator, quantize_.

Usage: `quantize_(model, QuantConfig(scheme="binary-global"))` swaps the model's Linear layers in
place; `layer.quantized_weight()` is what a quantized layer really multiplies by.
"""

from layerpeel.quant.apply import (
    GLOBAL_SCALE_NAME,
    HEAD_NAMES,
    FilterFn,
    QuantConfig,
    default_filter,
    dequantize_,
    global_scale,
    is_quantized,
    model_scheme,
    quantize_,
)
from layerpeel.quant.bits import LayerBits, bits_per_weight, layer_bits
from layerpeel.quant.linear import (
    QUANT_LAYERS,
    GlobalScale,
    QuantEmbedding,
    QuantLinear,
    QuantWeightMixin,
    straight_through,
)
from layerpeel.quant.schemes import (
    FULL_PRECISION,
    SCHEMES,
    Quantizer,
    get_quantizer,
    known_schemes,
    register_scheme,
    sign,
)

__all__ = [
    "FULL_PRECISION",
    "GLOBAL_SCALE_NAME",
    "HEAD_NAMES",
    "QUANT_LAYERS",
    "SCHEMES",
    "FilterFn",
    "GlobalScale",
    "LayerBits",
    "QuantConfig",
    "QuantEmbedding",
    "QuantLinear",
    "QuantWeightMixin",
    "Quantizer",
    "bits_per_weight",
    "default_filter",
    "dequantize_",
    "get_quantizer",
    "global_scale",
    "is_quantized",
    "known_schemes",
    "layer_bits",
    "model_scheme",
    "quantize_",
    "register_scheme",
    "sign",
    "straight_through",
]
