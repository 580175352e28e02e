"""Joining the process group a launcher (torchrun) describes in the environment, and leaving it."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager

from layerpeel.peel.world import ShardingError

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True in a process that torchrun (or a launcher like it) started as one of several ranks."""
    try:
        return all(v in os.environ for v in LAUNCH_VARS) and int(os.environ["WORLD_SIZE"]) > 1
    except ValueError:
        return False


def default_backend() -> str:
    """NCCL when this process has a GPU to itself, else gloo."""
    import torch

    return "nccl" if torch.cuda.is_available() and "LOCAL_RANK" in os.environ else "gloo"


@contextmanager
def process_group(backend: str | None = None, timeout_s: float = 1800.0) -> Iterator[None]:
    """Join the launcher's process group (unless one is initialised already); leave it after.

    Collectives that wait longer than `timeout_s` fail instead of hanging.
    """
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    if not all(v in os.environ for v in LAUNCH_VARS):
        missing = ", ".join(v for v in LAUNCH_VARS if v not in os.environ)
        raise ShardingError(
            f"sharding was asked for, but this process was not started by torchrun ({missing} "
            "unset): run `torchrun --nproc-per-node N -m layerpeel analyze ...`"
        )
    backend = backend or default_backend()
    if backend not in ("gloo", "nccl"):
        raise ShardingError(f"unknown backend {backend!r}; known: gloo (CPU), nccl (GPU)")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as exc:
        text = str(exc).strip().splitlines()
        raise ShardingError(
            f"rank {os.environ.get('RANK')} could not join the process group: "
            f"{text[0] if text else type(exc).__name__}"
        ) from None
    try:
        yield
    finally:
        dist.destroy_process_group()
