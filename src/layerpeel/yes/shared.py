"""The file a YES walk shares with its helper processes, and the helpers' side of it.

One unlinked file, mapped into memory by the caller and every helper: a header with the claims
on the walk's subtrees and the current job (JSON), then X, Y and the stacked targets. The
caller writes it (`SharedFile`); a helper (`serve`) reads the job when woken, claims subtrees
until none is left, walks them, and answers through a pipe. `layerpeel.yes.helper`
starts, feeds and stops the helpers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import mmap
import os
import select
import signal
import struct
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: no helpers
    fcntl = None  # type: ignore[assignment]

_ITEM = 8  # float64 bytes
# The shared file starts with the claims of a walk's subtrees: the number of subtrees (int64),
# for each walker the first and one past the last unclaimed place on its list (two int64), then
# the walker that claimed each subtree (one byte each); X, Y and the stacked targets follow.
_HEADER = 1 << 18
_WALKERS = 8  # room for this many lists
_OWNERS = 8 + 16 * _WALKERS
_JOB = 1 << 13  # the current job: its length (int64), then its JSON text, up to _HEADER
_NOBODY = 255


class SharedFile:
    """An unlinked file mapped into memory, grown on demand: X, Y and the stacked targets."""

    def __init__(self) -> None:
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        fd, name = tempfile.mkstemp(prefix="layerpeel-yes-", dir=folder)
        os.unlink(name)
        self.fd = fd
        self.size = 0
        self.map: mmap.mmap | None = None
        self.holds: tuple[int, int] | None = None  # (walk key, size) whose X and Y are written

    def array(self, offset: int, shape: tuple[int, int]) -> np.ndarray:
        """The float64 (rows, N) array at element `offset` of the file."""
        assert self.map is not None
        return _array(self.map, offset, shape)

    def layout(self, key: int, x: np.ndarray, y: np.ndarray, rows: int) -> dict[str, Any]:
        """Room for X, Y and `rows` target rows; X and Y written unless already there.

        Returns what a helper needs to find them (the element offset of the targets included).
        """
        (n, n_samples), m = x.shape, y.shape[0]
        need = _HEADER + (n + m + rows) * n_samples * _ITEM
        if need > self.size:
            size = max(need, 2 * self.size)
            reserve(self.fd, size)
            self.map = mmap.mmap(self.fd, size)  # the old map goes when its arrays do
            self.size, self.holds = size, None
        start = _HEADER // _ITEM
        if self.holds != (key, self.size):
            self.array(start, (n, n_samples))[...] = x
            self.array(start + n * n_samples, (m, n_samples))[...] = y
            self.holds = (key, self.size)
        targets = start + (n + m) * n_samples
        return {
            "size": self.size,
            "key": key,
            "n": n,
            "m": m,
            "samples": n_samples,
            "targets": targets,
        }

    def open_claims(self, lists: list[list[int]]) -> None:
        """Make the subtrees claimable, each walker's `lists[w]` (indices) first by it."""
        assert self.map is not None
        count = sum(len(items) for items in lists)
        if len(lists) > _WALKERS or _OWNERS + count > _JOB:
            raise ValueError(f"{count} subtrees for {len(lists)} walkers do not fit the file")
        struct.pack_into("q", self.map, 0, count)
        for w, items in enumerate(lists):
            struct.pack_into("qq", self.map, 8 + 16 * w, 0, len(items))
        self.map[_OWNERS : _OWNERS + count] = bytes([_NOBODY]) * count

    def post(self, job: dict[str, Any]) -> None:
        """Write the job the helpers read when woken; raises ValueError if it does not fit."""
        assert self.map is not None
        data = json.dumps(job).encode()  # tuples (paths) become lists
        if _JOB + 8 + len(data) > _HEADER:
            raise ValueError(f"a job of {len(data)} bytes does not fit the shared file")
        struct.pack_into("q", self.map, _JOB, len(data))
        self.map[_JOB + 8 : _JOB + 8 + len(data)] = data

    def claim(
        self, side: int, lists: list[list[int]], patience: float, stall: Callable[[], None]
    ) -> int | None:
        """`claim` for the caller, which waits at most `patience` seconds for the lock.

        If the claims stay locked that long (a helper stopped while it held them), `stall()`
        must end the helpers, which frees the lock.
        """
        assert self.map is not None
        try:
            return claim(self.fd, self.map, side, lists, patience=patience)
        except TimeoutError:
            stall()
            return claim(self.fd, self.map, side, lists)

    def claimed_by(self, side: int) -> list[int]:
        """The subtrees walker `side` claimed."""
        assert self.map is not None
        count = struct.unpack_from("q", self.map, 0)[0]
        return [i for i in range(count) if self.map[_OWNERS + i] == side]

    def close(self) -> None:
        close_all({self.fd})


