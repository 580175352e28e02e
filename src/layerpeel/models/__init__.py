"""Models layerpeel trains and analyses: a decoder-only GPT and the YES paper's MLP."""

from layerpeel.models.gpt import GPT, Block, CausalSelfAttention, FeedForward, GPTConfig
from layerpeel.models.mlp import MLP, MLPConfig

__all__ = ["GPT", "GPTConfig", "Block", "CausalSelfAttention", "FeedForward", "MLP", "MLPConfig"]
