"""`PeelConfig`: every setting of a peel analysis, declared once, recorded in every report.

Each setting is one dataclass field with its default and its help (`setting`); the command-line
flags of `layerpeel analyze` (`add_arguments`, `from_args`) are derived from them, and the
verdict `Thresholds` (`peel.scoring`) take their defaults from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from layerpeel.config import ConfigBase
from layerpeel.errors import ConfigError

SOLVERS = ("closed", "adam")  # P1 solvers; `peel.gap.P1_SOLVERS` dispatches by these names
PARTS = ("block", "attn", "mlp")
# up to this many blocks P3 runs by default and tries every anchor subset; above it the cascade's
# singleton paths come out worse than a uniform guess and cost the most, so it is off unless asked
CASCADE_BLOCKS = 8


def setting(default: Any, text: str, **extra: Any) -> Any:
    """A field with its default and its one-line help (the command-line flag shows it)."""
    return dataclasses.field(default=default, metadata={"help": text, **extra})


@dataclasses.dataclass
class PeelConfig(ConfigBase):
    """What to compute and how; recorded in every report."""

    solver: str = setting(
        "closed", "P1 solver: closed (target propagation) or adam", choices=SOLVERS
    )
    parts: tuple[str, ...] = setting(PARTS, "P1 parts per block, of block, attn, mlp")
    blocks: tuple[int, ...] | None = setting(None, "P1 blocks, 0-based")
    ladder: bool = setting(True, "P2, the projection ladder")
    cascade: bool | None = setting(
        None,
        f"P3, the YES cascade (default: on for L <= {CASCADE_BLOCKS} blocks; on a deeper model "
        "its paths are worse than a uniform guess)",
    )
    max_anchors: int | None = setting(
        None,
        f"P3 anchor subsets up to this size (default: all for L <= {CASCADE_BLOCKS} blocks, else 2)",
    )
    cascade_target: str = setting(
        "preimage", "P3 final target: preimage or trained", choices=("preimage", "trained")
    )
    red: float = setting(0.02, "red when a gap's interval clears this (nats/token)")
    yellow: float = setting(0.005, "yellow when a gap exceeds this (nats/token)")
    work: bool = setting(True, "scoring each block's removal: its work, and whether it is idle")
    idle: float = setting(
        0.1,
        "a block is idle (red) when removing it costs less than red and less than this fraction "
        "of the other blocks' median work (0: off)",
    )
    etas: tuple[float, ...] = setting(
        (0.0, 0.01, 0.03, 0.1, 0.3), "target-propagation steps the P1 line search tries"
    )
    search_sequences: int = setting(
        64, "fit sequences of the eta line search (half fitted, half scored)"
    )
    search_stride: int = setting(
        4,
        "the eta line search scores every k-th position (the head's cost, which dominates with "
        "a large vocabulary, divided by k; the reported gaps score every position)",
    )
    ridge: float = setting(1e-3, "ridge of closed-form solves, relative to feature energy")
    adam_steps: int = setting(200, "steps of the Adam solver")
    adam_lr: float = setting(1e-3, "learning rate of the Adam solver")
    n_boot: int = setting(1000, "bootstrap resamples of held-out sequences")
    batch: int = setting(16, "sequences per forward batch")
    score_dtype: str = setting(
        "float32",
        "matrix products when scoring tails (bfloat16: faster on CPUs with bfloat16 units)",
        choices=("float32", "bfloat16"),
    )
    budget_mb: float = setting(2048, "memory budget of cached activations (MiB)")
    seed: int = setting(0, "seed of the bootstrap and the Adam batches")
    attribute: bool = setting(
        False,
        "re-check the reds after the first red block with its reference in place; those it "
        "explains turn yellow",
    )

    def cascade_on(self, n_blocks: int) -> bool:
        """Whether P3 runs on a model of `n_blocks` blocks: as asked, else up to `CASCADE_BLOCKS`."""
        return self.cascade if self.cascade is not None else n_blocks <= CASCADE_BLOCKS

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices is not None and getattr(self, f.name) not in choices:
                raise ConfigError(
                    f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}"
                )
        bad = set(self.parts) - set(PARTS)
        if bad:
            raise ConfigError(f"unknown part(s) {sorted(bad)}; known: {', '.join(PARTS)}")
        if not self.budget_mb > 0:
            raise ConfigError(f"the memory budget must be positive, got {self.budget_mb} MiB")
        if self.search_sequences < 1 or self.search_stride < 1 or not self.etas:
            raise ConfigError(
                "the eta line search needs at least one step, one sequence and a stride >= 1"
            )
        if not self.idle >= 0:
            raise ConfigError(f"idle must be a fraction >= 0, got {self.idle}")
        if self.batch < 1 or self.n_boot < 1:
            raise ConfigError("batch and n_boot must be positive")


# -- command-line flags ---------------------------------------------------------------------------


def _flag(name: str, default: Any) -> str:
    """`--name`, or `--no-name` for a setting that is on by default."""
    return f"--{'no-' if default is True else ''}{name.replace('_', '-')}"


def _kind(f: dataclasses.Field[Any]) -> Any:
    """The field's type without `None`: bool, int, float, str or a tuple type."""
    hint = typing.get_type_hints(PeelConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if isinstance(hint, types.UnionType) else hint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `PeelConfig` setting, with its help; `from_args` reads them back."""
    for f in dataclasses.fields(PeelConfig):
        kind, text = _kind(f), f.metadata["help"]
        default: Any = f.default
        flag = _flag(f.name, default)
        if kind is bool and default is None:  # chosen by the model unless asked: both flags
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, dest=f.name, help=text
            )
            continue
        if kind is bool:  # on by default: `--no-name` skips it; off: `--name` turns it on
            action = "store_false" if default else "store_true"
            shown = f"skip {text}" if default else text
            parser.add_argument(flag, action=action, dest=f.name, help=shown)
            continue
        choices = f.metadata.get("choices")
        metavar = "{" + ",".join(choices) + "}" if choices else None
        if typing.get_origin(kind) is tuple:  # comma separated, parsed by `from_args`
            shown = "all" if default is None else ",".join(str(v) for v in default)
            text = f"{text}; comma separated (default: {shown})"
        elif default is not None:
            text = f"{text} (default: {default})"
        parser.add_argument(flag, default=None, dest=f.name, metavar=metavar, help=text)


def from_args(args: argparse.Namespace) -> PeelConfig:
    """The `PeelConfig` of the flags `add_arguments` declared; bad values are `ConfigError`s."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(PeelConfig):
        kind, text, flag = _kind(f), getattr(args, f.name), _flag(f.name, f.default)
        if kind is bool:
            values[f.name] = text
        elif text is not None:
            values[f.name] = _parse(text, kind, flag)
    cfg = PeelConfig(**values)
    cfg.validate()
    return cfg


def _parse(text: str, kind: Any, flag: str) -> Any:
    """A flag's text as the setting's type: a comma-separated tuple, an int, a float or text."""
    many = typing.get_origin(kind) is tuple
    item = typing.get_args(kind)[0] if many else kind
    what = {int: "integer", float: "number"}.get(item, "value")
    try:
        if not many:
            return item(text)
        values = tuple(item(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        shape = f"comma-separated {what}s" if many else f"a {what}"
        raise ConfigError(f"{flag} must be {shape}, got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag} needs at least one value")
    return values
