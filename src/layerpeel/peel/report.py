"""`PeelReport`: one typed row per (block, part), the ladder and the cascade, as versioned JSON.

The JSON (`to_dict`) is the interface for scripts; docs/schema.md documents every field.
`SCHEMA_VERSION` is written as "format_version"; a report without it (written before versions
were recorded) is read as version 1, whose fields it has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerpeel.errors import LayerpeelError
from layerpeel.io import atomic_write_json
from layerpeel.peel.rows import Cascade, GapRow, LadderRow
from layerpeel.peel.scoring import Thresholds, severity
from layerpeel.peel.verdict import WholeVerdict, judge, ranking

REPORT_FORMAT = "layerpeel-peel-report"
SCHEMA_VERSION = 1  # the JSON schema of docs/schema.md; raise it when a field changes meaning
REPORT_VERSION = SCHEMA_VERSION  # the name `layerpeel.report` reads it by


@dataclass
class PeelReport:
    """Results of one analysis: P1 rows, the P2 ladder, the P3 cascade, and what made them."""

    layers: list[GapRow]
    ladder: list[LadderRow] = field(default_factory=list)
    cascade: Cascade | None = None
    config: dict[str, Any] = field(default_factory=dict)
    monitoring: dict[str, Any] = field(default_factory=dict)  # hash, tokens, sequences
    model: dict[str, Any] = field(default_factory=dict)  # what was analysed
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    version: str = ""
    # the whole-model verdict (`layerpeel.peel.verdict`); None in reports written before it was
    # recorded, for which `whole()` judges the rows again
    verdict: WholeVerdict | None = None
    # the reference blocks themselves, when asked for (`peel(..., keep_references=True)`);
    # never written to JSON
    references: dict[str, dict[Any, Any]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "format_version": SCHEMA_VERSION,
            "layerpeel": self.version,
            "model": self.model,
            "config": self.config,
            "monitoring": self.monitoring,
            "timings": self.timings,
            "layers": [r.to_dict() for r in self.layers],
            "ladder": [r.to_dict() for r in self.ladder],
            "cascade": None if self.cascade is None else self.cascade.to_dict(),
            **self._verdict_fields(),
        }

    def _verdict_fields(self) -> dict[str, Any]:
        """The "verdict" and "ranking" (the rows in the order to look at them), when recorded."""
        if self.verdict is None:
            return {}
        order = ranking(self.layers, self.verdict, Thresholds.of(self.config))
        return {
            "verdict": self.verdict.to_dict(),
            "ranking": [{"block": r.block, "part": r.part} for r in order],
        }

    def whole(self) -> WholeVerdict:
        """The whole-model verdict: the recorded one, else judged from the rows and cascade."""
        if self.verdict is not None:
            return self.verdict
        return judge(self.layers, self.cascade, Thresholds.of(self.config))

    def in_order(self) -> list[GapRow]:
        """The rows in the order the report tells a user to look at them (blocks behind first)."""
        return ranking(self.layers, self.whole(), Thresholds.of(self.config))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeelReport:
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            raise LayerpeelError("not a layerpeel peel report")
        if int(data.get("format_version", SCHEMA_VERSION)) > SCHEMA_VERSION:
            raise LayerpeelError("peel report is from a newer layerpeel")
        casc = data.get("cascade")
        try:
            layers = [GapRow.from_dict(r) for r in data.get("layers", [])]
            ladder = [LadderRow.from_dict(r) for r in data.get("ladder", [])]
            cascade = None if casc is None else Cascade.from_dict(casc)
            verdict = None if "verdict" not in data else WholeVerdict.from_dict(data["verdict"])
        except (
            TypeError,
            AttributeError,
            KeyError,
            ValueError,
        ) as exc:  # a row without a required field
            raise LayerpeelError(f"peel report rows do not fit the schema: {exc}") from None
        return cls(
            layers=layers,
            ladder=ladder,
            cascade=cascade,
            config=dict(data.get("config", {})),
            monitoring=dict(data.get("monitoring", {})),
            model=dict(data.get("model", {})),
            timings=dict(data.get("timings", {})),
            version=str(data.get("layerpeel", "")),
            verdict=verdict,
        )

    def save(self, path: str | Path) -> None:
        """Write the JSON atomically: a failed write leaves no partial file."""
        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PeelReport:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise LayerpeelError(f"cannot read peel report {path}: {exc}") from None

    def ranked(self, part: str | None = None) -> list[GapRow]:
        """Rows most worrying first (optionally one part only): red, yellow, green, then `alarm`.

        Within a verdict, rows go by how near red they are (`scoring.alarm`: the gap over the red
        line, or for a block the idle line over its share of the other blocks' median work).
        An idle block is red with a gap near zero, so it comes before every yellow or green row;
        a block far below its peers' work comes before green rows with small gaps.
        """
        thresholds = Thresholds.of(self.config)
        rows = [r for r in self.layers if part is None or r.part == part]
        return sorted(rows, key=lambda r: severity(r, thresholds), reverse=True)
