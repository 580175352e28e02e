"""Helper processes for the YES walk: each walks its share of the anchor subtrees on its own core.

Threads of one process walk the tree only 1.3-1.4x faster on two cores than one thread: every
node runs Python between its products, and the threads queue for the interpreter lock. Two
processes each walk a whole tree at full speed side by side (measured on 2 cores). So a walk
on more than one thread gives subtrees to helper processes and walks the rest itself.

A helper is a Python process that runs `serve`, started in the background at the first walk
that could use it (that walk and the next ones run on threads until it has started) and kept
for the life of the process. X, Y, the stacked targets, the job (JSON) and the claims on the
walk's subtrees lie in a file that all the processes map into memory, created and unlinked at
once, so nothing is left behind. A helper waits to be woken, claims subtrees until none is
left, and answers with their losses through a pipe. It runs one thread, ignores Ctrl-C (the
caller handles it) and exits when the pipe it watches for its caller's end closes.

Any failure (a helper that cannot start, dies, answers late or with an error, a file that has
no room) stops the helpers for the rest of the process with one logged warning; the subtrees
they claimed and did not answer are walked by the caller, so the results never depend on them.
`LAYERPEEL_YES_HELPERS=0` turns them off.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: no helpers
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

ENV = "LAYERPEEL_YES_HELPERS"  # "0" turns the helpers off; a number caps how many
MAX_HELPERS = 3  # each one holds torch in memory (about 270 MB resident)
# Walks estimated below this many multiply-adds (`AnchorWalk._work`; the paper's setting,
# N = 800, m = 100, L = 5, is 4e8) stay on threads: sharing a walk costs about 1 ms (the shared
# file, the plan, the answer), more than a helper saves on a walk of a few milliseconds.
MIN_WORK = 5e7
# A helper that has not answered within 20 times the caller's own share of a walk, and at least
# this many seconds, is taken for failed.
MIN_TIMEOUT = 1.0
_ITEM = 8  # float64 bytes
# The shared file starts with the claims of a walk's subtrees: the number of subtrees (int64),
# for each walker the first and one past the last unclaimed place on its list (two int64), then
# the walker that claimed each subtree (one byte each); X, Y and the stacked targets follow.
_HEADER = 1 << 18
_WALKERS = 8  # room for this many lists
_OWNERS = 8 + 16 * _WALKERS
_JOB = 1 << 13  # the current job: its length (int64), then its JSON text, up to _HEADER
_NOBODY = 255
_PATH_ENV = "LAYERPEEL_YES_HELPER_PATH"
# What a helper runs: this process's sys.path, then `serve` with the descriptors it was given.
_START = (
    f"import json, os, sys; sys.path[:] = json.loads(os.environ.pop({_PATH_ENV!r})); "
    "from layerpeel.bounds.yes_helper import serve; serve(*map(int, sys.argv[1:6]))"
)


def enabled() -> bool:
    """Whether helpers may be used here (POSIX, not turned off by `LAYERPEEL_YES_HELPERS=0`)."""
    return fcntl is not None and os.environ.get(ENV, "").strip() != "0"


def wanted(threads: int) -> int:
    """How many helpers a walk on `threads` threads uses: one per further core, at most 3."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    count = min(threads, cores) - 1
    cap = os.environ.get(ENV, "").strip()
    if cap.isdigit():
        count = min(count, int(cap))
    return max(0, min(count, MAX_HELPERS))


