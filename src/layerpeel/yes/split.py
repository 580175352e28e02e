"""A YES walk shared with helper processes: the plan of its subtrees and the shared walk itself."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import numpy as np

from layerpeel.yes import helper as yes_helper
from layerpeel.yes.walk import AnchorWalk, Path, Sink, Subset, step

# A split walk's plan splits subtrees until its longest share is within this of the mean one.
# The cost estimate is itself off by 20-30 % on single subtrees (the representations that leave
# the Gram path), so balancing it closer buys nothing the claims do not, and costs nodes built
# twice: on the paper's setting 0.05 made a tracker check 10-12 % slower than 0.1 (A/B).
BALANCE = 0.1


def walk_split(
    walk: AnchorWalk,
    main: Sink,
    hidden: list[np.ndarray],
    helpers: list[yes_helper.Helper],
    pool: yes_helper.Pool,
) -> bool:
    """Walk the tree together with helper processes; False if it could not (nothing done).

    The targets are stacked into the file the helpers map. `plan` gives each walker (this
    one is walker 0) a list of subtrees; each claims the next one on its list, and once its
    list is done the last unclaimed one on the longest other list (`yes_shared.claim`), so the
    faster ones take more. A helper's losses and work counts come back when it is done; the
    subtrees a failed helper claimed are walked here, after the helpers are stopped. Any
    failure here stops the helpers too; an interrupted walk stops them before it re-raises.
    """
    shared = pool.shared
    assert shared is not None
    layout: dict[str, Any] = {}

    def room(rows: int) -> np.ndarray:
        assert shared is not None
        layout.update(shared.layout(walk.key, walk.x, walk.y, rows))
        return shared.array(layout["targets"], (rows, walk.n_samples))

    try:
        walk.stack(hidden, room)
        tasks, lists = plan(walk, 1 + len(helpers), yes0_pending=not walk.yes0_known)
        shared.open_claims(lists)
        job = {**layout, "n_layers": walk.n_layers, "bias": walk.bias, "cap": walk.cap}
        shared.post({**job, "sizes": walk.sizes, "tasks": tasks, "lists": lists})
    except (OSError, ValueError) as exc:
        pool.stop(f"the walk could not be shared: {exc}")
        return False
    sink = Sink(walk.ws)
    try:
        sent: list[yes_helper.Helper] = []
        for helper in helpers:
            try:
                helper.wake()
                sent.append(helper)
            except OSError as exc:
                pool.stop(f"a helper could not be woken: {exc}")
        start = time.monotonic()
        if not walk.yes0_known:  # computed while the helpers walk (the plan counted it here)
            walk.compute_yes0()
        stall = functools.partial(pool.stop, "a helper held the claims too long")
        walk.walk_tasks(sink, tasks, lambda: shared.claim(0, lists, yes_helper.MIN_TIMEOUT, stall))
        timeout = max(yes_helper.MIN_TIMEOUT, 20.0 * (time.monotonic() - start))
        for helper in sent:
            if pool.stopped is None:
                try:
                    reply = helper.reply(timeout)
                    sink.merge({tuple(k): v for k, v in reply["losses"]}, reply["stats"])
                    sink.stats["helper_jobs"] += 1
                    pool.cpu += reply["cpu"]
                    continue
                except Exception as exc:  # noqa: BLE001 - its subtrees are walked here
                    pool.stop(f"a helper failed: {type(exc).__name__}: {exc}")
            # The helper is stopped, so nobody claims any more: walk what it had claimed.
            walk.walk_tasks(sink, tasks, iter(shared.claimed_by(helper.side)).__next__)
    except BaseException as exc:
        pool.stop(f"the walk was interrupted: {type(exc).__name__}")
        raise
    expected = sum(math.comb(walk.n_layers - 1, k) for k in range(1, walk.cap + 1))
    if len(sink.losses) != expected:  # a guard: each subtree is claimed by exactly one walker
        pool.stop(f"the walk came back with {len(sink.losses)} of {expected} subsets")
        return False
    main.merge(sink.losses, sink.stats)
    return True


def plan(
    walk: AnchorWalk, walkers: int, yes0_pending: bool = False
) -> tuple[list[Path], list[list[int]]]:
    """The subtrees of a walk shared by `walkers`, by their paths, and each walker's list.

    Subtree sizes are an estimate of their products, a node's Gram and factorization
    counted as about 2.3 products (measured at m = 100, N = 800). The pieces go, largest
    first, to the walker that would finish them soonest, counting the nodes on the way that
    it does not build yet. Walker 0 also computes YES-0 when it is pending, counted as the
    root's edge onto Y (YES-0 often ends at its first layer).
    Starting from the root's children, the largest piece is split into its children until
    the longest share is within `BALANCE` of the mean one. Each list keeps the largest-first
    order, so a walker that runs out takes the smallest left on another's (`yes_shared.claim`).
    """
    rows, x_rows, n_layers = walk.ws.rows, walk.x_basis.rows.shape[0], walk.n_layers

    def edge(layer: int, target: int) -> float:  # the fit's products, the child's Gram...
        return 2.0 * walk.sizes[target - 1] * (x_rows if layer == 1 else rows) + 2.3 * rows**2

    main_extra = edge(1, n_layers) if yes0_pending else 0.0

    @functools.cache
    def cost(layer: int, subset: Subset, forced: int | None) -> float:
        if layer == n_layers:
            return float(walk.sizes[-1] * rows + 0.3 * rows**2)
        return sum(
            edge(layer, t) + cost(layer + 1, *step(layer, subset, forced, t, n_layers))
            for t in walk.choices(layer, subset, forced)
        )

    def children(path: Path, layer: int, subset: Subset, forced: int | None) -> list[_Piece]:
        out = []
        for t in walk.choices(layer, subset, forced):
            sub, nxt = step(layer, subset, forced, t, n_layers)
            out.append(_Piece(edge(layer, t) + cost(layer + 1, sub, nxt), path + (t,), sub, nxt))
        return out

    def assign(pieces: list[_Piece]) -> tuple[list[list[int]], float]:
        loads = [main_extra] + [0.0] * (walkers - 1)
        built: list[set[Path]] = [set() for _ in range(walkers)]
        lists: list[list[int]] = [[] for _ in range(walkers)]
        for i, piece in enumerate(pieces):
            extra = [
                piece.cost + sum(c for p, c in piece.way if p not in built[w])
                for w in range(walkers)
            ]
            best = min(range(walkers), key=lambda w: (loads[w] + extra[w], w))
            loads[best] += extra[best]
            built[best].update(p for p, _ in piece.way)
            lists[best].append(i)
        return lists, max(loads) / (sum(loads) / walkers)

    pieces = children((), 1, (), None)
    while True:
        pieces.sort(key=lambda p: (-p.cost, p.path))
        lists, longest = assign(pieces)  # the longest share over the mean one
        big = next((p for p in pieces if len(p.path) + 1 < n_layers), None)
        if longest <= 1 + BALANCE or big is None:
            break
        way = (*big.way, (big.path, big.cost - cost(len(big.path) + 1, big.subset, big.forced)))
        pieces.remove(big)
        pieces += [
            dataclasses.replace(p, way=way)
            for p in children(big.path, len(big.path) + 1, big.subset, big.forced)
        ]
    return [p.path for p in pieces], lists


@dataclasses.dataclass(frozen=True)
class _Piece:
    """A subtree in a walk's `plan`, with its node's anchors and forced target.

    `way` holds the nodes on the way to it, with their own costs.
    """

    cost: float
    path: Path
    subset: Subset
    forced: int | None
    way: tuple[tuple[Path, float], ...] = ()
