"""The table of supported architectures, model class name -> view builder, and `model_view`.

Layer discovery in one place: layerpeel's own GPT (`views`) and the Hugging Face families
(`hf_views`); anything else is a clear error naming the supported classes.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from layerpeel.arch.hf_views import hf_view
from layerpeel.arch.views import ModelView, gpt_view
from layerpeel.errors import ConfigError


def _hf(family: str) -> Callable[[nn.Module], ModelView]:
    """View builder of a Hugging Face family (transformers itself is never imported here)."""

    def build(model: nn.Module) -> ModelView:
        return hf_view(model, family)

    return build


# The table of supported architectures: model class name -> view builder. The Hugging Face
# families are described piece by piece in `layerpeel.arch.hf_views.FAMILIES`.
ARCHITECTURES: dict[str, Callable[[nn.Module], ModelView]] = {
    "GPT": gpt_view,
    "GPT2LMHeadModel": _hf("gpt2"),
    "LlamaForCausalLM": _hf("llama"),
    "MistralForCausalLM": _hf("llama"),
    "Qwen2ForCausalLM": _hf("llama"),
    "GemmaForCausalLM": _hf("llama"),
    "GPTNeoXForCausalLM": _hf("gpt_neox"),
    "OPTForCausalLM": _hf("opt"),
    "PhiForCausalLM": _hf("phi"),
}


def model_view(model: nn.Module) -> ModelView:
    """The `ModelView` of a supported model; anything else is a clear error."""
    builder = ARCHITECTURES.get(type(model).__name__)
    if builder is None:
        raise ConfigError(
            f"unsupported model class {type(model).__name__}; supported: "
            + ", ".join(sorted(ARCHITECTURES))
        )
    return builder(model)
