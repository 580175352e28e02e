"""Views of Hugging Face causal language models: one `Family` row per layout, no guessing.

`FAMILIES` says, for each supported layout, where the blocks, norms, attention and MLP pieces are:
fused QKV in GPT-2's `Conv1D` and GPT-NeoX's per-head interleaved `query_key_value`, rotary
embeddings (full or partial), grouped-query attention, RMSNorm or LayerNorm, gated MLPs (SwiGLU,
GeGLU), and parallel attention + MLP (GPT-NeoX, Phi). `arch.ARCHITECTURES` maps each model class
to its family. A block is always run exactly as the model runs it: the extra arguments the model
passes its first block (causal mask, rotary cos/sin, position ids) are recorded once per sequence
length and replayed, so a block substituted with its own weights reproduces the logits exactly.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from layerpeel.arch.views import BlockView, ModelView, WeightSlot, get_submodule
from layerpeel.errors import ConfigError


@dataclass(frozen=True)
class Family:
    """Where one Hugging Face layout keeps its pieces; block-relative names unless noted."""

    layers: str  # the ModuleList of blocks, from the model root
    final_norm: str  # the norm before the head, from the model root
    head: tuple[str, ...]  # modules after the final norm, from the root ("?name": may be absent)
    attn: str  # the attention module
    attn_norm: str  # norm before attention
    mlp_norm: str  # norm before the MLP (Phi: the same norm as attention)
    qkv: str  # "separate" (q, k, v Linears), "conv1d" (GPT-2 c_attn), "neox" (per-head q|k|v)
    q: str  # query projection, or the fused QKV module
    k: str  # key projection, or the fused QKV module
    v: str  # value projection, or the fused QKV module
    out: str  # attention output projection
    mlp_in: tuple[str, ...]  # (gate, up) for a gated MLP, (fc,) for a plain one
    proj: str  # MLP output projection
    act: str  # the MLP activation module
    attn_prefixes: tuple[str, ...]  # parameters of the attention sub-block
    mlp_prefixes: tuple[str, ...]  # parameters of the MLP sub-block
    parallel: str | bool = False  # True, or the config attribute that says so
    conv1d: bool = False  # Linear maps are Conv1D (weight stored (in, out))
    query_prescaled: bool = False  # the query projection output is already scaled (OPT)


FAMILIES: dict[str, Family] = {
    # GPT-2: fused q|k|v in one Conv1D, learned positions, LayerNorm, GELU MLP.
    "gpt2": Family(
        layers="transformer.h",
        final_norm="transformer.ln_f",
        head=("lm_head",),
        attn="attn",
        attn_norm="ln_1",
        mlp_norm="ln_2",
        qkv="conv1d",
        q="attn.c_attn",
        k="attn.c_attn",
        v="attn.c_attn",
        out="attn.c_proj",
        mlp_in=("mlp.c_fc",),
        proj="mlp.c_proj",
        act="mlp.act",
        attn_prefixes=("ln_1.", "attn."),
        mlp_prefixes=("ln_2.", "mlp."),
        conv1d=True,
    ),
    # Llama, Mistral, Qwen2, Gemma: rotary, grouped-query attention, RMSNorm, gated MLP.
    "llama": Family(
        layers="model.layers",
        final_norm="model.norm",
        head=("lm_head",),
        attn="self_attn",
        attn_norm="input_layernorm",
        mlp_norm="post_attention_layernorm",
        qkv="separate",
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        out="self_attn.o_proj",
        mlp_in=("mlp.gate_proj", "mlp.up_proj"),
        proj="mlp.down_proj",
        act="mlp.act_fn",
        attn_prefixes=("input_layernorm.", "self_attn."),
        mlp_prefixes=("post_attention_layernorm.", "mlp."),
    ),
    # GPT-NeoX (Pythia): per-head interleaved q|k|v, partial rotary, parallel residual.
    "gpt_neox": Family(
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        head=("lm_head",),
        attn="attention",
        attn_norm="input_layernorm",
        mlp_norm="post_attention_layernorm",
        qkv="neox",
        q="attention.query_key_value",
        k="attention.query_key_value",
        v="attention.query_key_value",
        out="attention.dense",
        mlp_in=("mlp.dense_h_to_4h",),
        proj="mlp.dense_4h_to_h",
        act="mlp.act",
        attn_prefixes=("input_layernorm.", "attention."),
        mlp_prefixes=("post_attention_layernorm.", "mlp."),
        parallel="use_parallel_residual",
    ),
    # OPT: learned positions, pre-norm (do_layer_norm_before), query scaled in its projection.
    "opt": Family(
        layers="model.decoder.layers",
        final_norm="model.decoder.final_layer_norm",
        head=("?model.decoder.project_out", "lm_head"),
        attn="self_attn",
        attn_norm="self_attn_layer_norm",
        mlp_norm="final_layer_norm",
        qkv="separate",
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        out="self_attn.out_proj",
        mlp_in=("fc1",),
        proj="fc2",
        act="activation_fn",
        attn_prefixes=("self_attn_layer_norm.", "self_attn."),
        mlp_prefixes=("final_layer_norm.", "fc1.", "fc2."),
        query_prescaled=True,
    ),
    # Phi (1, 1.5, 2): one LayerNorm shared by parallel attention and MLP, partial rotary.
    "phi": Family(
        layers="model.layers",
        final_norm="model.final_layernorm",
        head=("lm_head",),
        attn="self_attn",
        attn_norm="input_layernorm",
        mlp_norm="input_layernorm",
        qkv="separate",
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        out="self_attn.dense",
        mlp_in=("mlp.fc1",),
        proj="mlp.fc2",
        act="mlp.activation_fn",
        attn_prefixes=("input_layernorm.", "self_attn."),
        mlp_prefixes=("mlp.",),
        parallel=True,
    ),
}


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the first block's inputs are recorded."""


