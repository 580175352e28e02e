"""The typed rows of a peel report: P1 `GapRow`, P2 `LadderRow`, P3 `CascadeRow` and `Cascade`.

Their JSON is the interface for scripts; every field is documented in docs/schema.md. A field
marked optional is left out of the JSON while it is None (as reports have always been written:
a block's work only on whole-block rows, the full-precision twin only for quantized models, the
attribution fields only when asked for). Keys a row does not know are kept in `extra` and
written back, so reading and writing a report loses nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self

from layerpeel.verdict import Verdict


def optional(**metadata: Any) -> Any:
    """A field left out of the JSON while it is None (`with_`: while that other field is)."""
    return dataclasses.field(default=None, metadata={"optional": True, **metadata})


@dataclasses.dataclass
class Row:
    """Base of the rows: `to_dict` / `from_dict` by the fields, unknown keys kept in `extra`."""

    FIXED: ClassVar[dict[str, Any]] = {}  # constant keys written first (P1's "bound": "P1")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.FIXED)
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.metadata.get("optional"):
                shown_by = getattr(self, f.metadata.get("with_", f.name))
                if shown_by is None:
                    continue
            out[f.name] = _plain(value)
        out.update(getattr(self, "extra", None) or {})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k not in cls.FIXED}
        if "verdict" in known and known["verdict"] in set(Verdict):
            known["verdict"] = Verdict(known["verdict"])
        row = cls(**known)
        if extra and hasattr(row, "extra"):
            row.extra = extra
        return row


def _plain(value: Any) -> Any:
    """Plain JSON values: a verdict as its string, so a dict holds no layerpeel type."""
    if isinstance(value, Row):
        return value.to_dict()
    if isinstance(value, Verdict):
        return value.value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclasses.dataclass
class GapRow(Row):
    """P1: how much held-out CE re-optimizing one block (or sub-block) saves, with its verdict."""

    FIXED: ClassVar[dict[str, Any]] = {"bound": "P1"}

    block: int  # 0-based block index
    part: str  # "block", "attn" or "mlp"
    gap: float  # CE trained - CE with the reference, nats/token (held out)
    ci_low: float  # 95 % bootstrap interval of the gap
    ci_high: float
    verdict: Verdict  # by the gap (and, for a whole block, by its work: idle is red)
    ce_trained: float  # the trained model's held-out CE, nats/token
    ce_reference: float  # held-out CE with the reference in place of the part
    solver: str  # "closed" or "adam"
    eta: float | None  # the target-propagation step taken (None for Adam)
    moved: str  # which maps the reference re-solved ("block", "attn" or "mlp")
    quant: str | None  # the model's quantizer, None in full precision
    # whole-block rows, when the work is scored
    work: float | None = optional()  # CE without the block - CE with it
    work_ci_low: float | None = optional()
    work_ci_high: float | None = optional()
    # whole-block rows: 1 - the mean cosine of the block's input and output residual per token
    influence: float | None = optional()
    # quantized models: the same peel in full precision
    ce_reference_fp: float | None = optional()  # held-out CE with the full-precision twin
    opt_part: float | None = optional()  # the gap (what optimization left)
    quant_part: float | None = optional()  # CE reference - CE twin (what the format costs)
    time_s: float = 0.0  # solves and scoring, with a share of the block's set-up
    work_ratio: float | None = optional(with_="work")  # work over the other blocks' median
    idle: bool | None = optional()  # no measurable work next to the other blocks
    # attribution (`PeelConfig.attribute`)
    fixed_first: bool | None = optional()  # the row whose reference was put in place
    gap_given_first: float | None = optional()  # the gap again, with that reference in place
    ci_given_first: list[float] | None = optional()  # its interval
    explained_by: int | None = optional()  # the block whose fix explains this red (now yellow)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)


@dataclasses.dataclass
class LadderRow(Row):
    """P2: held-out CE when block `from_block` alone is peeled onto G_{to_block + 1}."""

    from_block: int
    to_block: int
    ce: float  # held-out CE of that network, nats/token
    ce_trained: float  # the trained model's held-out CE
    time_s: float = 0.0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)


@dataclasses.dataclass
class CascadeRow(Row):
    """P3: held-out CE of the cascade network of one anchor subset."""

    anchors: list[int]  # hidden anchors (1..L-1) the blocks are peeled onto
    ce: float  # held-out CE of that network, nats/token
    time_s: float = 0.0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)


@dataclasses.dataclass
class Cascade(Row):
    """P3 summary: YES-0..YES-k as running minima, their best subsets, the whole-model colour."""

    yes0: float  # the cascade with no anchor
    yes: list[float]  # YES-1..YES-k
    best_anchors: list[list[int]]  # the subset reaching YES-0, YES-1, ...
    ce_trained: float  # the trained model's held-out CE
    verdict: Verdict  # red above YES-0, green at or below YES-k, yellow in between
    final_target: str  # "preimage" or "trained"
    final_alpha: float  # weight of the preimage in the final target
    subsets: list[CascadeRow]  # every anchor subset, by size then lexicographic
    # the best CE among paths that can come out worse than the trained model (the green line);
    # reports written before it was recorded compared with YES-k
    green_line: float | None = optional()
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        row = super().from_dict({**data, "subsets": []})
        row.subsets = [CascadeRow.from_dict(r) for r in data.get("subsets", [])]
        return row
