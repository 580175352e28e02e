"""A run folder's results as the views see them, read once (the report) or followed (the dashboard).

`RunReader(path).refresh()` reads what was added since the last call: new lines of metrics.jsonl
and monitor.jsonl (never a half-written one), new or changed `analysis/step-*.json` files. Its
`results()` merges them into one `RunResults`: the analyses by training step, the MLP YES series,
the monitor's errors, and a note for everything skipped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerpeel.report.reader import (
    ANALYSIS_NAME,
    Analysis,
    JsonlFollower,
    finite,
    read_peel_report,
    whole_verdict,
)
from layerpeel.yes.bounds import to_db

log = logging.getLogger(__name__)

# What a run folder holds: layerpeel's trainer, the monitor, `analyze` and `yes-demo` each
# write at least one of these.
RUN_FILES = ("config.json", "metrics.jsonl", "monitor.jsonl", "analysis", "summary.json")


def check_run_folder(path: str | Path) -> Path:
    """`path` as a run folder, or a one-line error when it is missing or holds none of a run's files."""
    from layerpeel.errors import CheckpointError

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"run folder not found: {path}")
    if not any((path / name).exists() for name in RUN_FILES):
        raise CheckpointError(f"not a run folder (none of {', '.join(RUN_FILES)}): {path}")
    return path


@dataclass
class RunResults:
    """Everything the views show about one run, already checked; `notes` lists what was skipped."""

    path: Path
    config: dict[str, Any]  # config.json, {} when absent
    metrics: list[dict[str, Any]]  # metrics.jsonl rows
    analyses: list[Analysis]  # one per training step, ascending
    yes: list[dict[str, Any]]  # MLP YES checks: step, loss_db, yes0_db, yes_db, verdict
    yes_axis: str  # "epoch" (yes-demo runs) or "step" (the monitor's YES tracker)
    errors: list[dict[str, Any]]  # monitor error events
    disabled: list[dict[str, Any]]  # monitor disabled events
    monitor: list[dict[str, Any]]  # per analysis event: step, time, seconds, overhead, preset
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.analyses and not self.yes


