"""Shared test set-up: tiny models, a private token cache, one thread per test worker."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LAYERPEEL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


TINY_TEXT = (
    "It is a truth universally acknowledged, that a single model in possession of a good "
    "corpus, must be in want of a held-out set. "
) * 40


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TINY_TEXT)
    return path
