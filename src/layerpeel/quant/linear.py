"""QuantLinear and QuantEmbedding: latent full-precision weights, quantized forward, STE backward.

A quantized layer keeps its latent weight under the usual name `weight` (and its `bias`), so a
quantized model has the state_dict keys of the plain one, plus scales where a scheme learns them:
`quant_scale.value` on the root model for a shared (binary-global) scale, `<layer>.weight_scale`
for a learnable per-layer scale. Every forward uses Q(weight) = scale * codes(weight); the
backward is the straight-through estimator: d loss / d weight = d loss / d Q(weight) (identity),
and a learnable scale gets its true gradient, sum over its entries of (d loss / d Q) * codes.
Scales that are recomputed from the latent weight (binary-channel, ternary, int-k) are treated as
constants in the backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from layerpeel.errors import ConfigError
from layerpeel.quant.schemes import Quantizer, get_quantizer


class GlobalScale(nn.Module):
    """The one learnable scale (lambda) shared by every quantized layer of a binary-global model.

    `quantize_` registers it once, on the root model, as `quant_scale` (state_dict key
    `quant_scale.value`); the layers hold plain references that are not registered as submodules,
    so the tensor is stored exactly once and safetensors accepts the state_dict.
    """

    def __init__(
        self,
        value: float | torch.Tensor = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        init = torch.as_tensor(value, device=device, dtype=dtype).detach().clone().reshape(())
        self.value = nn.Parameter(init)  # ()

    def extra_repr(self) -> str:
        if self.value.is_meta:
            return "value=<meta>"
        return f"value={self.value.item():.6g}"


def straight_through(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward exactly `q`, backward identity to `w`: the straight-through estimator.

    `w - w.detach()` is exactly zero, so the forward values are q bit for bit; gradients that
    reach q also flow on into q's own graph (a learnable scale).
    """
    if not (torch.is_grad_enabled() and w.requires_grad):
        return q
    return q + (w - w.detach())


class QuantWeightMixin:
    """What QuantLinear and QuantEmbedding share: the quantizer, the scale and Q(weight)."""

    quantizer: Quantizer
    weight: torch.Tensor  # latent full-precision weight (out, in)
    _global_scale: GlobalScale | None

    def _setup_quant(self, quantizer: Quantizer | str, global_scale: GlobalScale | None) -> None:
        q = get_quantizer(quantizer) if isinstance(quantizer, str) else quantizer
        self.quantizer = q
        object.__setattr__(self, "_global_scale", None)
        if q.shared_scale:
            if global_scale is None:
                raise ConfigError(
                    f"quant scheme {q.name!r} shares one scale across layers: pass the model's "
                    "GlobalScale (or quantize the model with quantize_)"
                )
            self.bind_global_scale(global_scale)
        elif global_scale is not None:
            raise ConfigError(f"quant scheme {q.name!r} has no shared scale")
        self.reset_scale_()

    @property
    def global_scale(self) -> GlobalScale | None:
        """The model-wide `GlobalScale` this layer uses (None unless the scheme shares one)."""
        return self._global_scale

    def bind_global_scale(self, global_scale: GlobalScale) -> None:
        """Use `global_scale` as this layer's scale, without registering it as a submodule."""
        if not self.quantizer.shared_scale:
            raise ConfigError(f"quant scheme {self.quantizer.name!r} has no shared scale")
        object.__setattr__(self, "_global_scale", global_scale)

    @torch.no_grad()
    def reset_scale_(self) -> None:
        """Set this layer's own learnable scale (`weight_scale`) from its latent weight.

        A no-op for schemes whose scale is recomputed every forward or shared by the model.
        """
        q = self.quantizer
        if not q.learnable_scale or q.shared_scale:
            return
        value = q.init_scale(self.weight.detach()).reshape(-1 if q.per_channel else ())
        own = getattr(self, "weight_scale", None)
        if isinstance(own, nn.Parameter) and own.shape == value.shape and not own.is_meta:
            own.copy_(value)
        else:
            self.weight_scale = nn.Parameter(value.clone())  # (out,) or ()

    def current_scale(self) -> torch.Tensor:
        """The scale in effect, broadcastable against the weight: `()` or `(out, 1)`.

        Learnable scales (the shared lambda, a `weight_scale`) carry their gradient; scales
        recomputed from the latent weight are detached.
        """
        if self._global_scale is not None:
            return self._global_scale.value
        own = getattr(self, "weight_scale", None)
        if isinstance(own, torch.Tensor):
            return own.view(-1, 1) if self.quantizer.per_channel else own
        return self.quantizer.init_scale(self.weight.detach())

    def codes(self) -> torch.Tensor:
        """The integer codes of the latent weight (out, in), in the weight's dtype, no gradient."""
        return self.quantizer.codes(self.weight.detach(), self.current_scale().detach())

    def quantized_weight(self) -> torch.Tensor:
        """The weight the layer really uses, Q(weight) = scale * codes (out, in), with STE grads."""
        scale = self.current_scale()
        q = scale * self.quantizer.codes(self.weight.detach(), scale.detach())  # (out, in)
        return straight_through(self.weight, q)

    @property
    def bits_per_weight(self) -> float:
        """Bits of one weight's code under this layer's scheme (scales not included)."""
        return self.quantizer.bits_per_weight

    def _quant_repr(self) -> str:
        return f"scheme={self.quantizer.name}"


