"""Where the pieces of a transformer are: an explicit table from model class to block views.

A `BlockView` names, for one block, what the solvers need: the attention norm, the attention
pattern function, the value and output maps (`WeightSlot`s: a Linear, a transposed Conv1D, or rows
of a fused QKV projection), the MLP norm, the MLP hidden features and the MLP output map.
`ModelView` gives the embeddings (G_0), the blocks, how to run one block, and the head. The table
`ARCHITECTURES` lists every supported model class (layerpeel's GPT and the Hugging Face causal
LMs of `layerpeel.arch.hf_views`); models not in it get an error naming the supported ones.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

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
    out = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device)
    with torch.no_grad():
        out.weight.copy_(w)
        if bias is not None:
            out.bias.copy_(bias.detach())
    return out


def get_submodule(root: nn.Module, name: str) -> nn.Module:
    return root.get_submodule(name)


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


@dataclass
class WeightSlot:
    """A linear map x (..., in) -> x W + b (..., out) stored in (part of) one module's weight.

    `module` is an nn.Linear (weight (out_total, in)) or, with `transposed`, a Hugging Face
    Conv1D (weight (in, out_total)); `rows` picks the module outputs that belong to this map, in
    the map's own order (None = all), so one slot can be the value part of a fused QKV projection.
    """

    module: nn.Module
    rows: torch.Tensor | None = None  # long (out,): which outputs of `module`; None = all
    transposed: bool = False  # weight stored (in, out) as in Conv1D

    def _weight_io(self) -> torch.Tensor:
        """The module's whole effective weight as (in, out_total)."""
        if self.transposed:
            return cast(torch.Tensor, self.module.weight).detach()
        return effective_weight(self.module).T

    @property
    def has_bias(self) -> bool:
        return getattr(self.module, "bias", None) is not None

    @property
    def in_features(self) -> int:
        return int(self._weight_io().shape[0])

    @property
    def out_features(self) -> int:
        return int(self._weight_io().shape[1] if self.rows is None else self.rows.numel())

    def get(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """W (in, out) and b (out,) or None, detached, in the module's dtype."""
        w = self._weight_io()
        bias = getattr(self.module, "bias", None)
        b = bias.detach() if bias is not None else None
        if self.rows is not None:
            w = w[:, self.rows]
            b = b[self.rows] if b is not None else None
        return w, b

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """X (..., in) -> x W + b (..., out)."""
        w, b = self.get()
        y = x @ w.to(x.dtype)
        return y + b.to(x.dtype) if b is not None else y

    @torch.no_grad()
    def set(self, w: torch.Tensor, b: torch.Tensor | None) -> None:
        """Write W (in, out) and, if the module has a bias and b is given, b (out,)."""
        weight = cast(torch.Tensor, self.module.weight)
        cols = slice(None) if self.rows is None else self.rows
        if self.transposed:
            weight[:, cols] = w.to(weight.dtype)
        else:
            weight[cols, :] = w.T.to(weight.dtype)
        bias = getattr(self.module, "bias", None)
        if bias is not None and b is not None:
            bias[cols] = b.to(bias.dtype)


def linear_slot(block: nn.Module, name: str) -> WeightSlot:
    """The slot of a whole nn.Linear `name` inside `block`."""
    return WeightSlot(get_submodule(block, name))


@dataclass
class BlockView:
    """The pieces of one block the closed-form solvers use; names are relative to the block.

    Sequential blocks compute x1 = x + attn(x), out = x1 + mlp(x1); parallel blocks (GPT-NeoX,
    Phi) compute out = x + attn(x) + mlp(x), the MLP reading the block input.
    """

    block: nn.Module
    n_head: int  # attention (query) heads H
    head_dim: int  # width of one head
    v_name: str  # module holding the value projection (C -> H_kv*hd)
    out_name: str  # attention output projection (H*hd -> C)
    proj_name: str  # MLP output projection (F -> C)
    attn_norm: Callable[[torch.Tensor], torch.Tensor]  # x (B,T,C) -> normalised input of attention
    patterns: Callable[[torch.Tensor], torch.Tensor]  # normalised x -> A (B,H,T,T)
    mlp_norm: Callable[[torch.Tensor], torch.Tensor]  # what the MLP reads -> MLP input
    mlp_hidden: Callable[[torch.Tensor], torch.Tensor]  # MLP input -> hidden features (B,T,F)
    attn: Callable[[torch.Tensor], torch.Tensor]  # attention sub-block output, input x (B,T,C)
    mlp: Callable[[torch.Tensor], torch.Tensor]  # MLP sub-block output, input = what the MLP reads
    attn_prefixes: tuple[str, ...] = ("ln_1.", "attn.")  # parameters of the attention sub-block
    mlp_prefixes: tuple[str, ...] = ("ln_2.", "mlp.")  # parameters of the MLP sub-block
    n_kv_head: int | None = None  # key-value heads (grouped-query attention); None = n_head
    parallel: bool = False  # attention and MLP both read the block input
    value_slot: WeightSlot | None = None  # value map; None = the whole Linear `v_name`
    out_slot: WeightSlot | None = None  # output map; None = the whole Linear `out_name`
    proj_slot: WeightSlot | None = None  # MLP output map; None = the whole Linear `proj_name`

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def value(self) -> WeightSlot:
        return self.value_slot or linear_slot(self.block, self.v_name)

    @property
    def out(self) -> WeightSlot:
        return self.out_slot or linear_slot(self.block, self.out_name)

    @property
    def proj(self) -> WeightSlot:
        return self.proj_slot or linear_slot(self.block, self.proj_name)

    def mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        """What the MLP sub-block reads, given the block input x (B,T,C)."""
        return x if self.parallel else x + self.attn(x)

    def part_parameters(self, part: str) -> list[nn.Parameter]:
        """Parameters a peel of `part` ("block", "attn" or "mlp") may change."""
        prefixes = {"attn": self.attn_prefixes, "mlp": self.mlp_prefixes}.get(
            part, self.attn_prefixes + self.mlp_prefixes
        )
        return [p for n, p in self.block.named_parameters() if n.startswith(prefixes)]

    def linear(self, name: str) -> nn.Linear:
        return cast(nn.Linear, get_submodule(self.block, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output on x (B,T,C), from the sub-block functions."""
        return x + self.attn(x) + self.mlp(self.mlp_residual(x))


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
    block_runner: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None  # None: block(x)
    caller: Callable[[torch.Tensor], Any] | None = (
        None  # full forward on idx (B,T); None: model(idx)
    )

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def forward(self, idx: torch.Tensor) -> Any:
        """The model's own forward pass on tokens idx (B,T) (what `capture` records)."""
        return self.caller(idx) if self.caller is not None else self.model(idx)

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One block (trained or reference) on the residual x (B,T,C), called as the model calls it."""
        if self.block_runner is not None:
            return self.block_runner(block, x)
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


def gpt_view(model: nn.Module) -> ModelView:
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
