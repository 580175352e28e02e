"""The fully connected network of the YES-bounds paper: L Linear layers, ReLU after all but the last."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from layerpeel.config import ConfigBase
from layerpeel.errors import ConfigError


@dataclasses.dataclass
class MLPConfig(ConfigBase):
    """Shape of an `MLP`: input width n, hidden and output width m, L layers."""

    n_in: int = 20  # input width n
    width: int = 100  # hidden and output width m (YES needs every hidden width equal to m)
    n_layers: int = 5  # number of Linear layers L
    bias: bool = True  # biases on every layer

    def validate(self) -> None:
        for name in ("n_in", "width", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"MLPConfig.{name} must be a positive integer, got {value!r}")


class MLP(nn.Module):
    """x (N, n) -> y (N, m). `hidden(x)` gives the L-1 post-ReLU hidden outputs, each (N, m)."""

    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        widths = [cfg.n_in] + [cfg.width] * cfg.n_layers
        self.layers = nn.ModuleList(
            nn.Linear(widths[i], widths[i + 1], bias=cfg.bias) for i in range(cfg.n_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x

    def hidden(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The post-ReLU outputs of layers 1..L-1 on x (N, n), each (N, m)."""
        outs = []
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
            outs.append(x)
        return outs
