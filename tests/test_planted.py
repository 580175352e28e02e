"""Planted faults: the faults are what they say, and what P1 makes of models trained with them."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layerpeel.data import ByteTokenizer, SequenceDataset, prepare_tokens, split_sequences
from layerpeel.data.monitoring import MonitoringSet, monitoring_set
from layerpeel.errors import ConfigError
from layerpeel.models import GPT, GPTConfig
from layerpeel.monitor.analyses import PeelAnalysis
from layerpeel.peel.analysis import PeelConfig, peel
from layerpeel.peel.report import PeelReport
from layerpeel.peel.rows import GapRow
from layerpeel.peel.scoring import Thresholds, mark_idle
from layerpeel.quant import QuantConfig, quantize_
from layerpeel.training.trainer import token_cache_dir
from layerpeel.verdict import Verdict
from planted import PlantedRun, train_planted

CFG = GPTConfig(vocab_size=256, n_layer=4, n_head=4, d_model=32, block_size=32)
STEPS = 400  # training steps of the slow tests: about 8 s of one idle core per model


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


_MODELS: dict[str, GPT] = {}


def _trained(data: SequenceDataset, train_ids: np.ndarray, run: PlantedRun) -> GPT:
    """`train_planted` once per set-up for the whole module (each takes seconds)."""
    key = repr(run)
    if key not in _MODELS:
        _MODELS[key] = train_planted(CFG, data, train_ids, run)
    return _MODELS[key]


def _p1(model: GPT, mset: MonitoringSet) -> list[GapRow]:
    return peel(model, mset, PeelConfig(ladder=False, cascade=False, n_boot=300)).layers


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["none", "binary-global"])
def test_healthy_model_gets_no_red(corpus, quant):
    data, train_ids, mset = corpus
    model = train_planted(CFG, data, train_ids, PlantedRun(fault="none", steps=STEPS, quant=quant))
    rows = _p1(model, mset)
    assert len(rows) == 3 * CFG.n_layer
    assert [r for r in rows if r.verdict == "red"] == []
    assert not any(r.idle for r in rows if r.part == "block")


@pytest.mark.slow
@pytest.mark.parametrize(("quant", "block"), [("none", 1), ("binary-global", 2)])
def test_frozen_block_is_ranked_first_and_red(corpus, quant, block):
    data, train_ids, mset = corpus
    model = _trained(
        data, train_ids, PlantedRun(fault="frozen", block=block, steps=STEPS, quant=quant)
    )
    report = peel(model, mset, PeelConfig(ladder=False, cascade=False, n_boot=300))
    top = report.ranked()[0]
    assert (top.block, top.part) == (block, "block")
    assert top.verdict == "red" and top.idle
    # the only red row: the frozen block is found, not a warning on every block
    assert [(r.block, r.part) for r in report.layers if r.verdict == "red"] == [(block, "block")]


@pytest.mark.slow
def test_monitor_judges_a_one_block_unit_against_the_other_blocks_latest_work(corpus):
    data, train_ids, mset = corpus
    model = _trained(data, train_ids, PlantedRun(fault="frozen", block=1, steps=STEPS))
    analysis = PeelAnalysis(model, mset, "economy", PeelConfig(n_boot=300))
    sweep = analysis.run(model, analysis.next_unit())["report"]["layers"]
    assert [r["block"] for r in sweep if r["verdict"] == "red"] == [1]
    analysis.advance()
    analysis.advance()  # the rotation's unit of block 1 alone
    unit = analysis.next_unit()
    assert unit.blocks == (1,)
    alone = peel(model, mset, analysis.config(unit)).layers  # no other block to compare with
    assert not next(r for r in alone if r.part == "block").idle
    rows = analysis.run(model, unit)["report"]["layers"]
    row = next(r for r in rows if r["part"] == "block")
    assert row["idle"] and row["verdict"] == "red"
    resumed = PeelAnalysis(model, mset, "economy", PeelConfig(n_boot=300))
    resumed.load_state_dict(json.loads(json.dumps(analysis.state_dict())))
    assert resumed.works == analysis.works and set(resumed.works) == {0, 1, 2, 3}


def _ce(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x).transpose(1, 2), y, reduction="none").mean(1).double()


def test_work_is_the_cost_of_removing_the_block(corpus):
    """A block's work equals the held-out CE of the model without it, run afresh, minus CE."""
    data, train_ids, mset = corpus
    model = train_planted(CFG, data, train_ids, PlantedRun(fault="none", steps=30))
    cfg = PeelConfig(parts=("block",), ladder=False, cascade=False, n_boot=10)
    rows = peel(model, mset, cfg).layers
    x, y = mset.inputs("held"), mset.targets("held")
    trained = _ce(model, x, y)
    for row in rows:
        without = copy.deepcopy(model)
        del without.blocks[row.block]  # nn.ModuleList: the model runs one block fewer
        removed = _ce(without, x, y)
        assert row.work == pytest.approx(float((removed - trained).mean()), abs=1e-5)
        assert row.work_ci_low <= row.work <= row.work_ci_high


