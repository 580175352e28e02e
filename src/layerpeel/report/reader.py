"""Reading a run's result files for the views: growing or torn JSONL, analysis files, old formats.

Nothing here computes a bound: it reads what `layerpeel analyze`, the training monitor, the
trainer and `layerpeel yes-demo` wrote, checks each record against the file contracts, keeps what
fits and writes down, in one line each, what it skipped and why.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerpeel.peel.report import REPORT_FORMAT, REPORT_VERSION

log = logging.getLogger(__name__)

ANALYSIS_NAME = re.compile(r"^step-(\d+)\.json$")
LAYER_NUMBERS = (
    "ci_low",
    "ci_high",
    "ce_trained",
    "ce_reference",
    "ce_reference_fp",
    "opt_part",
    "quant_part",
    "time_s",
    "work",
    "work_ci_low",
    "work_ci_high",
    "work_ratio",
    "influence",
    "gap_given_first",
)


class JsonlFollower:
    """The JSON objects appended to one JSONL file since the last `read()`.

    A line is taken only once its newline has been written, so a line still being written (or torn
    by a killed run) is never parsed half-way; `read(final=True)` also tries an unterminated last
    line, for one-shot readers. When the file shrinks (a resumed run trims its metrics), reading
    starts again from the top and `read()` reports `reset=True`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0  # bytes consumed, always at a line start
        self.line_no = 0
        self.bad: list[str] = []  # one message per complete line that is not a JSON object
        self.torn = False  # an unterminated last line is waiting

    def read(self, final: bool = False) -> tuple[list[dict[str, Any]], bool]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return [], False
        reset = size < self.offset
        if reset:
            self.offset, self.line_no, self.bad = 0, 0, []
        if size == self.offset:
            return [], reset
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read(size - self.offset)
        end = chunk.rfind(b"\n") + 1  # complete lines end here
        rows = [row for line in chunk[:end].splitlines() if (row := self._parse(line)) is not None]
        self.offset += end
        tail = chunk[end:]
        self.torn = bool(tail.strip())
        if final and self.torn:
            try:
                obj = json.loads(tail)
            except (json.JSONDecodeError, UnicodeDecodeError):
                obj = None
            if isinstance(obj, dict):
                rows.append(obj)
                self.torn = False
        return rows, reset

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        self.line_no += 1
        if not line.strip():
            return None
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.bad.append(f"{self.path.name} line {self.line_no}: not JSON")
            return None
        if not isinstance(obj, dict):
            self.bad.append(f"{self.path.name} line {self.line_no}: not a JSON object")
            return None
        return obj

    def notes(self) -> list[str]:
        out = list(self.bad)
        if self.torn:
            out.append(f"{self.path.name}: an unfinished last line (a run stopped mid-write)")
        return out