class RunReader:
    """Follows one run folder; each `refresh()` reads only what changed since the last one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.metrics = JsonlFollower(self.path / "metrics.jsonl")
        self.monitor = JsonlFollower(self.path / "monitor.jsonl")
        self.metric_rows: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.files: dict[str, tuple[float, int, list[Analysis], list[str]]] = {}
        self.config: dict[str, Any] = {}
        self.config_note: str | None = None
        self.revision = 0  # grows whenever something new was read

    def refresh(self, final: bool = False) -> bool:
        """Read what changed; True when anything did."""
        changed = False
        for follower, rows in ((self.metrics, self.metric_rows), (self.monitor, self.events)):
            new, reset = follower.read(final)
            if reset:
                rows.clear()
            rows.extend(new)
            changed |= bool(new) or reset
        changed |= self._scan_analysis_dir()
        if not self.config:
            changed |= self._read_config()
        if changed:
            self.revision += 1
        return changed

    def _read_config(self) -> bool:
        path = self.path / "config.json"
        if not path.exists():
            return False
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            self.config_note = "config.json: unreadable, settings of the run not shown"
            return False
        if isinstance(data, dict):
            self.config = data
            self.config_note = None
            return True
        return False

    def _scan_analysis_dir(self) -> bool:
        folder = self.path / "analysis"
        seen: set[str] = set()
        changed = False
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            match = ANALYSIS_NAME.match(path.name)
            if match is None:
                continue
            seen.add(path.name)
            try:
                stat = path.stat()
            except OSError:
                continue
            old = self.files.get(path.name)
            if old is not None and old[:2] == (stat.st_mtime, stat.st_size):
                continue
            source = f"analysis/{path.name}"
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                found: list[Analysis] = []
                notes = [f"{source}: unreadable JSON ({type(exc).__name__})"]
            else:
                analysis, notes = read_peel_report(data, source, int(match.group(1)))
                found = [analysis] if analysis is not None else []
            self.files[path.name] = (stat.st_mtime, stat.st_size, found, notes)
            changed = True
        for gone in set(self.files) - seen:
            del self.files[gone]
            changed = True
        return changed

    def results(self) -> RunResults:
        notes: list[str] = []
        if not self.path.is_dir():
            notes.append(f"{self.path}: no such folder")
        if self.config_note:
            notes.append(self.config_note)
        by_step: dict[int, list[Analysis]] = {}
        errors, disabled, monitor_rows, yes_events = [], [], [], []
        unknown = 0
        for n, event in enumerate(self.events, 1):
            kind = event.get("event")
            if kind == "analysis":
                step = event.get("step")
                analysis, event_notes = read_peel_report(
                    event.get("report"),
                    f"monitor.jsonl analysis event {n}",
                    step if isinstance(step, int) and step >= 0 else None,
                )
                notes.extend(event_notes)
                if analysis is not None:
                    keep = ("time", "seconds", "overhead", "train_loss", "preset", "source")
                    analysis.event = {k: event.get(k) for k in keep}
                    # the event's verdict judges every block's latest rows, not only this unit's
                    analysis.whole = whole_verdict(event) or analysis.whole
                    by_step.setdefault(analysis.step, []).append(analysis)
                    monitor_rows.append({"step": analysis.step, **analysis.event})
            elif kind == "error":
                errors.append({k: event.get(k) for k in ("step", "time", "message", "traceback")})
            elif kind == "disabled":
                disabled.append({k: event.get(k) for k in ("step", "time", "reason")})
            elif kind == "yes":
                yes_events.append(event)
            else:
                unknown += 1
        if unknown:
            notes.append(f"monitor.jsonl: skipped {unknown} line(s) with an unknown event")
        for _mtime, _size, from_file, file_notes in self.files.values():
            notes.extend(file_notes)
            for item in from_file:
                by_step.setdefault(item.step, []).append(item)
        notes.extend(self.metrics.notes())
        notes.extend(self.monitor.notes())
        yes, axis, yes_notes = _yes_series(self.metric_rows, yes_events)
        notes.extend(yes_notes)
        return RunResults(
            path=self.path,
            config=self.config,
            metrics=[r for r in self.metric_rows if "epoch" not in r],
            analyses=[_merge(by_step[s]) for s in sorted(by_step)],
            yes=yes,
            yes_axis=axis,
            errors=errors,
            disabled=disabled,
            monitor=monitor_rows,
            notes=notes,
        )


def read_results(path: str | Path) -> RunResults:
    """Read a run folder once, taking an unterminated last line too when it is whole JSON."""
    reader = RunReader(path)
    reader.refresh(final=True)
    return reader.results()


def _merge(found: list[Analysis]) -> Analysis:
    """One analysis per step: later sources (files after monitor events) replace equal rows."""
    if len(found) == 1:
        return found[0]
    first, last = found[0], found[-1]
    layers: dict[tuple[int, str], dict[str, Any]] = {}
    ladder: dict[tuple[int, int], dict[str, Any]] = {}
    cascade = None
    meta: dict[str, Any] = {}
    event: dict[str, Any] = {}
    whole = None
    for a in found:
        whole = a.whole or whole
        layers.update({(r["block"], r["part"]): r for r in a.layers})
        ladder.update({(r["from_block"], r["to_block"]): r for r in a.ladder})
        cascade = a.cascade or cascade
        meta.update({k: v for k, v in a.meta.items() if v})
        event.update({k: v for k, v in a.event.items() if v is not None})
    return Analysis(
        step=first.step,
        source=" + ".join(a.source for a in found),
        layers=[
            layers[k] for k in sorted(layers, key=lambda k: (k[0], _PART_ORDER.get(k[1], 9), k[1]))
        ],
        ladder=[ladder[k] for k in sorted(ladder)],
        cascade=cascade,
        meta=meta or last.meta,
        event=event,
        whole=whole,
    )


_PART_ORDER = {"block": 0, "attn": 1, "mlp": 2}


def _yes_series(
    metrics: list[dict[str, Any]], events: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], str, list[str]]:
    """MLP YES checks in dB from yes-demo metrics rows (raw MSE) or monitor "yes" events."""
    out: list[dict[str, Any]] = []
    bad = 0
    for row in metrics:
        if "epoch" not in row or "yes0_min" not in row:
            continue
        loss, yes0 = finite(row.get("train_loss")), finite(row.get("yes0_min"))
        ladder = row.get("yes_min")
        vals = [finite(v) for v in ladder] if isinstance(ladder, list) and ladder else None
        if loss is None or yes0 is None or vals is None or any(v is None for v in vals):
            bad += 1
            continue
        out.append(
            {
                "step": int(row["epoch"]),
                "loss_db": to_db(loss),
                "yes0_db": to_db(yes0),
                "yes_db": [to_db(v) for v in vals if v is not None],
                "verdict": _verdict(row.get("verdict")),
            }
        )
    axis = "epoch"
    if not out:
        axis = "step"
        for event in events:
            loss, yes0, step = (
                finite(event.get("loss")),
                finite(event.get("yes0")),
                event.get("step"),
            )
            ladder = event.get("yes")
            vals = [finite(v) for v in ladder] if isinstance(ladder, list) and ladder else None
            if (
                loss is None
                or yes0 is None
                or vals is None
                or any(v is None for v in vals)
                or not isinstance(step, int)
            ):
                bad += 1
                continue
            in_db = event.get("db") is True
            conv = (lambda v: v) if in_db else to_db
            out.append(
                {
                    "step": step,
                    "loss_db": conv(loss),
                    "yes0_db": conv(yes0),
                    "yes_db": [conv(v) for v in vals if v is not None],
                    "verdict": _verdict(event.get("verdict")),
                }
            )
    notes = (
        [f"skipped {bad} YES check(s) without finite loss, YES-0 and YES-k values"] if bad else []
    )
    return out, axis, notes


def _verdict(value: Any) -> str:
    return value if value in ("red", "yellow", "green") else "unknown"
