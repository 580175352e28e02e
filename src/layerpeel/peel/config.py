"""`PeelConfig`: every setting of a peel analysis, recorded in every report."""

from __future__ import annotations

import dataclasses

from layerpeel.config import ConfigBase
from layerpeel.errors import ConfigError
from layerpeel.peel.scoring import SCORE_DTYPES, Thresholds
from layerpeel.solvers import SOLVERS


@dataclasses.dataclass
class PeelConfig(ConfigBase):
    """What to compute and how; recorded in every report."""

    solver: str = "closed"  # P1 solver: "closed" (target propagation) or "adam"
    parts: tuple[str, ...] = ("block", "attn", "mlp")  # P1 parts per block
    blocks: tuple[int, ...] | None = None  # P1 blocks (0-based); None = all
    ladder: bool = True  # compute P2
    cascade: bool = True  # compute P3
    max_anchors: int | None = None  # P3 subset size cap; None = all for L <= 8, else 2
    cascade_target: str = "preimage"  # P3 final target: "preimage" or "trained"
    red: float = 0.02  # a gap is red when its interval's lower end exceeds this (nats/token)
    yellow: float = 0.005  # a gap is yellow when it exceeds this (nats/token)
    work: bool = True  # score each whole block's removal: its work, and whether it is idle
    idle: float = 0.1  # idle (red) below this fraction of the other blocks' median work; 0: off
    etas: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3)  # target-propagation steps, relative
    search_sequences: int = 64  # fit sequences for the eta line search
    ridge: float = 1e-3  # ridge of closed-form solves, relative to feature energy (see docs)
    adam_steps: int = 200  # steps of the Adam solver
    adam_lr: float = 1e-3  # learning rate of the Adam solver
    n_boot: int = 1000  # bootstrap resamples
    batch: int = 16  # sequences per forward batch
    score_dtype: str = "float32"  # blocks' matrix products when scoring tails: float32 or bfloat16
    budget_mb: float = 2048  # memory budget for cached activations (MiB)
    seed: int = 0  # seed of bootstrap and Adam batches
    attribute: bool = False  # re-check the reds after the first red block with it fixed

    def validate(self) -> None:
        if self.solver not in SOLVERS:
            raise ConfigError(f"unknown solver {self.solver!r}; known: {', '.join(SOLVERS)}")
        bad = set(self.parts) - {"block", "attn", "mlp"}
        if bad:
            raise ConfigError(f"unknown part(s) {sorted(bad)}; known: block, attn, mlp")
        if self.cascade_target not in ("preimage", "trained"):
            raise ConfigError("cascade_target must be 'preimage' or 'trained'")
        if not self.budget_mb > 0:
            raise ConfigError(f"the memory budget must be positive, got {self.budget_mb} MiB")
        if self.search_sequences < 1 or not self.etas:
            raise ConfigError("the eta line search needs at least one step and one sequence")
        if self.score_dtype not in SCORE_DTYPES:
            raise ConfigError(f"score_dtype must be one of {', '.join(SCORE_DTYPES)}")
        if not self.idle >= 0:
            raise ConfigError(f"idle must be a fraction >= 0, got {self.idle}")
        if self.batch < 1 or self.n_boot < 1:
            raise ConfigError("batch and n_boot must be positive")

    def thresholds(self) -> Thresholds:
        """The verdict thresholds these settings name."""
        return Thresholds(red=self.red, yellow=self.yellow, idle=self.idle)
