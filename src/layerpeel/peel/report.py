"""`PeelReport`: one tidy row per (block, part), the ladder and the cascade, as versioned JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerpeel.errors import LayerpeelError
from layerpeel.io import atomic_write_json
from layerpeel.peel.scoring import Thresholds, severity

REPORT_FORMAT = "layerpeel-peel-report"
REPORT_VERSION = 1


@dataclass
class PeelReport:
    """Results of one analysis. `layers` rows carry block, part, gap, ci_low, ci_high, verdict."""

    layers: list[dict[str, Any]]
    ladder: list[dict[str, Any]] = field(default_factory=list)
    cascade: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    monitoring: dict[str, Any] = field(default_factory=dict)  # hash, tokens, sequences
    model: dict[str, Any] = field(default_factory=dict)  # what was analysed
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    version: str = ""
    # the reference blocks themselves, when asked for (`peel(..., keep_references=True)`);
    # never written to JSON
    references: dict[str, dict[Any, Any]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "format_version": REPORT_VERSION,
            "layerpeel": self.version,
            "model": self.model,
            "config": self.config,
            "monitoring": self.monitoring,
            "timings": self.timings,
            "layers": self.layers,
            "ladder": self.ladder,
            "cascade": self.cascade,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeelReport:
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            raise LayerpeelError("not a layerpeel peel report")
        if int(data.get("format_version", 0)) > REPORT_VERSION:
            raise LayerpeelError("peel report is from a newer layerpeel")
        return cls(
            layers=list(data.get("layers", [])),
            ladder=list(data.get("ladder", [])),
            cascade=data.get("cascade"),
            config=dict(data.get("config", {})),
            monitoring=dict(data.get("monitoring", {})),
            model=dict(data.get("model", {})),
            timings=dict(data.get("timings", {})),
            version=str(data.get("layerpeel", "")),
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

    def ranked(self, part: str | None = None) -> list[dict[str, Any]]:
        """Rows most worrying first (optionally one part only): red, yellow, green, then `alarm`.

        Within a verdict, rows go by how near red they are (`scoring.alarm`: the gap over the red
        line, or for a block the idle line over its share of the other blocks' median work).
        An idle block is red with a gap near zero, so it comes before every yellow or green row;
        a block far below its peers' work comes before green rows with small gaps.
        """
        thresholds = Thresholds.of(self.config)
        rows = [r for r in self.layers if part is None or r["part"] == part]
        return sorted(rows, key=lambda r: severity(r, thresholds), reverse=True)
