"""`quantize_` and `dequantize_`: swap a model's Linear (and Embedding) layers in place, and back.

Which layers: every `nn.Linear` whose name `filter_fn(module, name)` accepts (by default all but
the unembedding head, `head` / `lm_head`, unless `QuantConfig.quantize_head`), plus the
`nn.Embedding` tables when `QuantConfig.quantize_embeddings`. Linear layers inside
`nn.MultiheadAttention` are skipped: it reads their weights directly, not through forward.

Tied weights: a tensor shared by several layers (GPT ties `head.weight` to `wte.weight`) is one
weight, so it is quantized everywhere it is used or nowhere. When the selection picks one of its
layers, every layer holding that tensor is quantized too, with a warning naming the ones added
(so `quantize_embeddings=True` on a tied GPT quantizes the head as well). The tie survives: the
quantized layers share the latent Parameter (and a learnable per-layer scale, if any), so they
use identical quantized values and checkpoints keep storing the tensor once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import torch
from torch import nn

from layerpeel.config import ConfigBase
from layerpeel.errors import ConfigError
from layerpeel.quant.linear import QUANT_LAYERS, GlobalScale, QuantEmbedding, QuantLinear
from layerpeel.quant.schemes import FULL_PRECISION, SCHEMES, get_quantizer, known_schemes

log = logging.getLogger(__name__)

HEAD_NAMES = ("head", "lm_head")  # last name component of an unembedding head
GLOBAL_SCALE_NAME = "quant_scale"  # attribute of the root model holding a shared GlobalScale

FilterFn = Callable[[nn.Module, str], bool]


@dataclasses.dataclass
class QuantConfig(ConfigBase):
    """Which weights to quantize and how; recorded in every checkpoint next to the model config."""

    scheme: str = FULL_PRECISION  # none, binary-global, binary-channel, ternary, int2/3/4/8
    quantize_embeddings: bool = False  # also quantize nn.Embedding tables (token/pos embeddings)
    quantize_head: bool = False  # also quantize the unembedding head ("head" / "lm_head")

    def validate(self) -> None:
        if not isinstance(self.scheme, str) or (
            self.scheme != FULL_PRECISION and self.scheme not in SCHEMES
        ):
            raise ConfigError(
                f"unknown quant scheme {self.scheme!r}; known: {', '.join(known_schemes())}"
            )
        for name in ("quantize_embeddings", "quantize_head"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"QuantConfig.{name} must be true or false")

    @property
    def enabled(self) -> bool:
        """Whether this config quantizes anything (scheme is not "none")."""
        return self.scheme != FULL_PRECISION


def default_filter(cfg: QuantConfig) -> FilterFn:
    """Every Linear and (already switched on by `quantize_embeddings`) Embedding but the head."""

    def keep(module: nn.Module, name: str) -> bool:
        if name.rsplit(".", 1)[-1] in HEAD_NAMES:
            return cfg.quantize_head
        return True

    return keep


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


WeightLayer = nn.Linear | nn.Embedding
LayerTable = dict[int, tuple[WeightLayer, list[str]]]  # module id -> (module, all its names)


def _weight_layers(model: nn.Module) -> LayerTable:
    """Linear and Embedding layers by id, each with every name it is reachable under."""
    skip: set[int] = set()
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            skip.update(id(c) for c in m.modules() if c is not m)
    found: LayerTable = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if name and isinstance(m, (nn.Linear, nn.Embedding)) and id(m) not in skip:
            found.setdefault(id(m), (m, []))[1].append(name)
    return found


def is_quantized(model: nn.Module) -> bool:
    """Whether `model` holds any quantized layer."""
    return any(isinstance(m, QUANT_LAYERS) for m in model.modules())


def model_scheme(model: nn.Module) -> str:
    """The quant scheme of a model's quantized layers ("none" when it has none)."""
    for m in model.modules():
        if isinstance(m, QUANT_LAYERS):
            return m.quantizer.name
    return FULL_PRECISION


def global_scale(model: nn.Module) -> GlobalScale | None:
    """The model's shared `GlobalScale` (binary-global), or None."""
    gs = getattr(model, GLOBAL_SCALE_NAME, None)
    return gs if isinstance(gs, GlobalScale) else None


