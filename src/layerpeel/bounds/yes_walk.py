"""The computation behind YES bounds: every J(sigma) by one depth-first walk over anchor prefixes."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from layerpeel.solvers.basis import KINDS, Basis, mm, tilde

logger = logging.getLogger(__name__)

Subset = tuple[int, ...]  # increasing 1-based indices of the hidden layers used as anchors

# Buffers a thread keeps between `yes_bounds` calls on data of the same shape, up to this size.
SCRATCH_BYTES = 64 * 2**20
_SCRATCH = threading.local()


class Workspace:
    """Arrays reused from one walk to the next, which saves the page faults of fresh arrays.

    Fresh m x N arrays cost page faults that measured as much as the products that fill them.
    `children[layer]` (>= choices, m + bias, N) receives the outputs a node of that layer fits (a
    node's children stay alive while its subtree is walked; the next node of the layer reuses
    them); `targets` (>= L m, N) holds the stacked live rows of G_1..G_{L-1}, Y.
    """

    def __init__(self, rows: int, n_samples: int) -> None:
        self.rows, self.n_samples = rows, n_samples  # m + bias, N
        self.children: dict[int, np.ndarray] = {}
        self.targets = np.empty((0, n_samples))

    @property
    def nbytes(self) -> int:
        return self.targets.nbytes + sum(b.nbytes for b in self.children.values())

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


_WORKERS: dict[int, Workspace] = {}  # the buffers of the walk's extra threads, by slot
_WORKERS_LOCK = threading.Lock()


def worker_scratch(slot: int, like: Workspace) -> Workspace:
    """The workspace of extra thread `slot` of a parallel walk, kept as `scratch` keeps its own."""
    with _WORKERS_LOCK:
        ws = _WORKERS[slot] = _kept(_WORKERS.get(slot), like.rows, like.n_samples)
        return ws


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
        self.yy = float(np.einsum("ij,ij->", y, y))
        self.y_live = y[(y != 0).any(1)]  # (m', N): zero rows of Y are fitted exactly
        self.x_basis = Basis(tilde(x, bias))
        basis = self.x_basis
        buf = self.ws.child_buffer(0, 2)  # the YES-0 path needs only the latest two outputs
        for layer in range(1, n_layers):
            basis = self._child(basis, basis.coef(y), buf[layer % 2])
        self.yes0 = basis.sse(y, self.yy) / self.n_samples
        # Per run: the stacked targets and the cap.
        self.targets = y
        self.sizes: list[int] = []
        self.offsets: list[int] = []
        self.cap = 0

    def run(
        self, hidden: list[np.ndarray], cap: int, threads: int = 1
    ) -> tuple[dict[Subset, float], dict[str, int]]:
        """J(sigma) for every subset of at most `cap` anchors, and the work counts.

        With `threads` > 1 the subtrees below the first layer are walked by that many threads,
        each with its own buffers (the products and factorizations release the GIL).
        """
        self.cap = cap
        # Dead units (all-zero rows) of a target give all-zero rows of every fit onto it, which
        # change no row space: each target keeps only its live rows, stacked in layer order.
        masks = [(t != 0).any(1) for t in hidden]
        sizes = [int(k.sum()) for k in masks] + [self.y_live.shape[0]]
        self.sizes = sizes
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        stack = self.ws.target_buffer(self.offsets[-1])  # (sum of live rows, N): G_1..G_{L-1}, Y
        for t, keep, lo, hi in zip(hidden, masks, self.offsets, self.offsets[1:], strict=False):
            np.compress(keep, t, axis=0, out=stack[lo:hi])
        stack[self.offsets[-2] :] = self.y_live
        self.targets = stack
        main = _Sink(self.ws)
        main.losses[()] = self.yes0
        if self.cap > 0 and threads > 1:
            tasks: list[_Task] = []
            self._descend(main, self.x_basis, 1, (), None, defer=tasks)
            self._walk_parallel(main, tasks, threads)
        elif self.cap > 0:
            self._descend(main, self.x_basis, 1, (), None)
        main.stats["subsets"] = len(main.losses)
        logger.debug("YES work: %s", main.stats)
        return main.losses, main.stats

    def _walk_parallel(self, main: _Sink, tasks: list[_Task], threads: int) -> None:
        """Walk the deferred subtrees on `threads` threads; merge their results into `main`.

        Subtrees go to threads longest first (a subtree whose next anchor is layer t holds
        about 2^(L-1-t) subsets), each thread with workspace buffers of its own.
        """
        bins: list[list[_Task]] = [[] for _ in range(min(threads, len(tasks)))]
        load = [0.0] * len(bins)
        for task in sorted(tasks, key=lambda t: -t.weight):
            i = load.index(min(load))
            bins[i].append(task)
            load[i] += task.weight
        sinks = [main] + [_Sink(worker_scratch(i, self.ws)) for i in range(1, len(bins))]

        def walk(i: int) -> None:
            for t in bins[i]:
                self._descend(sinks[i], t.basis, t.layer, t.subset, t.forced)

        if len(bins) == 1:
            walk(0)
            return
        with _one_torch_thread(), ThreadPoolExecutor(max_workers=len(bins) - 1) as pool:
            futures = [pool.submit(walk, i) for i in range(1, len(bins))]
            walk(0)
            for f in futures:
                f.result()
        for sink in sinks[1:]:
            main.losses.update(sink.losses)
            for key, value in sink.stats.items():
                main.stats[key] += value

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

    def _descend(
        self,
        sink: _Sink,
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
        instead of walked.
        """
        n_layers = self.n_layers
        if forced is not None:
            choices = [forced]
        elif len(subset) < self.cap:
            choices = list(range(layer, n_layers + 1))  # G_layer..G_{L-1}, Y
        else:
            choices = [n_layers]
        if layer == 1:  # the all-onto-Y path is YES-0, already known
            choices = [c for c in choices if c != n_layers]
        if layer == n_layers:  # only Y is left: the loss needs no predictions
            sink.stats["projections"] += 1
            sink.losses[subset] = basis.sse(self.y_live, self.yy) / self.n_samples
            return
        lo, hi = self.offsets[choices[0] - 1], self.offsets[choices[-1]]
        coef = basis.coef(self.targets[lo:hi])  # (rows of the chosen targets, q): one product
        sink.stats["projections"] += len(choices)
        buf = sink.ws.child_buffer(layer, len(choices))
        start = 0
        for i, target in enumerate(choices):
            new = subset + (target,) if forced is None and target < n_layers else subset
            stop = start + self.sizes[target - 1]
            child = self._child(basis, coef[start:stop], buf[i])
            start = stop
            sink.stats["factorizations"] += 1
            sink.stats[child.kind] += 1
            nxt = None if target == layer else target
            if defer is not None:
                # subsets below: every choice of the anchors after this one
                weight = 2.0 ** (n_layers - 1 - max(target, layer))
                defer.append(_Task(child, layer + 1, new, nxt, weight))
            else:
                self._descend(sink, child, layer + 1, new, nxt)


@dataclasses.dataclass
class _Task:
    """A subtree of the walk: the factored input of `layer`, the anchors so far, the target."""

    basis: Basis
    layer: int
    subset: Subset
    forced: int | None
    weight: float  # about how many subsets it holds


class _Sink:
    """What one thread of the walk writes: its buffers, the losses it found, its work counts."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.losses: dict[Subset, float] = {}
        self.stats = dict.fromkeys(["subsets", "factorizations", "projections", *KINDS], 0)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Set torch to one intra-op thread meanwhile: the walk's own threads share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
