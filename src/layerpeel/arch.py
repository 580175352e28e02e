"""Where the pieces of a transformer are: an explicit table from model class to block views.

A `BlockView` names, for one block, what the solvers need: the attention norm, the attention
pattern function, the value and output projections, the MLP norm, the MLP hidden features and the
MLP output projection. `ModelView` gives the embeddings (G_0), the blocks and the head. Models not
in the table get an error naming the supported ones.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from layerpeel.errors import ConfigError
from layerpeel.models.gpt import GPT, Block


def effective_weight(linear: nn.Module) -> torch.Tensor:
    """The weight a Linear (or QuantLinear) really multiplies by: (out, in)."""
    fn: Any = getattr(linear, "quantized_weight", None)
    weight: torch.Tensor = fn() if callable(fn) else cast(torch.Tensor, linear.weight)
    return weight.detach()


def plain_linear(linear: nn.Module) -> nn.Linear:
    """A plain nn.Linear holding `linear`'s effective weights (quantized values stay quantized)."""
    w = effective_weight(linear)
    bias = getattr(linear, "bias", None)
    out = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        out.weight.copy_(w)
        if bias is not None:
            out.bias.copy_(bias.detach())
    return out.to(w.device)


def get_submodule(root: nn.Module, name: str) -> nn.Module:
    return root.get_submodule(name)


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


@dataclass
class BlockView:
    """The pieces of one block the closed-form solvers use; names are relative to the block."""

    block: nn.Module
    n_head: int  # attention heads
    head_dim: int  # width of one head
    v_name: str  # value projection (C -> H*hd)
    out_name: str  # attention output projection (H*hd -> C)
    proj_name: str  # MLP output projection (F -> C)
    attn_norm: Callable[[torch.Tensor], torch.Tensor]  # x (B,T,C) -> normalised input of attention
    patterns: Callable[[torch.Tensor], torch.Tensor]  # normalised x -> A (B,H,T,T)
    mlp_norm: Callable[[torch.Tensor], torch.Tensor]  # residual after attention -> MLP input
    mlp_hidden: Callable[[torch.Tensor], torch.Tensor]  # MLP input -> hidden features (B,T,F)
    attn: Callable[[torch.Tensor], torch.Tensor]  # attention sub-block output, input x (B,T,C)
    mlp: Callable[[torch.Tensor], torch.Tensor]  # MLP sub-block output, input = residual after attn
    attn_prefixes: tuple[str, ...] = ("ln_1.", "attn.")  # parameters of the attention sub-block
    mlp_prefixes: tuple[str, ...] = ("ln_2.", "mlp.")  # parameters of the MLP sub-block

    def part_parameters(self, part: str) -> list[nn.Parameter]:
        """Parameters a peel of `part` ("block", "attn" or "mlp") may change."""
        prefixes = {"attn": self.attn_prefixes, "mlp": self.mlp_prefixes}.get(
            part, self.attn_prefixes + self.mlp_prefixes
        )
        return [p for n, p in self.block.named_parameters() if n.startswith(prefixes)]

    def linear(self, name: str) -> nn.Linear:
        return cast(nn.Linear, get_submodule(self.block, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output on x (B,T,C): x + attn, then + mlp."""
        x1 = x + self.attn(x)
        return x1 + self.mlp(x1)


def gpt_block_view(block: nn.Module) -> BlockView:
    """`BlockView` of a `layerpeel.models.GPT` block (pre-norm, GELU MLP)."""
    assert isinstance(block, Block)
    attn, mlp = block.attn, block.mlp
    return BlockView(
        block=block,
        n_head=attn.n_head,
        head_dim=attn.q.out_features // attn.n_head,
        v_name="attn.v",
        out_name="attn.out",
        proj_name="mlp.proj",
        attn_norm=block.ln_1,
        patterns=attn.attention_weights,
        mlp_norm=block.ln_2,
        mlp_hidden=lambda h: mlp.act(mlp.fc(h)),
        attn=lambda x: block.attn(block.ln_1(x)),
        mlp=lambda x: block.mlp(block.ln_2(x)),
    )


@dataclass
class ModelView:
    """How to run a model piecewise: G_0 = embed(idx), G_l = blocks[l-1](G_{l-1}), head(G_L)."""

    model: nn.Module
    blocks: list[nn.Module]
    embed: Callable[[torch.Tensor], torch.Tensor]  # idx (B,T) -> G_0 (B,T,C)
    head: Callable[[torch.Tensor], torch.Tensor]  # G_L (B,T,C) -> logits (B,T,V)
    block_view: Callable[[nn.Module], BlockView]
    unembed_weight: Callable[[], torch.Tensor]  # (V, C) the unembedding matrix
    final_norm: nn.Module  # the norm before the unembedding

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return block(x)

    def run_from(
        self, start: int, x: torch.Tensor, replace: dict[int, nn.Module] | None = None
    ) -> torch.Tensor:
        """Logits from the residual x entering block `start` (0-based), with some blocks replaced."""
        replace = replace or {}
        for i in range(start, self.n_blocks):
            x = self.run_block(replace.get(i, self.blocks[i]), x)
        return self.head(x)

    def reference_copy(self, index: int) -> nn.Module:
        """A full-precision copy of block `index` whose Linear layers hold the effective weights."""
        block = copy.deepcopy(self.blocks[index])
        for name, module in list(block.named_modules()):
            if name and hasattr(module, "quantized_weight"):
                set_submodule(block, name, plain_linear(module))
        return block


def _gpt_view(model: nn.Module) -> ModelView:
    assert isinstance(model, GPT)
    return ModelView(
        model=model,
        blocks=list(model.blocks),
        embed=model.embed,
        head=model.unembed,
        block_view=gpt_block_view,
        unembed_weight=lambda: effective_weight(model.head),
        final_norm=model.ln_f,
    )


# The table of supported architectures: model class name -> view builder.
ARCHITECTURES: dict[str, Callable[[nn.Module], ModelView]] = {
    "GPT": _gpt_view,
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