def close_all(fds: set[int]) -> None:
    """Close each file descriptor, already closed or not."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def reserve(fd: int, size: int) -> None:
    """Grow the file to `size` bytes with its space allocated now; OSError if there is none.

    Writing to a mapped page the file system cannot back kills the process (SIGBUS): a small
    /dev/shm (64 MB in containers) must fail here instead.
    """
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)
    else:
        free = os.fstatvfs(fd)
        if free.f_bavail * free.f_frsize < size - os.fstat(fd).st_size:
            raise OSError(f"no room for {size} bytes of YES data")
        os.ftruncate(fd, size)


def _array(mem: mmap.mmap, offset: int, shape: tuple[int, int]) -> np.ndarray:
    return np.frombuffer(mem, np.float64, shape[0] * shape[1], offset * _ITEM).reshape(shape)


def claim(
    fd: int, mem: mmap.mmap, side: int, lists: list[list[int]], patience: float | None = None
) -> int | None:
    """The next subtree for walker `side`, now claimed by it; None when all are claimed.

    It is the first unclaimed one on the walker's own list, else the last unclaimed one (the
    smallest) on the list with the most left. A POSIX record lock on the header orders the
    claims of the processes (a process that dies releases it); with `patience`, TimeoutError
    if it stays taken that many seconds.
    """
    if patience is None:
        fcntl.lockf(fd, fcntl.LOCK_EX, _OWNERS, 0)
    else:
        deadline = time.monotonic() + patience
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, _OWNERS, 0)
                break
            except OSError:  # held by another process for now
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the claims stayed locked for {patience} s") from None
                time.sleep(1e-4)
    try:
        head, tail = struct.unpack_from("qq", mem, 8 + 16 * side)
        if head < tail:
            struct.pack_into("q", mem, 8 + 16 * side, head + 1)
            i = lists[side][head]
        else:
            left = [struct.unpack_from("qq", mem, 8 + 16 * w) for w in range(len(lists))]
            w = max(range(len(lists)), key=lambda w: left[w][1] - left[w][0])
            head, tail = left[w]
            if head >= tail:
                return None
            struct.pack_into("q", mem, 16 + 16 * w, tail - 1)
            i = lists[w][tail - 1]
        mem[_OWNERS + i] = side
        return i
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN, _OWNERS, 0)


# ----------------------------------------------------------------------------- the helper's side


class _Served:
    """What a helper keeps between jobs: the mapped file and the walk of the current X, Y."""

    def __init__(self, data_fd: int, side: int) -> None:
        self.fd, self.side = data_fd, side
        self.map: mmap.mmap | None = None
        self.size = 0
        self.key: tuple[int, int] | None = None
        self.walk: Any = None

    def run(self) -> dict[str, Any]:
        """Walk the subtrees this helper claims in the job the file holds; the answer."""
        from layerpeel.yes.walk import AnchorWalk, Sink, scratch

        size = os.fstat(self.fd).st_size
        if size != self.size:
            self.map = mmap.mmap(self.fd, size)
            self.size = size
        mem = self.map
        assert mem is not None
        length = struct.unpack_from("q", mem, _JOB)[0]
        job = json.loads(mem[_JOB + 8 : _JOB + 8 + length])
        n, m, n_samples = job["n"], job["m"], job["samples"]
        start = _HEADER // _ITEM
        if self.key != (job["key"], self.size):
            x = _array(mem, start, (n, n_samples)).copy()
            y = _array(mem, start + n * n_samples, (m, n_samples)).copy()
            ws = scratch(m + int(job["bias"]), n_samples)
            self.walk = AnchorWalk(x, y, job["n_layers"], job["bias"], ws)
            self.key = (job["key"], self.size)
        walk = self.walk
        walk.cap = job["cap"]
        walk.set_targets(_array(mem, job["targets"], (sum(job["sizes"]), n_samples)), job["sizes"])
        sink = Sink(walk.ws)
        began, cpu = time.perf_counter(), time.process_time()
        mine = functools.partial(claim, self.fd, mem, self.side, job["lists"])
        walk.walk_tasks(sink, [tuple(p) for p in job["tasks"]], mine)
        return {
            "losses": [[list(k), v] for k, v in sink.losses.items()],
            "stats": sink.stats,
            "seconds": time.perf_counter() - began,
            "cpu": time.process_time() - cpu,
        }


def serve(alive_fd: int, wake_fd: int, reply_fd: int, data_fd: int, side: int) -> None:
    """The helper's loop: wake up, run the job in the shared file, answer; until EOF on `alive_fd`.

    Each answer is one JSON line on `reply_fd`: the losses and work counts of the subtrees the
    helper claimed, or the error that stopped it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(1)
    served = _Served(data_fd, side)
    eventfd = hasattr(os, "eventfd")
    with os.fdopen(reply_fd, "wb") as replies:
        replies.write(b"ready\n")
        replies.flush()
        while True:
            ready, _, _ = select.select([alive_fd, wake_fd], [], [])
            if alive_fd in ready:
                return
            if eventfd:
                os.eventfd_read(wake_fd)
            else:
                os.read(wake_fd, 1)
            try:
                answer = served.run()
            except Exception as exc:  # noqa: BLE001 - reported to the caller, who walks the share
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            replies.write(json.dumps(answer).encode() + b"\n")
            replies.flush()
