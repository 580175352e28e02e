"""Tiny random Hugging Face causal LMs, one per supported architecture, built from configs."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 64


def tiny_config(arch: str, n_layer: int = 2):
    """A tiny config of `arch` (a model class name in `layerpeel.arch.table.ARCHITECTURES`)."""
    t = transformers
    common = dict(vocab_size=VOCAB, num_hidden_layers=n_layer, num_attention_heads=4)
    llama_like = dict(common, hidden_size=32, intermediate_size=48, max_position_embeddings=64)
    configs = {
        "GPT2LMHeadModel": lambda: t.GPT2Config(
            vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=n_layer, n_head=4
        ),
        "LlamaForCausalLM": lambda: t.LlamaConfig(**llama_like, num_key_value_heads=2),
        "MistralForCausalLM": lambda: t.MistralConfig(
            **llama_like, num_key_value_heads=2, sliding_window=8
        ),
        "Qwen2ForCausalLM": lambda: t.Qwen2Config(**llama_like, num_key_value_heads=1),
        "GemmaForCausalLM": lambda: t.GemmaConfig(**llama_like, num_key_value_heads=1, head_dim=8),
        "GPTNeoXForCausalLM": lambda: t.GPTNeoXConfig(
            **common,
            hidden_size=32,
            intermediate_size=64,
            rotary_pct=0.5,
            max_position_embeddings=64,
        ),
        "OPTForCausalLM": lambda: t.OPTConfig(
            **common,
            hidden_size=32,
            ffn_dim=64,
            max_position_embeddings=64,
            word_embed_proj_dim=32,
        ),
        "PhiForCausalLM": lambda: t.PhiConfig(
            **common,
            hidden_size=32,
            intermediate_size=64,
            partial_rotary_factor=0.5,
            max_position_embeddings=64,
        ),
    }
    return configs[arch]()


ARCHS = [
    "GPT2LMHeadModel",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "GemmaForCausalLM",
    "GPTNeoXForCausalLM",
    "OPTForCausalLM",
    "PhiForCausalLM",
]


def tiny_model(arch: str, seed: int = 0, attn: str = "sdpa", n_layer: int = 2, dtype=torch.float32):
    """A tiny random model of `arch` in eval mode."""
    torch.manual_seed(seed)
    cfg = tiny_config(arch, n_layer)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)
    return model.to(dtype).eval()
