"""The computation behind YES bounds: every J(sigma) by one depth-first walk over anchor prefixes."""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import logging
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from layerpeel.yes import helper as yes_helper
from layerpeel.yes.basis import KINDS, Basis, mm, tilde

logger = logging.getLogger(__name__)

Subset = tuple[int, ...]  # increasing 1-based indices of the hidden layers used as anchors
Path = tuple[int, ...]  # the targets (1..L, L = Y) the layers from layer 1 on fitted: a node

# Buffers a thread keeps between `yes_bounds` calls on data of the same shape, up to this size.
SCRATCH_BYTES = 64 * 2**20
_SCRATCH = threading.local()
_KEYS = itertools.count()  # tells helper processes which X, Y a walk is on


class Workspace:
    """Arrays reused from one walk to the next, which saves the page faults of fresh arrays.

    Fresh m x N arrays cost page faults that measured as much as the products that fill them.
    `children[layer]` (>= choices, m + bias, N) receives the outputs a node of that layer fits (a
    node's children stay alive while its subtree is walked; the next node of the layer reuses
    them); `targets` (>= L m, N) holds the stacked live rows of G_1..G_{L-1}, Y; `spares` are
    the (m + bias, N) inputs of the subtrees a parallel walk splits off, kept for the next walk.
    """

    def __init__(self, rows: int, n_samples: int) -> None:
        self.rows, self.n_samples = rows, n_samples  # m + bias, N
        self.children: dict[int, np.ndarray] = {}
        self.targets = np.empty((0, n_samples))
        self.spares: list[np.ndarray] = []  # (m + bias, N) inputs of the tasks of parallel walks
        self.lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        kept = [self.targets, *self.children.values(), *self.spares]
        return sum(b.nbytes for b in kept)

    def spare(self) -> np.ndarray:
        """A (m + bias, N) buffer to keep until `give_back` (any thread)."""
        with self.lock:
            if self.spares:
                return self.spares.pop()
        return np.empty((self.rows, self.n_samples))

    def give_back(self, buffers: list[np.ndarray]) -> None:
        with self.lock:
            self.spares.extend(buffers)

    def child_buffer(self, layer: int, count: int) -> np.ndarray:
        """The buffer for the `count` children a node of `layer` fits, (>= count, m + bias, N)."""
        buf = self.children.get(layer)
        if buf is None or buf.shape[0] < count:
            buf = np.empty((count, self.rows, self.n_samples))
            self.children[layer] = buf
        return buf

    def target_buffer(self, rows: int) -> np.ndarray:
        """A (rows, N) C-contiguous buffer for the stacked targets."""
        if self.targets.shape[0] < rows:
            self.targets = np.empty((rows, self.n_samples))
        return self.targets[:rows]


# The extra threads of parallel walks, kept between calls: starting them took 1-2 ms a call.
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """The kept pool, grown to at least `workers` threads (a replaced pool finishes its work)."""
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < workers:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="layerpeel-yes")
            _POOL_SIZE = workers
        return _POOL


def scratch(rows: int, n_samples: int) -> Workspace:
    """The workspace of the calling thread for (m + bias, N), kept while under SCRATCH_BYTES."""
    ws = _SCRATCH.workspace = _kept(getattr(_SCRATCH, "workspace", None), rows, n_samples)
    return ws


def _kept(ws: Workspace | None, rows: int, n_samples: int) -> Workspace:
    """`ws` while it serves (rows, N) data and is under SCRATCH_BYTES, else a fresh workspace."""
    if (
        ws is not None
        and (ws.rows, ws.n_samples) == (rows, n_samples)
        and (ws.nbytes <= SCRATCH_BYTES)
    ):
        return ws
    return Workspace(rows, n_samples)


