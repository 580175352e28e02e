"""Torch threads fitted to the machine's load by layerpeel's commands, unless the user chose."""

import os

import pytest
import torch

from layerpeel.cli import THREAD_VARS, fit_threads


@pytest.fixture
def four_cpus(monkeypatch):
    for var in THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    before = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(before)


@pytest.mark.parametrize(("load", "threads"), [(0.0, 4), (1.4, 3), (2.6, 1), (9.0, 1)])
def test_threads_are_the_cpus_the_load_leaves(four_cpus, load, threads, caplog):
    four_cpus.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    with caplog.at_level("INFO", logger="layerpeel.cli"):
        assert fit_threads() == threads
    assert torch.get_num_threads() == threads
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert f"{threads} torch thread(s): 4 CPU(s)" in caplog.text


def test_a_thread_count_in_the_environment_is_left_alone(four_cpus):
    four_cpus.setattr(os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    four_cpus.setenv("OMP_NUM_THREADS", "2")
    before = torch.get_num_threads()
    assert fit_threads() is None
    assert torch.get_num_threads() == before
