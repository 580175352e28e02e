"""Where monitor events go: JSONL in the run folder (always), TensorBoard, W&B and CSV.

Loggers only show what the monitor computed: each receives the event dict, and the scalar loggers
read the flat `{tag: value}` view of it from `scalars(event)`, with tags like
`peel/gap/block03/attn`. Only the main rank writes; other ranks get `NullLogger` stand-ins.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from layerpeel.errors import ConfigError
from layerpeel.io import append_jsonl, drop_torn_tail

log = logging.getLogger(__name__)

VERDICT_CODES = {"green": 0, "yellow": 1, "red": 2}
LOGGER_NAMES = ("jsonl", "tensorboard", "wandb", "csv")


def main_rank() -> bool:
    """True on the process that writes: rank 0 of torch.distributed, else of $RANK, else alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0") or 0) == 0


def scalars(event: dict[str, Any]) -> dict[str, float]:
    """The scalar view of one event: one tag per number, for TensorBoard, W&B and CSV."""
    out: dict[str, float] = {}
    kind = event.get("event")
    if kind == "analysis":
        report = event.get("report") or {}
        for row in report.get("layers", []):
            where = f"block{int(row['block']):02d}/{row['part']}"
            out[f"peel/gap/{where}"] = float(row["gap"])
            out[f"peel/ci_low/{where}"] = float(row["ci_low"])
            out[f"peel/verdict/{where}"] = float(VERDICT_CODES.get(row["verdict"], -1))
            out["peel/ce_trained"] = float(row["ce_trained"])
        for row in report.get("ladder", []):
            out[f"peel/ladder/block{row['from_block']:02d}_to_{row['to_block']:02d}"] = float(
                row["ce"]
            )
        casc = report.get("cascade")
        if casc:
            out["peel/cascade/yes0"] = float(casc["yes0"])
            for k, value in enumerate(casc.get("yes", []), start=1):
                out[f"peel/cascade/yes{k}"] = float(value)
            out["peel/cascade/ce_trained"] = float(casc["ce_trained"])
            out["peel/cascade/verdict"] = float(VERDICT_CODES.get(casc.get("verdict", ""), -1))
        out["monitor/seconds"] = float(event["seconds"])
        if event.get("overhead") is not None:  # None before any training time was measured
            out["monitor/overhead"] = float(event["overhead"])
    elif kind == "yes":
        out["yes/loss_db"] = float(event["loss"])
        out["yes/yes0_db"] = float(event["yes0"])
        for k, value in enumerate(event.get("yes", []), start=1):
            out[f"yes/yes{k}_db"] = float(value)
        out["yes/verdict"] = float(VERDICT_CODES.get(event["verdict"], -1))
        if event.get("overhead") is not None:
            out["monitor/overhead"] = float(event["overhead"])
    if event.get("train_loss") is not None:
        out["monitor/train_loss"] = float(event["train_loss"])
    return out


class Logger:
    """Receives every monitor event; the base class does nothing (the stand-in for other ranks)."""

    def log(self, event: dict[str, Any]) -> None:
        """Record one event."""

    def close(self) -> None:
        """Flush and release files."""


NullLogger = Logger


class JsonlLogger(Logger):
    """Appends each event as one flushed JSON line to `RUN/monitor.jsonl`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a"):
                pass
            drop_torn_tail(self.path)  # a killed writer's torn line would swallow the next event
        except OSError as exc:
            raise ConfigError(f"cannot write the monitor log {self.path}: {exc}") from None

    def log(self, event: dict[str, Any]) -> None:
        append_jsonl(self.path, event)


class CsvLogger(Logger):
    """One `step,tag,value` row per scalar in `RUN/monitor.csv` (long format)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            new = not self.path.exists() or self.path.stat().st_size == 0
            with open(self.path, "a", newline="") as fh:
                if new:
                    csv.writer(fh).writerow(["step", "tag", "value"])
        except OSError as exc:
            raise ConfigError(f"cannot write the monitor CSV {self.path}: {exc}") from None

    def log(self, event: dict[str, Any]) -> None:
        values = scalars(event)
        if not values:
            return
        with open(self.path, "a", newline="") as fh:
            writer = csv.writer(fh)
            for tag, value in values.items():
                writer.writerow([event["step"], tag, repr(value)])


class TensorBoardLogger(Logger):
    """One `add_scalar` per tag (never `add_scalars`), event files in `RUN/tensorboard`."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "the TensorBoard logger needs the tensorboard package: pip install 'layerpeel[tb]'"
            ) from None
        try:
            self.writer = SummaryWriter(log_dir=str(log_dir))
        except OSError as exc:
            raise ConfigError(f"cannot write TensorBoard files to {log_dir}: {exc}") from None

    def log(self, event: dict[str, Any]) -> None:
        for tag, value in scalars(event).items():
            self.writer.add_scalar(tag, value, global_step=event["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger(Logger):
    """Logs the scalars to a W&B run; `mode="offline"` (the default) needs no network or account."""

    def __init__(
        self, run_dir: Path, project: str = "layerpeel", mode: str = "offline", run: Any = None
    ) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "the W&B logger needs the wandb package: pip install 'layerpeel[wandb]'"
            ) from None
        self._own = run is None
        if run is None:
            try:
                Path(run_dir).mkdir(parents=True, exist_ok=True)
                run = wandb.init(
                    project=project,
                    dir=str(run_dir),
                    mode=mode,  # type: ignore[arg-type]
                    reinit="create_new",
                    settings=wandb.Settings(silent=True, console="off"),
                )
            except Exception as exc:  # noqa: BLE001 - wandb raises many kinds; all are bad set-up
                raise ConfigError(f"cannot start a W&B run in {run_dir}: {exc}") from None
        self.run = run

    def log(self, event: dict[str, Any]) -> None:
        values = scalars(event)
        if values:
            self.run.log(values, step=int(event["step"]))

    def close(self) -> None:
        if self._own:
            self.run.finish()


def make_loggers(run_dir: Path, names: tuple[str, ...] | list[str]) -> list[Logger]:
    """The loggers named (JSONL is always included) writing into `run_dir`; stand-ins off rank 0."""
    unknown = sorted(set(names) - set(LOGGER_NAMES))
    if unknown:
        raise ConfigError(f"unknown logger(s) {unknown}; known: {', '.join(LOGGER_NAMES)}")
    if not main_rank():
        return [NullLogger()]
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the run folder {run_dir}: {exc}") from None
    if not os.access(run_dir, os.W_OK):
        raise ConfigError(f"the run folder {run_dir} is not writable")
    loggers: list[Logger] = [JsonlLogger(run_dir / "monitor.jsonl")]
    if "tensorboard" in names:
        loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
    if "wandb" in names:
        loggers.append(WandbLogger(run_dir / "wandb"))
    if "csv" in names:
        loggers.append(CsvLogger(run_dir / "monitor.csv"))
    return loggers


def read_events(path: Path) -> list[dict[str, Any]]:
    """Events of a monitor.jsonl; lines that are not JSON objects (a torn last line) are skipped."""
    rows: list[dict[str, Any]] = []
    if not Path(path).exists():
        return rows
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "event" in row:
            rows.append(row)
    return rows