def _optional(root: nn.Module, name: str) -> nn.Module | None:
    """The submodule `name`, or None when it is absent or set to None."""
    try:
        return root.get_submodule(name)
    except AttributeError:
        return None


class _BlockCalls:
    """Records, per sequence length, the arguments the model passes its first block."""

    def __init__(self, model: nn.Module, first: nn.Module) -> None:
        self.model, self.first = model, first
        self.cache: dict[tuple[int, torch.dtype], tuple[tuple, dict[str, Any]]] = {}

    def first_call(self, idx: torch.Tensor) -> tuple[torch.Tensor, tuple, dict[str, Any]]:
        """G_0 (B,T,C) and the other arguments of the model's call of block 0 on tokens idx (B,T)."""
        seen: list[tuple[tuple, dict[str, Any]]] = []

        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            seen.append((args, kwargs))
            raise _Stop

        handle = self.first.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            self.model(input_ids=idx, use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not seen:
            raise ConfigError("the model never called its first block")
        args, kwargs = seen[0]
        x = args[0] if args else kwargs.pop("hidden_states")
        return x, tuple(args[1:]), dict(kwargs)

    def arguments(self, x: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
        """The extra block arguments for a residual x (B,T,C); recorded with a batch of one."""
        key = (int(x.shape[1]), x.dtype)
        if key not in self.cache:
            idx = torch.zeros(1, key[0], dtype=torch.long, device=x.device)
            _, args, kwargs = self.first_call(idx)
            self.cache[key] = (args, kwargs)
        return self.cache[key]

    def run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        args, kwargs = self.arguments(x)
        out = block(x, *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out


def _is_parallel(fam: Family, config: Any) -> bool:
    if isinstance(fam.parallel, bool):
        return fam.parallel
    return bool(getattr(config, fam.parallel))


def _window(config: Any, layer: int) -> int | None:
    """The sliding-window size of layer `layer`, or None for full causal attention."""
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if types is not None:
        return window if types[layer] == "sliding_attention" else None
    return window


def _rotary(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, cos, sin):
    """Rotary embedding on the first cos.shape[-1] dims of each head, by the model's own function."""
    rot = cos.shape[-1]
    fn = sys.modules[type(attn).__module__].apply_rotary_pos_emb  # type: ignore[attr-defined]
    q_rot, k_rot = fn(q[..., :rot], k[..., :rot], cos, sin)
    return torch.cat([q_rot, q[..., rot:]], -1), torch.cat([k_rot, k[..., rot:]], -1)


class _HFBlocks:
    """Builds `BlockView`s of one model's blocks (trained or reference copies)."""

    def __init__(self, model: nn.Module, fam: Family, calls: _BlockCalls) -> None:
        self.model, self.fam, self.calls = model, fam, calls
        self.config = cast(Any, model).config
        self.parallel = _is_parallel(fam, self.config)

    def slots(self, block: nn.Module, h: int, h_kv: int, hd: int) -> tuple[WeightSlot, ...]:
        """(query, key, value) slots of a block, each in head-major order."""
        fam = self.fam
        if fam.qkv == "separate":
            return tuple(WeightSlot(get_submodule(block, n)) for n in (fam.q, fam.k, fam.v))
        fused = get_submodule(block, fam.q)
        if fam.qkv == "conv1d":
            c = h * hd
            return tuple(
                WeightSlot(fused, torch.arange(i * c, (i + 1) * c), transposed=True)
                for i in range(3)
            )
        # neox: output (h, 3, hd) flattened; part i of head j at j*3*hd + i*hd + [0, hd)
        base = torch.arange(h)[:, None] * 3 * hd + torch.arange(hd)[None, :]
        return tuple(WeightSlot(fused, (base + i * hd).reshape(-1)) for i in range(3))

    def view(self, block: nn.Module) -> BlockView:
        fam, config = self.fam, self.config
        attn: Any = get_submodule(block, fam.attn)
        h = int(getattr(config, "num_attention_heads", 0) or config.n_head)
        h_kv = int(getattr(config, "num_key_value_heads", None) or h)
        hd = int(getattr(attn, "head_dim", 0) or getattr(attn, "head_size", 0) or 0)
        if not hd:
            hd = int(config.hidden_size if hasattr(config, "hidden_size") else config.n_embd) // h
        q_slot, k_slot, v_slot = self.slots(block, h, h_kv, hd)
        out_slot = WeightSlot(get_submodule(block, fam.out), transposed=fam.conv1d)
        proj_slot = WeightSlot(get_submodule(block, fam.proj), transposed=fam.conv1d)
        attn_norm = get_submodule(block, fam.attn_norm)
        mlp_norm = get_submodule(block, fam.mlp_norm)
        act = get_submodule(block, fam.act)
        mlp_in = [get_submodule(block, n) for n in fam.mlp_in]
        proj = get_submodule(block, fam.proj)
        out_mod = get_submodule(block, fam.out)
        layer = int(getattr(attn, "layer_idx", 0) or 0)
        window = _window(config, layer)
        scale = 1.0 if fam.query_prescaled else float(attn.scaling)
        rep = h // h_kv
        calls = self.calls

        def split(t: torch.Tensor, heads: int) -> torch.Tensor:  # (B,T,heads*hd) -> (B,heads,T,hd)
            b, t_, _ = t.shape
            return t.view(b, t_, heads, hd).transpose(1, 2)

        def patterns(xn: torch.Tensor) -> torch.Tensor:  # (B,T,C) -> (B,H,T,T)
            q, k = split(q_slot(xn), h), split(k_slot(xn), h_kv)
            if fam.query_prescaled:
                q = q * float(attn.scaling)
            if getattr(attn, "qk_layernorm", False):
                q, k = attn.q_layernorm(q), attn.k_layernorm(k)
            pos = calls.arguments(xn)[1].get("position_embeddings")
            if pos is not None:
                q, k = _rotary(attn, q, k, *pos)
            k = k.repeat_interleave(rep, dim=1)
            scores = (q @ k.transpose(-2, -1)).float() * scale  # (B,H,T,T)
            t = xn.shape[1]
            i = torch.arange(t, device=xn.device)
            allowed = i[None, :] <= i[:, None]
            if window is not None:
                allowed &= i[None, :] > i[:, None] - window
            return scores.masked_fill(~allowed, float("-inf")).softmax(-1).to(xn.dtype)

        def attention(x: torch.Tensor) -> torch.Tensor:  # block input (B,T,C) -> (B,T,C)
            xn = attn_norm(x)
            vals = split(v_slot(xn), h_kv).repeat_interleave(rep, dim=1)  # (B,H,T,hd)
            mixed = (patterns(xn) @ vals).transpose(1, 2).reshape(x.shape[0], x.shape[1], h * hd)
            return out_mod(mixed)

        def mlp_hidden(z: torch.Tensor) -> torch.Tensor:  # MLP input (B,T,C) -> (B,T,F)
            if len(mlp_in) == 2:
                return act(mlp_in[0](z)) * mlp_in[1](z)
            return act(mlp_in[0](z))

        return BlockView(
            block=block,
            n_head=h,
            head_dim=hd,
            v_name=fam.v,
            out_name=fam.out,
            proj_name=fam.proj,
            attn_norm=attn_norm,
            patterns=patterns,
            mlp_norm=mlp_norm,
            mlp_hidden=mlp_hidden,
            attn=attention,
            mlp=lambda z: proj(mlp_hidden(mlp_norm(z))),
            attn_prefixes=fam.attn_prefixes,
            mlp_prefixes=fam.mlp_prefixes,
            n_kv_head=h_kv,
            parallel=self.parallel,
            value_slot=v_slot,
            out_slot=out_slot,
            proj_slot=proj_slot,
        )


def _check_supported(model: nn.Module, family: str) -> None:
    config = cast(Any, model).config
    if family == "opt" and not getattr(config, "do_layer_norm_before", True):
        raise ConfigError(
            "OPT models with post-norm blocks (do_layer_norm_before=False) are not supported"
        )
    if family == "phi" and getattr(config, "qk_layernorm", False):
        # q/k norms are applied per head after the projection; handled in `patterns`
        pass
    softcap = getattr(config, "final_logit_softcapping", None) or getattr(
        config, "attn_logit_softcapping", None
    )
    if softcap:
        raise ConfigError(f"{type(model).__name__} with logit soft-capping is not supported")


def hf_view(model: nn.Module, family: str) -> ModelView:
    """The `ModelView` of a Hugging Face causal LM of layout `family` (a key of `FAMILIES`)."""
    fam = FAMILIES[family]
    _check_supported(model, family)
    blocks = list(cast(nn.ModuleList, model.get_submodule(fam.layers)))
    if not blocks:
        raise ConfigError(f"{type(model).__name__} has no blocks")
    calls = _BlockCalls(model, blocks[0])
    norm = _optional(model, fam.final_norm) or nn.Identity()  # OPT may drop its final norm
    head_mods = []
    for name in fam.head:
        module = _optional(model, name.lstrip("?"))
        if module is None and not name.startswith("?"):
            raise ConfigError(f"{type(model).__name__} has no module {name!r}")
        if module is not None:
            head_mods.append(module)

    def head(x: torch.Tensor) -> torch.Tensor:  # (B,T,C) -> (B,T,V)
        x = norm(x)
        for m in head_mods:
            x = m(x)
        return x

    def unembed_weight() -> torch.Tensor:  # (V, C): the product of the head's linear maps
        w = cast(torch.Tensor, head_mods[-1].weight).detach()
        for m in reversed(head_mods[:-1]):
            w = w @ cast(torch.Tensor, m.weight).detach()
        return w

    return ModelView(
        model=model,
        blocks=blocks,
        embed=lambda idx: calls.first_call(idx)[0],
        head=head,
        block_view=_HFBlocks(model, fam, calls).view,
        unembed_weight=unembed_weight,
        final_norm=norm,
        block_runner=calls.run,
        caller=lambda idx: model(input_ids=idx, use_cache=False),
    )
