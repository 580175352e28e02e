"""The processes an analysis runs on (`World`) and the collectives between them.

One process is a world of size 1: it runs every unit of the plan itself and gathers nothing.
The ranks of a torch.distributed group each run their share and gather the results. Results
travel as JSON text in byte tensors (no pickle). Every rank takes part in every collective in
the same order whatever happens locally: a rank whose work raised sends its error instead of its
result, so the others never wait for a rank that gave up.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from layerpeel.errors import LayerpeelError

log = logging.getLogger(__name__)


class ShardingError(LayerpeelError):
    """Sharded work that cannot start or cannot be merged: no process group, ranks that disagree."""


class RankFailure(ShardingError):
    """The work of one or more ranks raised; `results` holds what the other ranks computed."""

    def __init__(self, message: str, failures: dict[int, str], results: dict[int, Any]) -> None:
        super().__init__(message)
        self.failures = failures  # rank -> "ExceptionType: message"
        self.results = results  # rank -> result, for the ranks that succeeded


def require_group(group: Any = None) -> tuple[int, int]:
    """(rank, world size) in `group`; a clear error when no process group is initialised."""
    import torch.distributed as dist

    if not dist.is_available():
        raise ShardingError("sharding needs torch.distributed, which this torch build lacks")
    if not dist.is_initialized():
        raise ShardingError(
            "sharding was asked for, but no torch.distributed process group is initialised: "
            "launch with `torchrun --nproc-per-node N -m layerpeel analyze ...`, or call "
            "torch.distributed.init_process_group() on every rank first"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def _device(group: Any) -> torch.device:
    """Where collective tensors live: the current CUDA device for NCCL, else the CPU."""
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_json(obj: Any, group: Any = None) -> list[Any]:
    """Every rank's `obj` (JSON-serialisable), in rank order, on every rank."""
    import torch.distributed as dist

    _, world = require_group(group)
    device = _device(group)
    data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8).to(device)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    chunks = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(chunks, padded, group=group)
    return [
        json.loads(bytes(c[: int(s)].cpu().numpy()).decode())
        for c, s in zip(chunks, sizes, strict=True)
    ]


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def env_world_size() -> int | None:
    """The world size the launcher announced ($WORLD_SIZE), if any."""
    value = os.environ.get("WORLD_SIZE")
    try:
        return int(value) if value else None
    except ValueError:
        return None


def gather_work(
    work: Callable[[], Any],
    group: Any = None,
    signature: dict[str, Any] | None = None,
) -> list[Any]:
    """Run `work` here, then gather every rank's result; raise on disagreement or failure.

    `signature` (JSON) describes what this rank believes it is part of: world size, settings,
    data. Every rank's signature must equal rank 0's, otherwise `ShardingError` names the ranks
    that differ and how. A rank whose work raised reports its error in the same gather, so the
    others are never left waiting; then every rank raises the same `RankFailure`, naming the
    failed ranks and holding the other ranks' results.
    """
    rank, world = require_group(group)
    payload: dict[str, Any] = {"rank": rank, "signature": signature or {}}
    try:
        payload["result"] = work()
    except Exception as exc:  # noqa: BLE001 - sent to every rank, then raised there
        log.debug("rank %d: sharded work failed", rank, exc_info=True)
        payload["error"] = one_line(exc)
    payloads = all_gather_json(payload, group)
    reference = payloads[0]["signature"]
    for p in payloads[1:]:
        if p["signature"] != reference:
            diff = sorted(
                k
                for k in set(reference) | set(p["signature"])
                if reference.get(k) != p["signature"].get(k)
            )
            shown = ", ".join(
                f"{k} {p['signature'].get(k)!r} (rank 0: {reference.get(k)!r})" for k in diff
            )
            raise ShardingError(f"rank {p['rank']} of {world} disagrees with rank 0: {shown}")
    failures = {p["rank"]: p["error"] for p in payloads if "error" in p}
    if failures:
        named = "; ".join(f"rank {r}: {e}" for r, e in sorted(failures.items()))
        results = {p["rank"]: p["result"] for p in payloads if "error" not in p}
        raise RankFailure(
            f"sharded work failed on {len(failures)} of {world} rank(s): {named}",
            failures,
            results,
        )
    return [p["result"] for p in payloads]


class Encodable(Protocol):
    """A rank's result: JSON out, and back in on every rank."""

    def to_dict(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Encodable)


@dataclass(frozen=True)
class World:
    """The processes of an analysis: one alone (the default), or the ranks of a process group."""

    rank: int = 0
    size: int = 1
    group: Any = None  # the torch.distributed group; None for a single process
    sharded: bool = False  # whether results are gathered over a group

    @classmethod
    def of(cls, group: Any = None) -> World:
        """The ranks of `group` (default: the whole world); `ShardingError` without a group."""
        rank, size = require_group(group)
        return cls(rank, size, group, sharded=True)

    def gather(
        self,
        work: Callable[[], R],
        decode: Callable[[dict[str, Any]], R],
        signature: Callable[[], dict[str, Any]],
    ) -> list[R]:
        """Every rank's `work()`, in rank order; alone, this process's result as it is.

        Sharded, results travel as JSON and `decode` reads them back; `signature()` is what
        every rank must agree on (`gather_work`).
        """
        if not self.sharded:
            return [work()]
        results = gather_work(lambda: work().to_dict(), self.group, signature())
        return [decode(r) for r in results]
