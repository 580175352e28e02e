"""YES walks shared with helper processes: the split, the claims, the processes, their failures."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal

import numpy as np
import pytest
import torch

from layerpeel.yes import YesTracker, yes_bounds
from layerpeel.yes import helper as yes_helper
from layerpeel.yes import shared as yes_shared
from layerpeel.yes.split import plan
from layerpeel.yes.walk import AnchorWalk, Sink
from test_yes import assert_parity, net_data, rank_deficient_data


def target_path(sub: tuple[int, ...], n_layers: int) -> tuple[int, ...]:
    """The targets layers 1..L-1 fit on the path of anchor subset `sub` (L stands for Y)."""
    return tuple(
        min([s for s in sub if s >= layer], default=n_layers) for layer in range(1, n_layers)
    )


def walk_for(x, y, hidden, cap=None) -> AnchorWalk:
    walk = AnchorWalk(np.asarray(x), np.asarray(y), len(hidden) + 1, True)
    walk.cap = len(hidden) if cap is None else cap
    walk.stack([np.asarray(h) for h in hidden])
    return walk


@pytest.mark.parametrize("walkers", [2, 3, 4])
@pytest.mark.parametrize(("n_layers", "cap"), [(3, None), (5, None), (6, 2), (7, None), (7, 1)])
@pytest.mark.parametrize("yes0_pending", [False, True])
def test_plan_hands_out_every_subset_once(walkers, n_layers, cap, yes0_pending):
    """Each subset of at most `cap` anchors lies below exactly one subtree, handed out once.

    The YES-0 path (no anchor) lies below none: the caller computes it apart.
    """
    x, y, hidden = net_data(n_layers=n_layers, m=6, n_samples=30)
    walk = walk_for(x, y, hidden, cap)
    tasks, lists = plan(walk, walkers, yes0_pending)
    assert sorted(i for items in lists for i in items) == list(range(len(tasks)))
    assert len(lists) == walkers
    cap = n_layers - 1 if cap is None else cap
    for k in range(1, cap + 1):
        for sub in itertools.combinations(range(1, n_layers), k):
            path = target_path(sub, n_layers)
            below = [t for t in tasks if path[: len(t)] == t]
            assert len(below) == 1, (sub, below)
    assert not any(target_path((), n_layers)[: len(t)] == t for t in tasks)  # YES-0 apart


@pytest.mark.parametrize("data", ["random", "rank_deficient"])
@pytest.mark.parametrize("walkers", [2, 3])
def test_walkers_that_claim_in_turn_give_the_whole_walk(data, walkers):
    """Walkers in one process claiming subtrees in turn give every J(sigma) of the serial walk."""
    x, y, hidden = rank_deficient_data() if data == "rank_deficient" else net_data(n_layers=5)
    serial = yes_bounds(x, y, hidden)
    walk = walk_for(x, y, hidden)
    tasks, lists = plan(walk, walkers)
    # walker w takes its own list in order; walker 0 then takes what the others did not
    left = [list(items) for items in lists]
    sinks = [Sink(walk.ws) for _ in range(walkers)]
    for w in range(1, walkers):
        mine = left[w][: len(left[w]) // 2 + 1]
        walk.walk_tasks(sinks[w], tasks, iter(mine).__next__)
        del left[w][: len(mine)]
    walk.walk_tasks(sinks[0], tasks, iter(sum(left, [])).__next__)
    losses = {k: v for s in sinks for k, v in s.losses.items()}
    assert sum(len(s.losses) for s in sinks) == len(losses) == len(serial.losses) - 1
    for sub, value in losses.items():
        assert value == pytest.approx(serial.losses[sub], rel=1e-9, abs=1e-14)


@contextlib.contextmanager
def fresh_helpers(monkeypatch, threads):
    """Walks on `threads` torch threads with a pool of their own, whatever their size."""
    monkeypatch.setattr(yes_helper, "MIN_WORK", 0.0)
    monkeypatch.setattr(yes_helper, "MIN_TIMEOUT", 30.0)  # a busy test machine is not a failure
    monkeypatch.setattr(yes_helper, "_POOL", None)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if yes_helper._POOL is not None:
            yes_helper._POOL.stop("the test is over")


@pytest.fixture
def helpers(monkeypatch):
    """Helper processes for walks on two threads, started."""
    if yes_helper.wanted(2) < 1 or not yes_helper.enabled():
        pytest.skip("helper processes need two cores and POSIX")
    with fresh_helpers(monkeypatch, 2):
        assert yes_helper.wait_ready(2, timeout=60)
        yield yes_helper._POOL


@pytest.mark.parametrize("data", ["random", "rank_deficient"])
def test_helper_processes_give_the_plain_pinv_bounds(helpers, data):
    x, y, hidden = rank_deficient_data() if data == "rank_deficient" else net_data(n_layers=5)
    b = yes_bounds(x, y, hidden)
    assert b.stats["helper_jobs"] == 1
    assert b.stats["subsets"] == 2 ** len(hidden)
    assert_parity(b, x, y, hidden)


def test_tracker_checks_with_helper_processes_match_one_thread(helpers):
    """Several checks on new hidden outputs each (the helper keeps X, Y between them)."""
    runs = [net_data(n_layers=5, seed=s) for s in range(3)]
    x, y, _ = runs[0]
    tracker = YesTracker(x, y)
    got = [tracker.bounds(h) for _, _, h in runs]
    assert all(b.stats["helper_jobs"] == 1 for b in got)
    torch.set_num_threads(1)
    for b, (_, _, h) in zip(got, runs, strict=True):
        want = YesTracker(x, y).bounds(h)
        assert set(b.losses) == set(want.losses)
        for sub, value in want.losses.items():
            assert b.losses[sub] == pytest.approx(value, rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_failed_helper_stops_the_helpers_and_the_walk_is_whole(helpers, caplog, monkeypatch, how):
    """A helper that died (or hangs) is noticed, and the caller walks its share.

    One warning is logged, and later walks run on threads.
    """
    x, y, hidden = net_data(n_layers=5)
    torch.set_num_threads(1)
    want = yes_bounds(x, y, hidden)
    torch.set_num_threads(2)
    monkeypatch.setattr(yes_helper, "MIN_TIMEOUT", 0.5)
    proc = helpers.helpers[0].proc
    os.kill(proc.pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    with caplog.at_level(logging.WARNING, logger="layerpeel.yes.helper"):
        got = [yes_bounds(x, y, hidden) for _ in range(2)]
    assert helpers.stopped is not None and not helpers.helpers
    assert proc.poll() is not None  # a hanging helper was killed
    assert len([r for r in caplog.records if "stopped" in r.getMessage()]) == 1
    for b in got:
        assert b.stats["helper_jobs"] == 0
        assert set(b.losses) == set(want.losses)
        for sub, value in want.losses.items():
            assert b.losses[sub] == pytest.approx(value, rel=1e-9, abs=1e-14)


def test_helpers_are_off_with_the_environment_variable(monkeypatch):
    monkeypatch.setenv(yes_helper.ENV, "0")
    assert not yes_helper.enabled()
    with yes_helper.lease(8, float("inf")) as (ready, pool):
        assert ready == [] and pool is None
    monkeypatch.setenv(yes_helper.ENV, "1")
    assert yes_helper.wanted(64) <= 1


def test_small_walks_stay_on_threads(monkeypatch):
    monkeypatch.setattr(yes_helper, "_POOL", None)
    with yes_helper.lease(2, yes_helper.MIN_WORK / 2) as (ready, pool):
        assert ready == [] and pool is None
    assert yes_helper._POOL is None  # nothing was started


def test_no_room_for_the_shared_data_leaves_the_walk_on_threads(helpers, monkeypatch, caplog):
    """A file system without room (a small /dev/shm) fails before any page is written."""
    x, y, hidden = net_data(n_layers=5)

    def full(fd, size):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(yes_shared, "reserve", full)
    with caplog.at_level(logging.WARNING, logger="layerpeel.yes.helper"):
        b = yes_bounds(x, y, hidden)
    assert b.stats["helper_jobs"] == 0
    assert "could not be shared" in helpers.stopped
    assert_parity(b, x, y, hidden)


def test_callers_on_several_threads_share_the_helpers_in_turn(helpers):
    """One walk at a time holds the helpers; the others walk on threads meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    datasets = [net_data(n_layers=5, seed=s) for s in range(3)]
    torch.set_num_threads(1)
    want = [yes_bounds(*d).losses for d in datasets]
    torch.set_num_threads(2)
    with ThreadPoolExecutor(max_workers=len(datasets)) as callers:
        runs = [callers.submit(lambda d: [yes_bounds(*d) for _ in range(4)], d) for d in datasets]
        got = [r.result() for r in runs]
    assert sum(b.stats["helper_jobs"] for bs in got for b in bs) >= 1
    assert helpers.stopped is None
    for expected, repeats in zip(want, got, strict=True):
        for b in repeats:
            assert set(b.losses) == set(expected)
            for sub, value in expected.items():
                assert b.losses[sub] == pytest.approx(value, rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("python", ["/nonexistent/python", "/bin/false"])
def test_a_helper_that_cannot_start_leaves_the_walks_on_threads(monkeypatch, caplog, python):
    """No interpreter to start, or one that exits at once: one warning, and threads."""
    if yes_helper.wanted(2) < 1 or not yes_helper.enabled() or not os.path.exists("/bin/false"):
        pytest.skip("helper processes need two cores and POSIX")
    monkeypatch.setattr(yes_helper.sys, "executable", python)
    x, y, hidden = net_data(n_layers=5)
    with fresh_helpers(monkeypatch, 2):
        with caplog.at_level(logging.WARNING, logger="layerpeel.yes.helper"):
            assert not yes_helper.wait_ready(2, timeout=30)
            b = yes_bounds(x, y, hidden)
        pool = yes_helper._POOL
    assert pool is not None and pool.stopped is not None and not pool.helpers
    assert len([r for r in caplog.records if "stopped" in r.getMessage()]) == 1
    assert b.stats["helper_jobs"] == 0
    assert_parity(b, x, y, hidden)


def test_claims_locked_by_a_stopped_process_do_not_hang_the_caller():
    """A process holds the claims and never lets go: the caller's patience runs out.

    The stall handler ends that process, which frees the lock, and the claim goes through.
    """
    import subprocess
    import sys

    if not yes_helper.enabled():
        pytest.skip("POSIX only")
    shared = yes_shared.SharedFile()
    holder = None
    try:
        shared.layout(0, np.zeros((2, 3)), np.zeros((1, 3)), 1)
        shared.open_claims([[0], [1]])
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import fcntl, time; fcntl.lockf({shared.fd}, fcntl.LOCK_EX, "
                f"{yes_shared._OWNERS}, 0); print('held', flush=True); time.sleep(60)",
            ],
            pass_fds=(shared.fd,),
            stdout=subprocess.PIPE,
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        stalls = []

        def stall():
            stalls.append(1)
            holder.kill()
            holder.wait()

        first = shared.claim(0, [[0], [1]], 0.2, stall)
        assert stalls == [1] and first == 0
        assert shared.claim(0, [[0], [1]], 0.2, stall) == 1  # taken from the other list
        assert shared.claim(0, [[0], [1]], 0.2, stall) is None
        assert shared.claimed_by(0) == [0, 1]
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        shared.close()


def test_two_helpers_share_the_walk(monkeypatch):
    """Three walkers (the caller and two helpers; oversubscribed on two cores, still exact)."""
    if not yes_helper.enabled():
        pytest.skip("POSIX only")
    monkeypatch.setattr(yes_helper, "wanted", lambda threads: 2)
    x, y, hidden = rank_deficient_data()
    with fresh_helpers(monkeypatch, 3):
        assert yes_helper.wait_ready(3, timeout=60)
        assert len(yes_helper._POOL.helpers) == 2
        got = [yes_bounds(x, y, hidden) for _ in range(3)]
    for b in got:
        assert b.stats["helper_jobs"] == 2
        assert_parity(b, x, y, hidden)