@torch.no_grad()
def quantize_(model: nn.Module, cfg: QuantConfig, filter_fn: FilterFn | None = None) -> nn.Module:
    """Swap the chosen layers of `model` for quantized ones, in place; returns `model`.

    `filter_fn(module, fully_qualified_name)` decides for each candidate (every Linear, and every
    Embedding when `cfg.quantize_embeddings`); the default skips the head unless
    `cfg.quantize_head`. Latent weights and biases are the same Parameter objects as before, so
    an optimizer built earlier still holds them. For a shared-scale scheme (binary-global) one
    `GlobalScale`, initialised to mean |W| over all quantized weights (tied tensors counted
    once), is registered as `model.quant_scale`. Hooks on replaced layers are not carried over,
    and the root module itself is never replaced. scheme "none" returns the model unchanged.
    """
    cfg.validate()
    if not cfg.enabled:
        return model
    if is_quantized(model) or global_scale(model) is not None:
        raise ConfigError(
            f"model is already quantized ({model_scheme(model)}); dequantize_ it first"
        )
    quantizer = get_quantizer(cfg.scheme)
    keep = filter_fn or default_filter(cfg)
    layers = _weight_layers(model)
    chosen = {
        key
        for key, (m, names) in layers.items()
        if (isinstance(m, nn.Linear) or cfg.quantize_embeddings) and keep(m, names[0])
    }
    _extend_to_tied(layers, chosen)
    if not chosen:
        log.warning("quantize_: no layer matched; the model is unchanged")
        return model
    order = [key for key in layers if key in chosen]  # model order, for reproducible init
    shared: GlobalScale | None = None
    if quantizer.shared_scale:
        shared = _init_global_scale([layers[key][0].weight for key in order])
        model.add_module(GLOBAL_SCALE_NAME, shared)
    own_scales: dict[int, nn.Parameter] = {}  # latent weight id -> learnable per-layer scale
    for key in order:
        m, names = layers[key]
        new: QuantLinear | QuantEmbedding
        if isinstance(m, nn.Linear):
            new = QuantLinear.from_linear(m, quantizer, shared)
        else:
            assert isinstance(m, nn.Embedding)
            new = QuantEmbedding.from_embedding(m, quantizer, shared)
        own = getattr(new, "weight_scale", None)
        if isinstance(own, nn.Parameter):
            new.weight_scale = own_scales.setdefault(id(m.weight), own)
        for name in names:
            _set_submodule(model, name, new)
    log.info("quantize_: %d layer(s) quantized with %s", len(order), quantizer.name)
    return model


def _extend_to_tied(layers: LayerTable, chosen: set[int]) -> None:
    """Add to `chosen` every layer whose weight tensor is shared with a chosen layer."""
    by_weight: dict[int, list[int]] = {}
    for key, (m, _) in layers.items():
        by_weight.setdefault(id(m.weight), []).append(key)
    added = []
    for group in by_weight.values():
        if len(group) > 1 and any(k in chosen for k in group):
            for k in group:
                if k not in chosen:
                    chosen.add(k)
                    added.append(layers[k][1][0])
    if added:
        log.warning(
            "quantize_: also quantizing %s, whose weight is tied to a quantized layer",
            ", ".join(added),
        )


def _init_global_scale(weights: list[torch.Tensor]) -> GlobalScale:
    """A GlobalScale set to mean |W| over `weights` (each distinct tensor counted once)."""
    unique = list({id(w): w for w in weights}.values())
    total = sum(w.detach().abs().double().sum() for w in unique)
    count = sum(w.numel() for w in unique)
    first = unique[0]
    value = torch.as_tensor(total / count, dtype=torch.float64)
    return GlobalScale(value.to(first.dtype), device=first.device, dtype=first.dtype)


@torch.no_grad()
def dequantize_(model: nn.Module) -> nn.Module:
    """Replace quantized layers by plain ones holding their quantized values, in place.

    The new weights are exactly Q(weight) (so outputs do not change); biases are kept as they
    are, ties stay tied, and a shared `quant_scale` is removed from the model.
    """
    new_weights: dict[int, nn.Parameter] = {}  # latent weight id -> its quantized values
    replaced: dict[int, nn.Module] = {}  # quantized layer id -> its plain replacement
    for name, m in list(model.named_modules(remove_duplicate=False)):
        if not isinstance(m, QUANT_LAYERS):
            continue
        if id(m) in replaced:
            _set_submodule(model, name, replaced[id(m)])
            continue
        w = m.weight
        if id(w) not in new_weights:
            q = m.quantized_weight().detach().clone()
            new_weights[id(w)] = nn.Parameter(q, requires_grad=w.requires_grad)
        plain: nn.Module
        if isinstance(m, QuantLinear):
            plain = nn.Linear(m.in_features, m.out_features, bias=False, device="meta")
            plain.bias = m.bias
        else:
            plain = nn.Embedding(
                m.num_embeddings,
                m.embedding_dim,
                padding_idx=m.padding_idx,
                max_norm=m.max_norm,
                norm_type=m.norm_type,
                scale_grad_by_freq=m.scale_grad_by_freq,
                sparse=m.sparse,
                device="meta",
            )
        plain.weight = new_weights[id(w)]
        plain.train(m.training)
        replaced[id(m)] = plain
        _set_submodule(model, name, plain)
    if global_scale(model) is not None:
        delattr(model, GLOBAL_SCALE_NAME)
    return model
