"""layerpeel: find the under-optimized layers of transformer language models, in loss units."""

from layerpeel.errors import CheckpointError, ConfigError, DataError, LayerpeelError
from layerpeel.models import GPT, MLP, GPTConfig, MLPConfig
from layerpeel.yes import YesBounds, YesTracker, yes_bounds

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
