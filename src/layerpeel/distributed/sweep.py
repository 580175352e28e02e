"""Sweeps on Ray: every checkpoint of a run analysed as one Ray task, merged in checkpoint order.

    result = sweep("runs/x", options=SweepOptions(address=None, cpus=1, retries=2))

A local Ray is started on the spot when no address is given (and shut down afterwards); an
address names a running cluster. Each task analyses one checkpoint exactly as
`layerpeel analyze RUN --all-checkpoints` does (`layerpeel.monitor.checkpoints.checkpoint_event`),
with the resources it asks for, and is retried when it fails. Events are appended to
RUN/monitor.jsonl in checkpoint order as soon as every earlier checkpoint is settled, so the time
series reads as if each checkpoint had been analysed in turn; a checkpoint that still fails after
its retries is named in `SweepResult.failures` and the others are kept. Ray is an optional extra
(`pip install 'layerpeel[ray]'`).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layerpeel.config import ConfigBase
from layerpeel.errors import ConfigError, LayerpeelError

log = logging.getLogger(__name__)


class SweepError(LayerpeelError):
    """A sweep that cannot run (no Ray, an unreachable cluster) or checkpoints that failed."""


@dataclasses.dataclass
class SweepOptions(ConfigBase):
    """Where the tasks run and what each one asks for."""

    address: str | None = (
        None  # Ray cluster address ("host:port", "ray://host:port", "auto"); None = local
    )
    cpus: float = 1.0  # CPUs per task (also its torch threads)
    gpus: float = 0.0  # GPUs per task
    memory_mb: float | None = None  # memory per task (MiB), for Ray's scheduler; None = no request
    retries: int = 2  # retries of a failed task (its exception or its worker's death)
    local_cpus: int | None = None  # CPUs of a local Ray started on the spot; None = all
    connect_timeout_s: float = 5.0  # how long to try reaching `address`

    def validate(self) -> None:
        if not self.cpus > 0 or self.gpus < 0:
            raise ConfigError("a sweep task needs cpus > 0 and gpus >= 0")
        if self.memory_mb is not None and not self.memory_mb > 0:
            raise ConfigError(f"memory per task must be positive, got {self.memory_mb} MiB")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"retries must be an integer >= 0, got {self.retries!r}")


@dataclasses.dataclass
class SweepResult:
    """New events (in checkpoint order, already in monitor.jsonl) and the checkpoints that failed."""

    events: list[dict[str, Any]]
    failures: dict[str, str]  # checkpoint file -> "ExceptionType: message"
    skipped: int  # checkpoints that already had an event


def analyse_checkpoint(
    path: str, mset: Any, config: dict[str, Any], threads: int
) -> dict[str, Any]:
    """What one task runs: the checkpoint's event (see `checkpoint_event`)."""
    import torch

    from layerpeel.monitor.checkpoints import checkpoint_event
    from layerpeel.monitor.core import MonitorConfig

    torch.set_num_threads(max(1, threads))
    return checkpoint_event(path, mset, MonitorConfig.from_dict(config))


def guarded(task: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run `task` in a Ray worker: {"event": ...}, or {"error": one line} when it raised.

    Errors come back as values, so the driver decides on retries and no traceback is printed;
    Ray itself retries a task whose worker died.
    """
    try:
        return {"event": task(*args)}
    except Exception as exc:  # noqa: BLE001 - reported to the driver, which names the checkpoint
        log.debug("sweep task failed", exc_info=True)
        return {"error": _one_line(exc)}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SweepError(
            "Ray is not installed: pip install 'layerpeel[ray]' (or analyse the checkpoints one "
            "after another with `layerpeel analyze RUN --all-checkpoints`)"
        ) from None
    return ray


def check_reachable(address: str, timeout_s: float) -> None:
    """A one-line `SweepError` unless something listens at the address's host and port."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise SweepError(f"Ray address {address!r} is not HOST:PORT (or ray://HOST:PORT)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise SweepError(f"cannot reach the Ray cluster at {address}: {exc}") from None


def _connect(ray: Any, options: SweepOptions) -> bool:
    """Connect to Ray or start a local one; True when this sweep started it (and stops it).

    A Ray this process already joined is used as it is.
    """
    if options.address is not None:
        check_reachable(options.address, options.connect_timeout_s)
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "configure_logging": False}
    if options.address is None:
        ray.init(num_cpus=options.local_cpus, include_dashboard=False, **quiet)
        return True
    try:
        ray.init(address=options.address, **quiet)
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; the user gets one line
        text = str(exc).strip().splitlines()
        raise SweepError(
            f"cannot connect to the Ray cluster at {options.address}: "
            f"{text[0] if text else type(exc).__name__}"
        ) from None
    return True


