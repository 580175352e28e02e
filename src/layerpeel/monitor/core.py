"""`Monitor`: watches a training run, analyses a copy of the model on schedule within a time budget.

    monitor = Monitor(model, monitoring_set, "runs/x", MonitorConfig(preset="standard"))
    for step in range(1, n + 1):
        loss = train_step()
        monitor.step(step, train_loss=loss)      # or: with monitor.watch(step): ...

It never changes the run (analyses run on a shadow copy, without gradients, with every random
number generator state restored) and never stops it (an exception is logged with its traceback,
counted, and after `max_failures` the monitor switches itself off with one warning).

In a distributed job (DDP) every rank builds the monitor and calls `step` at the same steps: the
ranks agree on rank 0's decision to analyse, spread each analysis over themselves
(`layerpeel.distributed.peel_sharded`, on a gloo group of the monitor's own) and only rank 0
writes. A rank whose analysis fails reports it in the same gather, so no rank waits for it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from layerpeel.config import ConfigBase
from layerpeel.data.monitoring import MonitoringSet
from layerpeel.errors import ConfigError
from layerpeel.io import atomic_write_text
from layerpeel.monitor.analyses import PRESETS, PeelAnalysis, YesAnalysis, YesData
from layerpeel.monitor.budget import Budget
from layerpeel.monitor.loggers import LOGGER_NAMES, Logger, main_rank, make_loggers, read_events
from layerpeel.monitor.schedules import Schedule, always
from layerpeel.monitor.state import ShadowModel, is_sharded, preserved_rng
from layerpeel.peel.analysis import PeelConfig
from layerpeel.peel.evidence import Trend, loss_trend

log = logging.getLogger(__name__)

HISTORY = 4096  # training losses kept for the trend (thinned beyond)


@dataclasses.dataclass
class MonitorConfig(ConfigBase):
    """How much to analyse and how much time it may cost; recorded with every analysis."""

    preset: str = "standard"  # "economy" (P1 closed form), "standard" (+ P3), "full" (+ P2, Adam)
    max_overhead: float | None = 0.05  # monitor time / training time it may use; None = no limit
    warmup: int = 100  # no analysis before this step (see docs/monitor.md: why 100)
    loggers: tuple[str, ...] = ()  # besides JSONL (always): "tensorboard", "wandb", "csv"
    max_failures: int = 3  # after this many failed analyses the monitor switches itself off
    tokens: int = 2048  # monitoring tokens of a layerpeel run (`layerpeel train`, checkpoints)
    seq_len: int = 64  # tokens per monitoring sequence there (cut to the model's context)
    peel: PeelConfig = dataclasses.field(default_factory=PeelConfig)  # settings of every peel

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(
                f"unknown monitor preset {self.preset!r}; known: {', '.join(PRESETS)}"
            )
        if self.max_overhead is not None and not 0.0 < float(self.max_overhead) <= 10.0:
            raise ConfigError(f"max_overhead must be in (0, 10] or None, got {self.max_overhead}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError(f"warmup must be an integer >= 0, got {self.warmup!r}")
        if not isinstance(self.max_failures, int) or self.max_failures < 1:
            raise ConfigError(f"max_failures must be a positive integer, got {self.max_failures!r}")
        if not isinstance(self.tokens, int) or self.tokens < 2 or self.seq_len < 1:
            raise ConfigError("monitor tokens must be >= 2 and seq_len >= 1")
        unknown = sorted(set(self.loggers) - set(LOGGER_NAMES))
        if unknown:
            raise ConfigError(f"unknown logger(s) {unknown}; known: {', '.join(LOGGER_NAMES)}")
        self.peel.validate()


class Monitor:
    """Analyses a model during training; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        data: MonitoringSet | YesData,
        run_dir: str | Path,
        config: MonitorConfig | None = None,
        schedule: Schedule | None = None,
        loggers: list[Logger] | None = None,
        distributed: bool | None = None,
        collective_timeout_s: float = 1800.0,
    ) -> None:
        """Check everything that could fail later (model, data, folder, loggers) right here.

        `distributed` (default: when a torch.distributed group of several ranks is initialised)
        spreads each analysis over the ranks; then every rank must construct its monitor at the
        same point (it creates the monitor's own process group, whose collectives fail after
        `collective_timeout_s` instead of hanging). With `distributed=False` rank 0 analyses
        alone and the other ranks' monitors do nothing.
        """
        self.config = config or MonitorConfig()
        self.config.validate()
        self.run_dir = Path(run_dir)
        self.schedule: Schedule = schedule or always
        # the monitor's own process group; None when rank 0 analyses alone or there is one process
        self.group = None
        if distributed is not False:
            self.group = monitor_group(collective_timeout_s, required=bool(distributed))
        if self.group is None and is_sharded(model) and not main_rank():
            raise ConfigError("an FSDP-sharded model needs the distributed monitor on every rank")
        self.writer = main_rank()
        self.working = self.writer or self.group is not None  # this rank takes part in analyses
        self.shadow = ShadowModel(model) if self.working else None
        # an FSDP model is checked through its unsharded copy
        seen = self.shadow.copy if self.shadow is not None and is_sharded(model) else model
        self.analysis: PeelAnalysis | YesAnalysis
        if isinstance(data, MonitoringSet):
            self.analysis = PeelAnalysis(seen, data, self.config.preset, self.config.peel)
        elif isinstance(data, YesData):
            self.analysis = YesAnalysis(model, data)
        else:
            raise ConfigError(
                f"monitor data must be a MonitoringSet or YesData, got {type(data).__name__}"
            )
        self.loggers = (
            loggers if loggers is not None else make_loggers(self.run_dir, self.config.loggers)
        )
        self.model = model
        self.budget = Budget(self.config.max_overhead)
        self.enabled = self.working
        self.failures = 0
        self.analyses = 0
        self.pending = False
        self.verdicts: dict[str, str] = {}  # latest verdict per "block03/attn" (and "cascade")
        # (step, loss) of the training loss, for the whole-model verdict's trend; thinned to
        # every other entry when it grows past HISTORY, so it spans the whole run in bounded
        # memory. Losses are kept as given (a tensor is read only when an analysis runs, so
        # the training loop never waits for a device to sync).
        self.losses: list[tuple[int, Any]] = []
        self.last_event: dict[str, Any] | None = None

    # -- the training loop's side ------------------------------------------------------------
    def step(self, step: int, train_loss: Any = None) -> dict[str, Any] | None:
        """Call once after every training step; returns the event of an analysis run now, if any.

        Never raises (except KeyboardInterrupt and the like): failures are logged and counted.
        """
        if not self.enabled:
            return None
        entered = self.budget.enter()
        try:
            return self._step(int(step), train_loss, entered)
        except Exception as exc:  # noqa: BLE001 - the monitor must never stop the run
            self._failed(int(step), exc)
            return None
        finally:
            self.budget.leave(entered)

    @contextmanager
    def watch(self, step: int, train_loss: Any = None) -> Iterator[None]:
        """Context manager around one training step: the monitor runs after the body."""
        yield
        self.step(step, train_loss)

    def close(self) -> None:
        for logger in self.loggers:
            try:
                logger.close()
            except Exception as exc:  # noqa: BLE001 - closing a logger must not stop the run
                log.warning("closing monitor logger %s failed: %s", type(logger).__name__, exc)

    @property
    def overhead(self) -> float:
        """Measured monitor time / training time so far."""
        return self.budget.overhead

    # -- inside ------------------------------------------------------------------------------
    def _step(self, step: int, train_loss: Any, entered: float) -> dict[str, Any] | None:
        if train_loss is not None:
            self.losses.append((step, train_loss))
            if len(self.losses) > HISTORY:
                del self.losses[::2]
        if step < self.config.warmup:
            return None
        if self.schedule(step):
            self.pending = True
        if not self.pending:
            return None
        unit = self.analysis.next_unit()
        allowed = self.budget.allows(unit.kind)
        if self.group is not None:  # every rank follows rank 0's budget
            allowed = agree(allowed, self.group)
        if not allowed:
            return None
        assert self.shadow is not None
        clock = self.budget.clock
        t0 = clock()
        with preserved_rng():
            model = self.shadow.refresh()
            if isinstance(self.analysis, PeelAnalysis):
                trend = self._trend(step)
                body = self.analysis.run(model, unit, group=self.group, trend=trend)
            elif self.group is None:  # one process: analyses written for it need no group
                body = self.analysis.run(model, unit)
            else:
                body = self.analysis.run(model, unit, group=self.group)
        seconds = clock() - t0
        self.budget.record(unit.kind, seconds)
        self.analysis.advance()
        self.pending = False
        self.analyses += 1
        monitor_s = self.budget.monitor_s + (clock() - entered)
        event: dict[str, Any] = {
            "event": body.pop("event"),
            "step": step,
            "time": time.time(),
            "train_loss": _as_float(train_loss),
            "preset": self.config.preset,
            "seconds": seconds,
            "overhead": monitor_s / self.budget.train_s if self.budget.train_s > 0 else None,
            "source": "monitor",
            **body,
        }
        self._remember(event)
        self._emit(event)
        return event

    def _trend(self, step: int) -> Trend | None:
        """The training loss's drop per doubling of steps up to `step` (None: too few losses)."""
        pts = [(s, _as_float(v)) for s, v in self.losses]
        return loss_trend([(s, v) for s, v in pts if v is not None], step)

    def _remember(self, event: dict[str, Any]) -> None:
        self.last_event = event
        report = event.get("report") or {}
        for row in report.get("layers", []):
            self.verdicts[f"block{int(row['block']):02d}/{row['part']}"] = row["verdict"]
        if report.get("cascade"):
            self.verdicts["cascade"] = report["cascade"].get("verdict", "")
        if event["event"] == "yes":
            self.verdicts["yes"] = event["verdict"]

    def _emit(self, event: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log(event)

    def _failed(self, step: int, exc: BaseException) -> None:
        """Log the failure with its traceback file; switch off after `max_failures`."""
        self.failures += 1
        self.pending = False
        message = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
        log.debug("monitor analysis failed at step %d: %s", step, message)
        if self.writer:  # every rank counts the failure alike; rank 0 records it
            self._record_failure(step, exc, message)
        if self.failures >= self.config.max_failures:
            self.enabled = False
            reason = f"{self.failures} failed analyses; last: {message}"
            log.warning(
                "layerpeel monitor switched off after %s (tracebacks in %s); training goes on",
                reason,
                self.run_dir / "monitor_errors",
            )
            try:
                self._emit(
                    {"event": "disabled", "step": step, "time": time.time(), "reason": reason}
                )
            except Exception as inner:  # noqa: BLE001
                log.debug("could not record that the monitor switched off: %s", inner)

    def _record_failure(self, step: int, exc: BaseException, message: str) -> None:
        """The traceback in monitor_errors/ and an "error" event."""
        try:
            rel = Path("monitor_errors") / f"step-{step:06d}-{self.failures}.txt"
            atomic_write_text(self.run_dir / rel, "".join(traceback.format_exception(exc)))
            self._emit(
                {
                    "event": "error",
                    "step": step,
                    "time": time.time(),
                    "message": message,
                    "traceback": rel.as_posix(),
                }
            )
        except Exception as inner:  # noqa: BLE001 - nothing here may stop the run
            log.debug("could not record the monitor failure: %s", inner)

    # -- resuming ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to carry on: budget, rotation, counters, latest verdicts."""
        return {
            "budget": self.budget.state_dict(),
            "analysis": self.analysis.state_dict(),
            "failures": self.failures,
            "analyses": self.analyses,
            "enabled": self.enabled,
            "verdicts": dict(self.verdicts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.budget.load_state_dict(state.get("budget", {}))
        self.analysis.load_state_dict(state.get("analysis", {}))
        self.failures = int(state.get("failures", 0))
        self.analyses = int(state.get("analyses", 0))
        self.enabled = bool(state.get("enabled", True)) and self.working
        self.verdicts = dict(state.get("verdicts", {}))

    def resume_at(self, step: int) -> None:
        """Drop monitor.jsonl events after `step` (written after the checkpoint a run resumes from)."""
        if not self.writer:
            return
        path = self.run_dir / "monitor.jsonl"
        events = read_events(path)
        kept = [e for e in events if int(e.get("step", 0)) <= step]
        if len(kept) != len(events):
            atomic_write_text(path, "".join(json.dumps(e) + "\n" for e in kept))
        analysed = [
            e for e in kept if e.get("event") == "analysis" and e.get("source") == "monitor"
        ]
        if isinstance(self.analysis, PeelAnalysis):
            self.analysis.position = len(analysed) - 1 if analysed else -1
        for event in analysed:
            self._remember(event)
        self.analyses = len(analysed)


def monitor_group(timeout_s: float, required: bool = False) -> Any:
    """A gloo group of every rank for the monitor's collectives, or None when not distributed.

    A group of its own keeps the monitor's small CPU collectives apart from the training's
    (NCCL or gloo) communication; creating it is itself collective. `required`: a clear error
    instead of None when no process group of several ranks is initialised.
    """
    import datetime

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        if required:
            from layerpeel.peel.world import require_group

            _, world = require_group()  # raises when no group is initialised
            raise ConfigError(f"a distributed monitor needs several ranks; the group has {world}")
        return None
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))


def agree(flag: bool, group: Any) -> bool:
    """Rank 0's `flag`, on every rank of `group`."""
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.broadcast(t, src=dist.get_global_rank(group, 0), group=group)
    return bool(t.item())


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.detach().float().mean().item()
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
