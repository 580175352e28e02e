"""QuantLinear with a straight-through estimator, and `quantize_` that swaps it into a model."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from layerpeel.config import ConfigBase
from layerpeel.errors import ConfigError
from layerpeel.quant.schemes import SCHEMES, Quantizer, get_quantizer

log = logging.getLogger(__name__)

HEAD_NAMES = ("head", "lm_head")
GLOBAL_SCALE_NAME = "quant_scale"


@dataclasses.dataclass
class QuantConfig(ConfigBase):
    """Which weights to quantize and how."""

    scheme: str = "none"  # none, binary-global, binary-channel, ternary, int2, int3, int4, int8
    quantize_embeddings: bool = False  # also quantize nn.Embedding tables
    quantize_head: bool = False  # also quantize the unembedding head ("head" / "lm_head")

    def validate(self) -> None:
        if self.scheme != "none" and self.scheme not in SCHEMES:
            raise ConfigError(
                f"unknown quant scheme {self.scheme!r}; known: none, {', '.join(SCHEMES)}"
            )


class GlobalScale(nn.Module):
    """The one learnable scale shared by every layer of a binary-global model."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(value)))


def ste(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward exactly q, backward identity to w: the straight-through estimator."""
    return q + (w - w.detach())


class QuantMixin:
    """Shared by QuantLinear and QuantEmbedding: effective weight = STE(scale * codes(latent))."""

    quantizer: Quantizer

    def _scale(self) -> torch.Tensor:
        shared = self.__dict__.get("_shared_scale")
        if shared is not None:
            return shared.value
        return self.quantizer.init_scale(self.weight).detach()  # type: ignore[attr-defined]

    def quantized_weight(self) -> torch.Tensor:
        """The weight the layer multiplies by (out, in), with STE gradients to the latent weight.

        For a learnable shared scale the gradient also reaches the scale: d/dlambda = sum g * codes.
        """
        w = self.weight  # type: ignore[attr-defined]
        codes = self.quantizer.codes(w).detach()
        return ste(w, self._scale() * codes)

    @property
    def bits_per_weight(self) -> float:
        return self.quantizer.bits_per_weight


class QuantLinear(QuantMixin, nn.Linear):
    """nn.Linear whose forward uses the quantized weight; `weight` stays the latent full precision."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        quantizer: Quantizer,
        shared_scale: GlobalScale | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.quantizer = quantizer
        self.__dict__["_shared_scale"] = shared_scale  # not a submodule: stored once, on the root

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scheme={self.quantizer.name}"


class QuantEmbedding(QuantMixin, nn.Embedding):
    """nn.Embedding whose lookups use the quantized table."""

    def __init__(
        self, num: int, dim: int, quantizer: Quantizer, shared_scale: GlobalScale | None = None
    ) -> None:
        super().__init__(num, dim)
        self.quantizer = quantizer
        self.__dict__["_shared_scale"] = shared_scale

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.quantized_weight())


FilterFn = Callable[[nn.Module, str], bool]


def default_filter(cfg: QuantConfig) -> FilterFn:
    """Every Linear except the head (unless asked); embeddings only if asked."""

    def keep(module: nn.Module, name: str) -> bool:
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Embedding):
            return cfg.quantize_embeddings
        if leaf in HEAD_NAMES:
            return cfg.quantize_head
        return isinstance(module, nn.Linear)

    return keep


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


@torch.no_grad()
def quantize_(model: nn.Module, cfg: QuantConfig, filter_fn: FilterFn | None = None) -> nn.Module:
    """Swap the chosen nn.Linear (and, if asked, nn.Embedding) layers for quantized ones, in place.

    Latent weights, biases and parameter names are kept. For `binary-global` one learnable scale,
    initialised to mean |W| over every quantized weight, is registered on the model as
    `quant_scale` and shared by all quantized layers. A weight tied between an embedding and the
    head is quantized once and stays tied.
    """
    cfg.validate()
    if cfg.scheme == "none":
        return model
    quantizer = get_quantizer(cfg.scheme)
    keep = filter_fn or default_filter(cfg)
    chosen = [
        (name, m)
        for name, m in model.named_modules()
        if name
        and isinstance(m, (nn.Linear, nn.Embedding))
        and not isinstance(m, QuantMixin)
        and keep(m, name)
    ]
    if not chosen:
        log.warning("quantize_: no layer matched; the model is unchanged")
        return model
    shared = None
    if cfg.scheme == "binary-global":
        weights = {id(m.weight): m.weight for _, m in chosen}
        total = sum(float(w.abs().sum()) for w in weights.values())
        count = sum(w.numel() for w in weights.values())
        shared = GlobalScale(total / count)
        model.add_module(GLOBAL_SCALE_NAME, shared)
    swapped: dict[int, Any] = {}
    for name, m in chosen:
        new: nn.Module
        if isinstance(m, nn.Embedding):
            new = QuantEmbedding(m.num_embeddings, m.embedding_dim, quantizer, shared)
        else:
            new = QuantLinear(m.in_features, m.out_features, m.bias is not None, quantizer, shared)
            if m.bias is not None:
                new.bias = m.bias
        new.weight = swapped.setdefault(id(m.weight), m.weight)
        new.to(m.weight.device)
        _set(model, name, new)
    return model


@torch.no_grad()
def dequantize_(model: nn.Module) -> nn.Module:
    """Replace quantized layers by plain ones holding their quantized values (for export)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantLinear):
            plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            plain.weight.copy_(m.quantized_weight())
            if m.bias is not None:
                plain.bias.copy_(m.bias)
            _set(model, name, plain.to(m.weight.device))
        elif isinstance(m, QuantEmbedding):
            emb = nn.Embedding(m.num_embeddings, m.embedding_dim)
            emb.weight.copy_(m.quantized_weight())
            _set(model, name, emb.to(m.weight.device))
    if hasattr(model, GLOBAL_SCALE_NAME):
        delattr(model, GLOBAL_SCALE_NAME)
    return model


def model_scheme(model: nn.Module) -> str | None:
    """The quant scheme of a model's quantized layers (None when it has none)."""
    for m in model.modules():
        if isinstance(m, QuantMixin):
            return m.quantizer.name
    return None


def bits_per_weight(model_or_scheme: nn.Module | str) -> float:
    """Mean bits per weight over a model's Linear/Embedding weights, or of one scheme."""
    if isinstance(model_or_scheme, str):
        return 32.0 if model_or_scheme == "none" else get_quantizer(model_or_scheme).bits_per_weight
    bits = count = 0.0
    seen: set[int] = set()
    for m in model_or_scheme.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            n = m.weight.numel()
            bits += n * (m.bits_per_weight if isinstance(m, QuantMixin) else 32.0)
            count += n
    return bits / max(count, 1.0)