class QuantLinear(QuantWeightMixin, nn.Linear):
    """An nn.Linear whose forward uses Q(weight); `weight` stays the latent full precision.

    Build one from an existing layer with `QuantLinear.from_linear`, or a whole model with
    `quantize_`. For a shared-scale scheme (binary-global) pass the model's `GlobalScale`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        quantizer: Quantizer | str,
        global_scale: GlobalScale | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._setup_quant(quantizer, global_scale)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        quantizer: Quantizer | str,
        global_scale: GlobalScale | None = None,
    ) -> QuantLinear:
        """A QuantLinear that reuses `linear`'s weight and bias Parameters (nothing is copied)."""
        new = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            quantizer=quantizer,
            global_scale=global_scale,
            device="meta",
        )
        new.weight = linear.weight
        new.bias = linear.bias
        new.reset_scale_()  # a learnable own scale from the real weight, not the meta one
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._quant_repr()}"


class QuantEmbedding(QuantWeightMixin, nn.Embedding):
    """An nn.Embedding whose lookups read the quantized table; one scale per row when per channel.

    With `max_norm` set, rows are renormalised on the quantized table of each call (the latent
    table is left untouched).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        quantizer: Quantizer | str,
        global_scale: GlobalScale | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, device=device, dtype=dtype, **kwargs)
        self._setup_quant(quantizer, global_scale)

    @classmethod
    def from_embedding(
        cls,
        emb: nn.Embedding,
        quantizer: Quantizer | str,
        global_scale: GlobalScale | None = None,
    ) -> QuantEmbedding:
        """A QuantEmbedding that reuses `emb`'s weight Parameter and options (nothing is copied)."""
        new = cls(
            emb.num_embeddings,
            emb.embedding_dim,
            quantizer=quantizer,
            global_scale=global_scale,
            device="meta",
            padding_idx=emb.padding_idx,
            max_norm=emb.max_norm,
            norm_type=emb.norm_type,
            scale_grad_by_freq=emb.scale_grad_by_freq,
            sparse=emb.sparse,
        )
        new.weight = emb.weight
        new.reset_scale_()
        new.train(emb.training)
        return new

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (...) -> (..., dim)
        return F.embedding(
            idx,
            self.quantized_weight(),
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._quant_repr()}"


QUANT_LAYERS = (QuantLinear, QuantEmbedding)  # every layer class quantize_ swaps in