def _one_line(exc: BaseException) -> str:
    """An error on one line (the user's error inside a Ray task error)."""
    cause = getattr(exc, "cause", None)
    err = cause if isinstance(cause, BaseException) else exc
    text = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return f"{type(err).__name__}: {text[0].strip()}" if text else type(err).__name__


def sweep(
    run_path: str | Path,
    config: Any = None,
    options: SweepOptions | None = None,
    progress: Callable[[int, int, str, str | None], None] | None = None,
    task: Callable[..., dict[str, Any]] = analyse_checkpoint,
) -> SweepResult:
    """Analyse every checkpoint of a run still missing from its time series, one Ray task each.

    `config` is the run's `MonitorConfig` unless given. `progress(done, total, checkpoint,
    error)` is called as each task settles. `task(path, mset, config_dict, threads)` is what
    each task runs (`analyse_checkpoint` by default).
    """
    from layerpeel.monitor.checkpoints import pending_checkpoints
    from layerpeel.monitor.loggers import make_loggers

    options = options or SweepOptions()
    options.validate()
    ray = _import_ray()
    work = pending_checkpoints(run_path, config)
    skipped = len(work.checkpoints) - len(work.todo)
    if not work.todo:
        return SweepResult([], {}, skipped)
    started = _connect(ray, options)
    try:
        remote = ray.remote(guarded).options(
            num_cpus=options.cpus,
            num_gpus=options.gpus,
            memory=None if options.memory_mb is None else int(options.memory_mb * 2**20),
            max_retries=options.retries,  # a worker that died
        )
        mset_ref = ray.put(work.mset)
        cfg = work.config.to_dict()
        threads = int(options.cpus)

        def submit(i: int) -> Any:
            return remote.remote(task, str(work.todo[i][0]), mset_ref, cfg, threads)

        index = {submit(i): i for i in range(len(work.todo))}
        attempts = dict.fromkeys(range(len(work.todo)), 1)
        settled: dict[int, dict[str, Any] | str] = {}
        loggers = make_loggers(work.run.path, work.config.loggers)
        events: list[dict[str, Any]] = []
        failures: dict[str, str] = {}
        written = 0
        try:
            while len(settled) < len(work.todo):
                ready, _ = ray.wait(list(index), num_returns=1)
                i = index.pop(ready[0])
                name = work.todo[i][0].name
                try:
                    outcome = ray.get(ready[0])
                except Exception as exc:  # noqa: BLE001 - the worker died, even after Ray's retries
                    outcome = {"error": _one_line(exc)}
                error = outcome.get("error")
                if error is not None and attempts[i] <= options.retries:
                    log.info("checkpoint %s failed (%s); retry %d", name, error, attempts[i])
                    attempts[i] += 1
                    index[submit(i)] = i
                    continue
                if error is not None:
                    settled[i] = error
                    failures[str(work.todo[i][0])] = error
                    log.warning(
                        "checkpoint %s failed after %d attempt(s): %s", name, attempts[i], error
                    )
                else:
                    settled[i] = outcome["event"]
                if progress is not None:
                    progress(len(settled), len(work.todo), name, error)
                while written in settled:  # checkpoint order, as analysed in turn
                    event = settled[written]
                    if isinstance(event, dict):
                        for logger in loggers:
                            logger.log(event)
                        events.append(event)
                    written += 1
        finally:
            for logger in loggers:
                logger.close()
        return SweepResult(events, failures, skipped)
    finally:
        if started:
            ray.shutdown()