class _Helper:
    """One helper process: walker `side` of the walks it joins.

    The jobs themselves lie in the shared file. The helper waits for a wake-up: an eventfd on
    Linux, whose wake-up lets the caller run on (a pipe's asks the scheduler to run the helper
    on the caller's core: writes then stalled the caller 2-5 ms); a pipe elsewhere. It answers
    through a pipe, and exits when the pipe it watches for the caller's end closes.
    """

    def __init__(self, data_fd: int, side: int) -> None:
        alive_r, self.alive_w = os.pipe()  # never written: its end is the caller's end
        self.reply_r, reply_w = os.pipe()
        if hasattr(os, "eventfd"):
            wake_r = self.wake_w = os.eventfd(0)
        else:
            wake_r, self.wake_w = os.pipe()
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        env[_PATH_ENV] = json.dumps(sys.path)  # the helper imports what this process imports
        fds = (alive_r, wake_r, reply_w, data_fd)
        ours = {self.alive_w, self.wake_w, self.reply_r}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _START, *map(str, fds), str(side)],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        except BaseException:
            _close_all(ours)
            raise
        finally:
            _close_all({alive_r, reply_w, wake_r} - ours)  # the helper's ends
        self.side = side
        self.pending = b""
        self.ready = False

    def poll_ready(self) -> bool:
        """Whether the helper has started (its first line), without waiting."""
        if not self.ready:
            line = self._line(0.0)
            if line is not None:
                if line != b"ready":
                    raise RuntimeError(f"unexpected first line {line[:80]!r}")
                self.ready = True
        return self.ready

    def wake(self) -> None:
        """Tell the helper that a job waits in the shared file."""
        if hasattr(os, "eventfd"):
            os.eventfd_write(self.wake_w, 1)
        else:
            os.write(self.wake_w, b"j")

    def reply(self, timeout: float) -> dict[str, Any]:
        """The answer to the job sent, waiting at most `timeout` seconds; raises on failure."""
        line = self._line(timeout)
        if line is None:
            raise TimeoutError(f"no answer within {timeout:.1f} s")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def _line(self, timeout: float) -> bytes | None:
        """The next line from the helper, or None if none came within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.reply_r], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.reply_r, 1 << 16)
            if not chunk:
                raise EOFError(f"the helper exited (code {self.proc.poll()})")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line

    def close(self) -> None:
        _close_all({self.alive_w, self.wake_w, self.reply_r})
        try:
            self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Shared:
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
            _reserve(self.fd, size)
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

    def claim(self, side: int, lists: list[list[int]], stall: Callable[[], None]) -> int | None:
        """`_claim` for the caller, which never waits long for the lock.

        If the claims stay locked for `MIN_TIMEOUT` seconds (a helper stopped while it held
        them), `stall()` must end the helpers, which frees the lock.
        """
        assert self.map is not None
        try:
            return _claim(self.fd, self.map, side, lists, patience=MIN_TIMEOUT)
        except TimeoutError:
            stall()
            return _claim(self.fd, self.map, side, lists)

    def claimed_by(self, side: int) -> list[int]:
        """The subtrees walker `side` claimed."""
        assert self.map is not None
        count = struct.unpack_from("q", self.map, 0)[0]
        return [i for i in range(count) if self.map[_OWNERS + i] == side]

    def close(self) -> None:
        _close_all({self.fd})


def _close_all(fds: set[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class _Pool:
    """The helpers of this process (started once), their shared file, and who is using them."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()  # one walk at a time uses the helpers
        self.helpers: list[_Helper] = []
        self.shared: _Shared | None = None
        self.stopped: str | None = None  # why the helpers were stopped for good
        self.cpu = 0.0  # CPU seconds the helpers reported for their jobs

    def start(self, count: int) -> None:
        try:
            self.shared = _Shared()
            for side in range(1, count + 1):
                self.helpers.append(_Helper(self.shared.fd, side))
        except Exception as exc:  # noqa: BLE001 - any failure to start leaves the walk on threads
            self.stop(f"could not start: {exc}")

    def ready(self) -> list[_Helper]:
        out = []
        for helper in self.helpers:
            try:
                if helper.poll_ready():
                    out.append(helper)
            except Exception as exc:  # noqa: BLE001
                self.stop(f"a helper did not start: {exc}")
                return []
        return out

    def stop(self, reason: str) -> None:
        """Stop every helper for the rest of the process (one warning)."""
        if self.stopped is None:
            logger.warning("YES helper processes stopped (%s); walks run on threads", reason)
            self.stopped = reason
        for helper in self.helpers:
            helper.close()
        self.helpers = []  # the shared file stays: a walk reads there what a helper claimed

    def close(self) -> None:
        """At exit: end the helpers and close the shared file (in the process that has them)."""
        if os.getpid() == self.pid:
            for helper in self.helpers:
                helper.close()
            self.helpers = []
            if self.shared is not None:
                self.shared.close()


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


@contextlib.contextmanager
def lease(threads: int, work: float) -> Iterator[tuple[list[_Helper], _Pool | None]]:
    """The ready helpers a walk on `threads` threads of about `work` multiply-adds may use.

    Empty while they start (the first call starts them), when another walk holds them, when the
    walk is small, or when helpers are off or stopped.
    """
    global _POOL
    count = wanted(threads)
    if count == 0 or work < MIN_WORK or not enabled():
        yield [], None
        return
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():  # a forked child starts its own
            _POOL = _Pool()
        pool = _POOL
    if not pool.lock.acquire(blocking=False):
        yield [], None
        return
    try:
        if pool.stopped is None and not pool.helpers:
            pool.start(count)
        yield (pool.ready() if pool.stopped is None else []), pool
    finally:
        pool.lock.release()


def helper_cpu() -> float:
    """CPU seconds this process's helpers spent on the jobs they answered (for benchmarks)."""
    return 0.0 if _POOL is None else _POOL.cpu


def wait_ready(threads: int, timeout: float = 30.0) -> bool:
    """Start the helpers a walk on `threads` threads would use and wait until they are ready.

    For benchmarks and long runs that want them from the first walk; False if none is usable.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with lease(threads, float("inf")) as (helpers, pool):
            if pool is None or pool.stopped is not None:
                return False
            if helpers and len(helpers) == len(pool.helpers):
                return True
        time.sleep(0.02)
    return False


def _close_pool() -> None:
    if _POOL is not None:
        _POOL.close()


atexit.register(_close_pool)


def _reserve(fd: int, size: int) -> None:
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


def _claim(
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
        from layerpeel.bounds.yes_walk import AnchorWalk, _Sink, scratch

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
        walk.cap, walk.sizes = job["cap"], job["sizes"]
        walk.offsets = [sum(walk.sizes[:i]) for i in range(len(walk.sizes) + 1)]
        walk.targets = _array(mem, job["targets"], (walk.offsets[-1], n_samples))
        sink = _Sink(walk.ws)
        began, cpu = time.perf_counter(), time.process_time()
        claim = functools.partial(_claim, self.fd, mem, self.side, job["lists"])
        walk.walk_tasks(sink, [tuple(p) for p in job["tasks"]], claim)
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