def finite(value: Any) -> float | None:
    """A finite float, or None for anything else (null, text, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def index_of(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


@dataclass
class Analysis:
    """One checked peel report: rows that passed the checks, plus where it came from."""

    step: int
    source: str  # the file or the monitor.jsonl line it came from
    layers: list[dict[str, Any]]
    ladder: list[dict[str, Any]]
    cascade: dict[str, Any] | None
    meta: dict[str, Any] = field(
        default_factory=dict
    )  # model, config, monitoring, timings, version
    event: dict[str, Any] = field(default_factory=dict)  # monitor fields: time, seconds, overhead
    # the whole-model verdict (colour, sentence, question, ...) when the source recorded one
    whole: dict[str, Any] | None = None


def read_peel_report(data: Any, source: str, step: int | None) -> tuple[Analysis | None, list[str]]:
    """Check one `PeelReport.to_dict()` and keep what fits the format; notes say what was skipped.

    Reports from an older format version are read field by field: a row without the fields a view
    needs is skipped and counted, missing optional fields stay empty. Newer versions are skipped.
    """
    notes: list[str] = []
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
        return None, [f"{source}: not a layerpeel peel report"]
    version = data.get("format_version")
    if isinstance(version, int) and version > REPORT_VERSION:
        return None, [
            f"{source}: written in peel-report format {version}, newer than this layerpeel reads "
            f"({REPORT_VERSION}); update layerpeel to show it"
        ]
    if version != REPORT_VERSION:
        notes.append(
            f"{source}: older peel-report format ({version if version is not None else 'unversioned'}"
            f"); read the fields that match format {REPORT_VERSION}"
        )
    model = data.get("model")
    if step is None and isinstance(model, dict):
        step = index_of(model.get("step"))
    if step is None:
        return None, [*notes, f"{source}: no training step in the file name or the report"]
    layers, bad = _layer_rows(data.get("layers"))
    if bad:
        notes.append(f"{source}: skipped {bad} layer row(s) without block, part or a finite gap")
    ladder, bad = _ladder_rows(data.get("ladder"))
    if bad:
        notes.append(f"{source}: skipped {bad} ladder row(s) without from/to block or a finite CE")
    cascade, note = _cascade(data.get("cascade"))
    if note:
        notes.append(f"{source}: {note}")
    meta: dict[str, Any] = {
        key: data.get(key) if isinstance(data.get(key), dict) else {}
        for key in ("model", "config", "monitoring", "timings")
    }
    meta["layerpeel"] = str(data.get("layerpeel", ""))
    meta["format_version"] = version
    return Analysis(step, source, layers, ladder, cascade, meta, whole=whole_verdict(data)), notes


def whole_verdict(data: Any) -> dict[str, Any] | None:
    """The recorded whole-model verdict of a report or event, if it has the fields a view shows."""
    v = data.get("verdict") if isinstance(data, dict) else None
    if not isinstance(v, dict) or v.get("colour") not in ("red", "yellow", "green"):
        return None
    if not isinstance(v.get("sentence"), str) or not isinstance(v.get("question"), str):
        return None
    return v


def _layer_rows(rows: Any) -> tuple[list[dict[str, Any]], int]:
    out, bad = [], 0
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            bad += 1
            continue
        block, part, gap = index_of(row.get("block")), row.get("part"), finite(row.get("gap"))
        if block is None or not isinstance(part, str) or gap is None:
            bad += 1
            continue
        verdict = row.get("verdict")
        clean = {"block": block, "part": part, "gap": gap}
        clean["verdict"] = verdict if verdict in ("red", "yellow", "green") else "unknown"
        clean.update({key: finite(row.get(key)) for key in LAYER_NUMBERS})
        clean["solver"] = str(row["solver"]) if isinstance(row.get("solver"), str) else None
        clean["idle"] = row.get("idle") is True
        clean["explained_by"] = index_of(row.get("explained_by"))
        out.append(clean)
    return out, bad


def _ladder_rows(rows: Any) -> tuple[list[dict[str, Any]], int]:
    out, bad = [], 0
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            bad += 1
            continue
        i, j, ce = (
            index_of(row.get("from_block")),
            index_of(row.get("to_block")),
            finite(row.get("ce")),
        )
        if i is None or j is None or ce is None or j < i:
            bad += 1
            continue
        out.append(
            {"from_block": i, "to_block": j, "ce": ce, "ce_trained": finite(row.get("ce_trained"))}
        )
    return out, bad


def _cascade(data: Any) -> tuple[dict[str, Any] | None, str | None]:
    if data is None:
        return None, None
    if not isinstance(data, dict):
        return None, "skipped the cascade: not a JSON object"
    yes0, ce = finite(data.get("yes0")), finite(data.get("ce_trained"))
    raw = data.get("yes")
    yes = [finite(v) for v in raw] if isinstance(raw, list) else None
    if yes0 is None or ce is None or yes is None or any(v is None for v in yes):
        return None, "skipped the cascade: it lacks finite yes0, yes or ce_trained"
    verdict = data.get("verdict")
    return {
        "yes0": yes0,
        "yes": yes,
        "ce_trained": ce,
        "verdict": verdict if verdict in ("red", "yellow", "green") else "unknown",
        "best_anchors": data.get("best_anchors")
        if isinstance(data.get("best_anchors"), list)
        else [],
        "final_target": data.get("final_target"),
    }, None
