"""Helper processes for the YES walk: each walks its share of the anchor subtrees on its own core.

Threads of one process walk the tree only 1.3-1.4x faster on two cores than one thread: every
node runs Python between its products, and the threads queue for the interpreter lock. Two
processes each walk a whole tree at full speed side by side (measured on 2 cores). So a walk
on more than one thread gives subtrees to helper processes and walks the rest itself.

A helper is a Python process that runs `yes_shared.serve`, started in the background at the
first walk that could use it (that walk and the next ones run on threads until it has started)
and kept for the life of the process. X, Y, the stacked targets, the job (JSON) and the claims
on the walk's subtrees lie in a file that all the processes map into memory, created and
unlinked at once, so nothing is left behind (`yes_shared.SharedFile`; `yes_split` plans and
walks the shared tree). A helper waits to be woken, claims subtrees until none is left, and
answers with their losses through a pipe. It runs one thread, ignores Ctrl-C (the caller
handles it) and exits when the pipe it watches for its caller's end closes.

Any failure (a helper that cannot start, dies, answers late or with an error, a file that has
no room) stops the helpers for the rest of the process with one logged warning; the subtrees
they claimed and did not answer are walked by the caller, so the results never depend on them.
`LAYERPEEL_YES_HELPERS=0` turns them off.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from layerpeel.yes import shared as yes_shared
from layerpeel.yes.shared import SharedFile, close_all

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
_PATH_ENV = "LAYERPEEL_YES_HELPER_PATH"
# What a helper runs: this process's sys.path, then `serve` with the descriptors it was given.
_START = (
    f"import json, os, sys; sys.path[:] = json.loads(os.environ.pop({_PATH_ENV!r})); "
    "from layerpeel.yes.shared import serve; serve(*map(int, sys.argv[1:6]))"
)


def enabled() -> bool:
    """Whether helpers may be used here (POSIX, not turned off by `LAYERPEEL_YES_HELPERS=0`)."""
    return yes_shared.fcntl is not None and os.environ.get(ENV, "").strip() != "0"


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


class Helper:
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
            close_all(ours)
            raise
        finally:
            close_all({alive_r, reply_w, wake_r} - ours)  # the helper's ends
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

    def close(self, patience: float = 1.0) -> None:
        """End the helper: close its pipes (it exits when it sees that), kill it after `patience` s."""
        close_all({self.alive_w, self.wake_w, self.reply_r})
        try:
            self.proc.wait(timeout=patience)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Pool:
    """The helpers of this process (started once), their shared file, and who is using them."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()  # one walk at a time uses the helpers
        self.helpers: list[Helper] = []
        self.shared: SharedFile | None = None
        self.stopped: str | None = None  # why the helpers were stopped for good
        self.cpu = 0.0  # CPU seconds the helpers reported for their jobs

    def start(self, count: int) -> None:
        try:
            self.shared = SharedFile()
            for side in range(1, count + 1):
                self.helpers.append(Helper(self.shared.fd, side))
        except Exception as exc:  # noqa: BLE001 - any failure to start leaves the walk on threads
            self.stop(f"could not start: {exc}")

    def ready(self) -> list[Helper]:
        """All the helpers once every one has started, else none (walker w is helper w)."""
        try:
            started = [helper.poll_ready() for helper in self.helpers]
        except Exception as exc:  # noqa: BLE001
            self.stop(f"a helper did not start: {exc}")
            return []
        return list(self.helpers) if all(started) else []

    def stop(self, reason: str) -> None:
        """Stop every helper for the rest of the process (one warning)."""
        if self.stopped is None:
            logger.warning("YES helper processes stopped (%s); walks run on threads", reason)
            self.stopped = reason
        for helper in self.helpers:
            helper.close(patience=0.0)  # a failed or interrupted walk does not wait for them
        self.helpers = []  # the shared file stays: a walk reads there what a helper claimed

    def close(self) -> None:
        """At exit: end the helpers and close the shared file (in the process that has them)."""
        if os.getpid() == self.pid:
            for helper in self.helpers:
                helper.close()
            self.helpers = []
            if self.shared is not None:
                self.shared.close()


_POOL: Pool | None = None
_POOL_LOCK = threading.Lock()


@contextlib.contextmanager
def lease(threads: int, work: float) -> Iterator[tuple[list[Helper], Pool | None]]:
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
            _POOL = Pool()
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
