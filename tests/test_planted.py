"""Planted faults: the faults are what they say, and what P1 makes of models trained with them."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layerpeel.analyze import PeelConfig, peel
from layerpeel.data import ByteTokenizer, SequenceDataset, prepare_tokens, split_sequences
from layerpeel.errors import ConfigError
from layerpeel.models import GPT, GPTConfig
from layerpeel.monitoring import MonitoringSet, monitoring_set
from layerpeel.planted import PlantedRun, train_planted
from layerpeel.quant import QuantConfig, quantize_
from layerpeel.train import token_cache_dir

CFG = GPTConfig(vocab_size=256, n_layer=4, n_head=4, d_model=32, block_size=32)
STEPS = 150  # training steps of the slow tests: about 10 s of one idle core per model


@pytest.fixture(scope="module")
def corpus() -> tuple[SequenceDataset, np.ndarray, MonitoringSet]:
    """The built-in corpus in windows of 32 bytes, its training split, and 128 monitoring sequences."""
    data = SequenceDataset(prepare_tokens(None, ByteTokenizer(), token_cache_dir()), 32)
    train_ids, _ = split_sequences(len(data), 0.1, seed=0)
    pick = np.linspace(0, len(train_ids) - 1, 128).round().astype(np.int64)
    return data, train_ids, monitoring_set(data.windows(train_ids[pick]))


def _initial(quant: str, seed: int) -> GPT:
    """The model `train_planted` starts from: same seed, same quantizer."""
    torch.manual_seed(seed)
    model = GPT(CFG)
    if quant != "none":
        quantize_(model, QuantConfig(scheme=quant))
    return model


def _moved(model: GPT, start: GPT, block: int) -> float:
    """Relative change of one block's parameters between `start` and `model`."""
    pairs = zip(model.blocks[block].parameters(), start.blocks[block].parameters(), strict=True)
    num = sum(float((p - q).detach().pow(2).sum()) for p, q in pairs)
    den = sum(float(q.pow(2).sum()) for q in start.blocks[block].parameters())
    return (num / den) ** 0.5


@pytest.mark.parametrize("quant", ["none", "binary-global"])
def test_frozen_block_keeps_its_initial_weights(corpus, quant):
    data, train_ids, _ = corpus
    model = train_planted(
        CFG, data, train_ids, PlantedRun(fault="frozen", block=2, steps=5, quant=quant)
    )
    start = _initial(quant, seed=0)
    for p, q in zip(model.blocks[2].parameters(), start.blocks[2].parameters(), strict=True):
        assert torch.equal(p, q)
    assert _moved(model, start, 1) > 0


def test_slow_block_moves_a_hundred_times_less(corpus):
    data, train_ids, _ = corpus
    model = train_planted(CFG, data, train_ids, PlantedRun(fault="slow", block=1, steps=10))
    start = _initial("none", seed=0)
    slow, others = _moved(model, start, 1), [_moved(model, start, b) for b in (0, 2, 3)]
    # Adam's steps scale with the learning rate, so the slow block moves about 1/100 as far
    assert 0 < slow < 0.05 * min(others)


def test_reinit_block_is_fresh_at_the_reinit_step(corpus):
    data, train_ids, _ = corpus
    # re-initialised at step int(0.8 * 5) = 4, then trained for one step
    model = train_planted(CFG, data, train_ids, PlantedRun(fault="reinit", block=3, steps=5))
    out = model.blocks[3].attn.out.weight
    assert float(out.std()) < 0.02  # the scaled-down initial output map, not a trained one


def test_bad_fault_or_block_is_a_config_error(corpus):
    data, train_ids, _ = corpus
    with pytest.raises(ConfigError, match="unknown fault"):
        train_planted(CFG, data, train_ids, PlantedRun(fault="melted", steps=1))
    with pytest.raises(ConfigError, match="faulty block"):
        train_planted(CFG, data, train_ids, PlantedRun(fault="frozen", block=4, steps=1))


def _p1(model: GPT, mset: MonitoringSet) -> list[dict]:
    return peel(model, mset, PeelConfig(ladder=False, cascade=False, n_boot=300)).layers


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["none", "binary-global"])
def test_healthy_model_gets_no_red(corpus, quant):
    data, train_ids, mset = corpus
    model = train_planted(CFG, data, train_ids, PlantedRun(fault="none", steps=STEPS, quant=quant))
    rows = _p1(model, mset)
    assert len(rows) == 3 * CFG.n_layer
    assert [r for r in rows if r["verdict"] == "red"] == []


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="not met: in this set-up freezing a block at its initialisation costs ~0.02 nats/token "
    "(the other blocks do its work) and no P1 reference recovers it; see docs/peeling.md",
)
def test_frozen_block_is_ranked_first_and_red(corpus):
    data, train_ids, mset = corpus
    model = train_planted(CFG, data, train_ids, PlantedRun(fault="frozen", block=1, steps=STEPS))
    rows = [r for r in _p1(model, mset) if r["part"] == "block"]
    top = max(rows, key=lambda r: r["gap"])
    assert top["block"] == 1
    assert top["verdict"] == "red"


def test_block_reference_may_move_one_sub_block_and_scores_as_substituted(corpus):
    """A whole-block P1 reference re-solves the attention, the MLP or both; its CE is real."""
    data, train_ids, mset = corpus
    model = train_planted(CFG, data, train_ids, PlantedRun(fault="none", steps=30))
    cfg = PeelConfig(parts=("block",), ladder=False, cascade=False, n_boot=10)
    report = peel(model, mset, cfg, keep_references=True)
    x, y = mset.inputs("held"), mset.targets("held")
    for row in report.layers:
        ref = report.references["p1"][(row["block"], "block")]
        trained = model.blocks[row["block"]]
        assert row["moved"] in ("block", "attn", "mlp")
        kept = {"attn": "mlp", "mlp": "attn"}.get(row["moved"])
        if kept is not None:  # the sub-block the search left alone is the trained one
            for p, q in zip(
                getattr(ref, kept).parameters(), getattr(trained, kept).parameters(), strict=True
            ):
                assert torch.equal(p, q)
        substituted = copy.deepcopy(model)
        substituted.blocks[row["block"]] = ref
        with torch.no_grad():
            ce = F.cross_entropy(substituted(x).transpose(1, 2), y, reduction="none").mean(1)
        assert row["ce_reference"] == pytest.approx(float(ce.double().mean()), abs=1e-5)