class AnchorWalk:
    """All J(sigma) for fixed data X (n, N), Y (m, N): a depth-first walk over anchor prefixes.

    A node is one input representation of one layer; all subsets that share the targets of the
    layers before it share the node, its factorization, and one stacked projection onto every
    target it can fit next. The X factorization and YES-0 do not depend on the net: done once.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        n_layers: int,
        bias: bool,
        workspace: Workspace | None = None,
    ) -> None:
        self.x, self.y, self.n_layers, self.bias = x, y, n_layers, bias
        self.m, self.n_samples = y.shape
        rows = self.m + int(bias)
        self.ws = Workspace(rows, self.n_samples) if workspace is None else workspace
        self.key = next(_KEYS)
        self.yy = float(np.einsum("ij,ij->", y, y))
        self.y_live = y[(y != 0).any(1)]  # (m', N): zero rows of Y are fitted exactly
        self.x_basis = Basis(tilde(x, bias))
        self._yes0: float | None = None  # computed by the first run (on a thread of its own)
        # Per run: the stacked targets and the cap.
        self.targets = y
        self.sizes: list[int] = []
        self.offsets: list[int] = []
        self.cap = 0

    @property
    def yes0_known(self) -> bool:
        """Whether YES-0 is computed already (it is once per walk object)."""
        return self._yes0 is not None

    @property
    def yes0(self) -> float:
        """YES-0, the loss of the path that fits every layer onto Y (computed once)."""
        return self._yes0 if self._yes0 is not None else self.compute_yes0()

    def compute_yes0(self) -> float:
        """Compute YES-0 and keep it."""
        self._yes0 = self._yes0_path(self.ws)
        return self._yes0

    def _yes0_path(self, ws: Workspace) -> float:
        """YES-0: fit every layer onto Y in turn, from X.

        When a layer's ReLU changes nothing (its fit Z = Y pinv(B~) B~ has no negative entry),
        the path has converged: H~ = [Z; 1] spans a subspace of B~'s rows that holds Z's rows, so
        fitting Y from it gives Z again, exactly, in every later layer and in the linear last one.
        The loss is then ||Y - Z||^2 / N, with no further factorization.
        """
        basis = self.x_basis
        buf = ws.child_buffer(0, 2)  # the YES-0 path needs only the latest two outputs
        for layer in range(1, self.n_layers):
            h = buf[layer % 2]
            z = h[: self.m]
            mm(basis.coef(self.y), basis.rows, out=z)
            if float(z.min()) >= 0.0:
                diff = np.subtract(self.y, z, out=z)
                return float(np.einsum("ij,ij->", diff, diff)) / self.n_samples
            np.maximum(z, 0.0, out=z)
            if self.bias:
                h[self.m] = 1.0
            basis = Basis(h[: self.m + int(self.bias)])
        return basis.sse(self.y, self.yy) / self.n_samples

    def run(
        self, hidden: list[np.ndarray], cap: int, threads: int = 1
    ) -> tuple[dict[Subset, float], dict[str, int]]:
        """J(sigma) for every subset of at most `cap` anchors, and the work counts.

        With `threads` > 1 the tree is shared with helper processes when they are ready
        (`yes_split`), else walked by that many threads that share a queue of subtrees (the
        products and factorizations release the GIL; see `_walk_parallel`).
        """
        self.cap = cap
        main = Sink(self.ws)
        with _ONE_THREAD.held():
            if self.cap > 0 and threads > 1:
                # imported here: yes_split builds on this module
                from layerpeel.yes.split import walk_split

                with yes_helper.lease(threads, self._work()) as (helpers, pool):
                    if not (helpers and pool and walk_split(self, main, hidden, helpers, pool)):
                        self._walk_parallel(main, hidden, threads)
            elif self.cap > 0:
                self.stack(hidden)
                self._descend(main, self.x_basis, 1, (), None)
            main.losses[()] = self.yes0
        main.stats["subsets"] = len(main.losses)
        logger.debug("YES work: %s", main.stats)
        return main.losses, main.stats

    def _work(self) -> float:
        """About how many multiply-adds the walk takes: three products of m x m x N a subset."""
        subsets = sum(math.comb(self.n_layers - 1, k) for k in range(self.cap + 1))
        return 3.0 * subsets * self.ws.rows**2 * self.n_samples

    def stack(
        self, hidden: list[np.ndarray], room: Callable[[int], np.ndarray] | None = None
    ) -> None:
        """Stack the live rows of the targets G_1..G_{L-1}, Y into `targets`, in layer order.

        Dead units (all-zero rows) of a target give all-zero rows of every fit onto it, which
        change no row space: each target keeps only its live rows. `room(rows)` gives the
        (rows, N) array to stack into (default: the workspace's).
        """
        masks = [(t != 0).any(1) for t in hidden]
        sizes = [int(k.sum()) for k in masks] + [self.y_live.shape[0]]
        self.set_targets((room or self.ws.target_buffer)(sum(sizes)), sizes)
        for t, keep, lo, hi in zip(hidden, masks, self.offsets, self.offsets[1:], strict=False):
            np.compress(keep, t, axis=0, out=self.targets[lo:hi])
        self.targets[self.offsets[-2] :] = self.y_live

    def set_targets(self, stack: np.ndarray, sizes: list[int]) -> None:
        """Walk onto `stack` (sum(sizes), N): G_1..G_{L-1}, Y in layer order, sizes[i] rows each."""
        self.sizes = sizes
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self.targets = stack

    def _walk_parallel(self, main: Sink, hidden: list[np.ndarray], threads: int) -> None:
        """Walk the tree on `threads` threads that share one queue of subtrees; merge into `main`.

        Threads take the largest subtree first (one whose next anchor is layer t holds about
        2^(L-1-t) subsets). A subtree still large compared with the whole is split: its root's
        children go back on the queue instead of being walked, each built by the thread that takes
        it, into a buffer kept for the walk (fresh ones cost page faults). YES-0, when not known
        yet, is a task of its own, started while the targets are stacked. Each thread has workspace
        buffers of its own; torch and BLAS run on one thread each (`_OneThread`).
        """
        total = 2.0 ** (self.n_layers - 1)
        split = max(4.0, total / (4 * threads))
        queue = _Queue([_YES0] if self._yes0 is None else [])
        queue.pending += 1  # the walk's root, added once the targets are stacked
        sinks = [main]
        taken: list[np.ndarray] = []  # the inputs of split-off children, given back at the end

        def walk(i: int) -> None:
            if i:  # a pool thread: its own buffers, kept as the calling thread keeps its own
                torch.set_num_threads(1)  # this thread's OpenMP threads, not only the caller's
                sink = Sink(scratch(self.ws.rows, self.n_samples))
                sinks.append(sink)
            else:
                sink = main
            while (task := queue.take()) is not None:
                try:
                    if task.layer == 0:
                        self._yes0 = self._yes0_path(sink.ws)
                        continue
                    basis = task.basis
                    if basis is None:  # a child to build first, from its parent's coefficients
                        assert task.parent is not None and task.coef is not None
                        basis = self._spare_child(sink, task.parent, task.coef, taken)
                    args = (sink, basis, task.layer, task.subset, task.forced)
                    if task.weight >= split:
                        children: list[_Task] = []
                        self._descend(*args, defer=children)
                        queue.add(children)
                    else:
                        self._descend(*args)
                finally:
                    queue.done()

        futures = [_pool(threads - 1).submit(walk, i) for i in range(1, threads)]
        try:
            try:
                self.stack(hidden)
                queue.add([_Task(1, (), None, total, self.x_basis)])
            finally:
                queue.done()  # the root's place
            walk(0)
        finally:
            for f in futures:
                f.result()
            self.ws.give_back(taken)
        for sink in sinks[1:]:
            main.merge(sink.losses, sink.stats)

    def walk_tasks(self, sink: Sink, tasks: list[Path], claim: Callable[[], int | None]) -> None:
        """Walk the subtree at `tasks[i]` for each index i that `claim()` gives.

        `claim` ends the walk by returning None or raising StopIteration. The nodes on the way
        to a subtree are built once per call, into kept buffers.
        """
        built: dict[Path, tuple[Basis, Subset, int | None]] = {(): (self.x_basis, (), None)}
        taken: list[np.ndarray] = []

        def node(path: Path) -> tuple[Basis, Subset, int | None]:
            if path not in built:
                basis, subset, forced = node(path[:-1])
                layer, target = len(path), path[-1]
                lo, hi = self.offsets[target - 1], self.offsets[target]
                sink.stats["projections"] += 1
                child = self._spare_child(sink, basis, basis.coef(self.targets[lo:hi]), taken)
                built[path] = (child, *step(layer, subset, forced, target, self.n_layers))
            return built[path]

        try:
            with contextlib.suppress(StopIteration):
                while (i := claim()) is not None:
                    basis, subset, forced = node(tasks[i])
                    self._descend(sink, basis, len(tasks[i]) + 1, subset, forced)
        finally:
            self.ws.give_back(taken)

    def _spare_child(
        self, sink: Sink, basis: Basis, coef: np.ndarray, taken: list[np.ndarray]
    ) -> Basis:
        """`_child` into a spare buffer of the workspace, counted in `sink`.

        The buffer is listed in `taken`, to give back once the walk is done.
        """
        into = self.ws.spare()
        taken.append(into)
        return sink.factored(self._child(basis, coef, into))

    def _child(self, basis: Basis, coef: np.ndarray, into: np.ndarray) -> Basis:
        """The factored H~ = [ReLU(coef @ basis.rows); 1] of a fitted layer's output, coef (c, q).

        `into` (>= c + bias, N), C-contiguous, receives H~.
        """
        rows = coef.shape[0]
        h = into[: rows + int(self.bias)]  # (c + bias, N)
        out = h[:rows]  # a C-contiguous view: the product and the ReLU are written in place
        mm(coef, basis.rows, out=out)
        np.maximum(out, 0.0, out=out)
        if self.bias:
            h[rows] = 1.0
        return Basis(h)

    def choices(self, layer: int, subset: Subset, forced: int | None) -> list[int]:
        """The targets layer `layer` may fit, in increasing order (see `_descend`)."""
        n_layers = self.n_layers
        if forced is not None:
            choices = [forced]
        elif len(subset) < self.cap:
            choices = list(range(layer, n_layers + 1))  # G_layer..G_{L-1}, Y
        else:
            choices = [n_layers]
        if layer == 1:  # the all-onto-Y path is YES-0, already known
            choices = [c for c in choices if c != n_layers]
        return choices

    def _descend(
        self,
        sink: Sink,
        basis: Basis,
        layer: int,
        subset: Subset,
        forced: int | None,
        defer: list[_Task] | None = None,
    ) -> None:
        """Fit `layer` from the input factored in `basis` onto each target it may take, recurse.

        `forced` is the target this layer must fit (an anchor not reached yet, or Y = L); None
        means the layer before reached its anchor, so the target is free: a later anchor or Y.
        Results and buffers are `sink`'s. With `defer`, the children are listed there as tasks
        (to build and walk) instead.
        """
        n_layers = self.n_layers
        if layer == n_layers:  # only Y is left: the loss needs no predictions
            sink.stats["projections"] += 1
            sink.losses[subset] = basis.sse(self.y_live, self.yy) / self.n_samples
            return
        choices = self.choices(layer, subset, forced)
        lo, hi = self.offsets[choices[0] - 1], self.offsets[choices[-1]]
        coef = basis.coef(self.targets[lo:hi])  # (rows of the chosen targets, q): one product
        sink.stats["projections"] += len(choices)
        buf = sink.ws.child_buffer(layer, len(choices)) if defer is None else None
        start = 0
        for i, target in enumerate(choices):
            new, nxt = step(layer, subset, forced, target, n_layers)
            stop = start + self.sizes[target - 1]
            if defer is not None:
                # subsets below: every choice of the anchors after this one
                weight = 2.0 ** (n_layers - 1 - max(target, layer))
                defer.append(
                    _Task(layer + 1, new, nxt, weight, parent=basis, coef=coef[start:stop])
                )
            else:
                assert buf is not None
                child = sink.factored(self._child(basis, coef[start:stop], buf[i]))
                self._descend(sink, child, layer + 1, new, nxt)
            start = stop


def step(
    layer: int, subset: Subset, forced: int | None, target: int, n_layers: int
) -> tuple[Subset, int | None]:
    """The anchors and the forced target of the child that fits `target` at `layer`."""
    new = subset + (target,) if forced is None and target < n_layers else subset
    return new, None if target == layer else target


@dataclasses.dataclass
class _Task:
    """A subtree of the walk: the input of `layer`, the anchors so far, the target.

    The input is `basis`, or is built from `parent` and the fitted layer's `coef` by whoever
    takes the task. Layer 0 is the task "compute YES-0".
    """

    layer: int
    subset: Subset
    forced: int | None
    weight: float  # about how many subsets it holds
    basis: Basis | None = None
    parent: Basis | None = None
    coef: np.ndarray | None = None


_YES0 = _Task(0, (), None, math.inf)


class _Queue:
    """The subtrees waiting to be walked, largest first, shared by the threads of a walk."""

    def __init__(self, tasks: list[_Task]) -> None:
        self.heap: list[tuple[float, int, _Task]] = []
        self.count = 0  # tasks added, which orders equal weights first come, first served
        self.pending = 0  # tasks added and not yet done
        self.cond = threading.Condition()
        self.add(tasks)

    def add(self, tasks: list[_Task]) -> None:
        with self.cond:
            for t in tasks:
                heapq.heappush(self.heap, (-t.weight, self.count, t))
                self.count += 1
            self.pending += len(tasks)
            self.cond.notify_all()

    def take(self) -> _Task | None:
        """The largest waiting task; None once every task is done."""
        with self.cond:
            while not self.heap and self.pending:
                self.cond.wait()
            return heapq.heappop(self.heap)[2] if self.heap else None

    def done(self) -> None:
        """Mark one taken task done (after any tasks it added)."""
        with self.cond:
            self.pending -= 1
            if not self.pending:
                self.cond.notify_all()


class Sink:
    """What one thread of the walk writes: its buffers, the losses it found, its work counts."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.losses: dict[Subset, float] = {}
        self.stats = dict.fromkeys(
            ["subsets", "factorizations", "projections", *KINDS, "helper_jobs"], 0
        )

    def merge(self, losses: dict[Subset, float], stats: dict[str, int]) -> None:
        """Add another walk's losses and work counts to this sink's."""
        self.losses.update(losses)
        for key, value in stats.items():
            self.stats[key] += value

    def factored(self, basis: Basis) -> Basis:
        """Count one factorization of `basis`'s kind; return it."""
        self.stats["factorizations"] += 1
        self.stats[basis.kind] += 1
        return basis


class _OneThread:
    """torch and OpenBLAS (numpy's and scipy's LAPACK) on one thread while any walk runs.

    The walk calls LAPACK on small matrices: OpenBLAS threads of its own on top made a parallel
    walk 2-3x slower than a serial one, and kept a second core busy under a serial one (measured
    on 2 cores); torch's threads would compete with the walk's own. The settings are process
    wide, so walks running at once in several threads count in and out: the first sets them, the
    last restores what it found.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.torch_threads = 1
        self.controller: ThreadpoolController | None = None
        self.blas: Any = None  # threadpoolctl's limits, restored by the last walk out

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self.lock:
            if not self.depth:
                if self.controller is None:
                    self.controller = ThreadpoolController()
                self.torch_threads = torch.get_num_threads()
                torch.set_num_threads(1)
                self.blas = self.controller.limit(limits=1, user_api="blas")
            self.depth += 1
        try:
            yield
        finally:
            with self.lock:
                self.depth -= 1
                if not self.depth:
                    self.blas.restore_original_limits()
                    torch.set_num_threads(self.torch_threads)


_ONE_THREAD = _OneThread()
