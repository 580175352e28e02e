"""layerpeel: find the under-optimized layers of transformer language models, in loss units."""

from layerpeel.bounds import YesBounds, YesTracker, yes_bounds
from layerpeel.errors import CheckpointError, ConfigError, DataError, LayerpeelError
from layerpeel.models import GPT, MLP, GPTConfig, MLPConfig

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "GPTConfig",
    "MLP",
    "MLPConfig",
    "LayerpeelError",
    "ConfigError",
    "CheckpointError",
    "DataError",
    "YesBounds",
    "YesTracker",
    "yes_bounds",
    "__version__",
]