def test_block_reference_may_move_one_sub_block_and_scores_as_substituted(corpus):
    """A whole-block P1 reference re-solves the attention, the MLP or both; its CE is real."""
    data, train_ids, mset = corpus
    model = train_planted(CFG, data, train_ids, PlantedRun(fault="none", steps=30))
    cfg = PeelConfig(parts=("block",), ladder=False, cascade=False, n_boot=10)
    report = peel(model, mset, cfg, keep_references=True)
    x, y = mset.inputs("held"), mset.targets("held")
    for row in report.layers:
        ref = report.references["p1"][(row.block, "block")]
        trained = model.blocks[row.block]
        assert row.moved in ("block", "attn", "mlp")
        kept = {"attn": "mlp", "mlp": "attn"}.get(row.moved)
        if kept is not None:  # the sub-block the search left alone is the trained one
            for p, q in zip(
                getattr(ref, kept).parameters(), getattr(trained, kept).parameters(), strict=True
            ):
                assert torch.equal(p, q)
        substituted = copy.deepcopy(model)
        substituted.blocks[row.block] = ref
        with torch.no_grad():
            ce = F.cross_entropy(substituted(x).transpose(1, 2), y, reduction="none").mean(1)
        assert row.ce_reference == pytest.approx(float(ce.double().mean()), abs=1e-5)


def _gap(block: int, part: str, gap: float, verdict: str = "green", **kw: Any) -> GapRow:
    """A P1 row with made-up values: the fields the verdict and ranking rules read."""
    return GapRow(block, part, gap, gap, gap, Verdict(verdict), 0.0, 0.0, "closed", 0.0, part,
                  None, **kw)  # fmt: skip


def _row(block: int, work: float, hi: float, gap: float = 0.0, part: str = "block") -> GapRow:
    return _gap(block, part, gap, work=work, work_ci_low=work, work_ci_high=hi)


def test_idle_rule_compares_a_block_with_the_median_of_the_others():
    th = Thresholds()  # red 0.02, idle 0.1
    rows = [_row(0, 1.0, 1.1), _row(1, 0.004, 0.006), _row(2, 0.05, 0.06), _row(3, 0.03, 0.04)]
    mark_idle(rows, th)
    # block 1: 0.004 < 0.1 * median(1.0, 0.05, 0.03) = 0.005 and its interval is below 0.02
    assert [r.idle for r in rows] == [False, True, False, False]
    # each block's work over the median of the other three
    for r in rows:
        others = sorted(o.work for o in rows if o is not r)
        assert r.work_ratio == pytest.approx(r.work / others[1])
    assert rows[1].verdict == "red" and rows[0].verdict == "green"
    rows[1].work = 0.006  # above a tenth of the median: not idle, back to its gap's verdict
    mark_idle(rows, th)
    assert not rows[1].idle and rows[1].verdict == "green"
    rows[1].work, rows[1].work_ci_high = 0.001, 0.03  # an interval reaching 0.02: unsure
    mark_idle(rows, th)
    assert not rows[1].idle
    # sub-block rows and rows without work are left alone; two peers are needed to compare
    sub = [_row(0, 1.0, 1.1, gap=0.03, part="attn"), _row(0, 0.0, 0.0), _row(1, 1.0, 1.1)]
    mark_idle(sub, th)
    assert sub[0].idle is None and not sub[1].idle
    # peers from earlier analyses count as other blocks
    one = [_row(2, 0.001, 0.002)]
    mark_idle(one, th, peers={0: 1.0, 1: 0.05, 3: 0.04})
    assert one[0].idle and one[0].verdict == "red"
    mark_idle(one, Thresholds(idle=0.0), peers={0: 1.0, 1: 0.05, 3: 0.04})
    assert not one[0].idle


def test_ranked_orders_each_verdict_by_how_near_red_a_row_is():
    rows = [
        _gap(0, "block", 0.004, "green", work_ratio=0.5),
        _gap(1, "block", 0.0, "red", idle=True, work_ratio=0.02),
        _gap(2, "attn", 0.01, "yellow"),
        _gap(3, "mlp", 0.03, "red"),
        _gap(4, "block", 0.001, "green", work_ratio=0.125),
        _gap(5, "block", 0.0, "green", work_ratio=-0.1),
    ]
    # red line 0.02, idle line 0.1: block 1 is at 0.1 / 0.02 = 5 times the idle line, block 3 at
    # 1.5 times the red line; among the green rows, block 5 (removing it helps) is past any line,
    # block 4 at 0.8 of the idle line, block 0 at 0.2 of either line
    order = [r.block for r in PeelReport(layers=rows).ranked()]
    assert order == [1, 3, 2, 5, 4, 0]
    assert [r.block for r in PeelReport(layers=rows).ranked("block")] == [1, 5, 4, 0]
    # with the idle rule off the work plays no part: each verdict by gap
    off = PeelReport(layers=rows, config={"idle": 0.0, "red": 0.02}).ranked()
    assert [r.block for r in off] == [3, 1, 2, 0, 4, 5]
