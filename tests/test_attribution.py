"""Attribution: the reds after the first red block, re-checked with its reference in place."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from layerpeel import GPT, GPTConfig
from layerpeel.arch.table import model_view
from layerpeel.data.monitoring import monitoring_set
from layerpeel.errors import ConfigError
from layerpeel.peel.analysis import PeelConfig, peel
from layerpeel.peel.attribution import first_red, substituted
from layerpeel.peel.rows import GapRow
from layerpeel.peel.scoring import Thresholds, mark_idle
from layerpeel.verdict import Verdict

CFG = GPTConfig(vocab_size=64, n_layer=3, n_head=2, d_model=32, block_size=16)
LINES = dict(yellow=0.005, idle=0.0)  # idle rule off; red lines by test


def _setup(seed: int = 0):
    """An untrained model on arithmetic sequences, where every block is red.

    So there is something to attribute; whether a later red survives depends on the red line.
    """
    torch.manual_seed(seed)
    model = GPT(CFG).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    start = torch.randint(0, 64, (32, 1), generator=gen)
    step = torch.randint(1, 4, (32, 1), generator=gen)
    return model, monitoring_set((start + step * torch.arange(17)) % 64)


def test_substituted_swaps_the_block_and_puts_the_trained_one_back():
    model, _ = _setup()
    view = model_view(model)
    trained = model.blocks[1]
    ref = copy.deepcopy(trained)
    with substituted(model, view, 1, ref) as fixed:
        assert model.blocks[1] is ref and fixed.blocks[1] is ref
    assert model.blocks[1] is trained and model_view(model).blocks[1] is trained


@pytest.mark.parametrize("red", [0.02, 0.01])  # 0.02: later reds explained; 0.01: kept
def test_rechecked_gaps_are_the_gaps_of_the_fixed_model_analysed_afresh(red):
    model, mset = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = PeelConfig(ladder=False, cascade=False, n_boot=50, etas=(0.0, 0.1, 0.3), red=red, **LINES)
    report = peel(model, mset, dataclasses.replace(cfg, attribute=True), keep_references=True)
    plain = peel(model, mset, cfg)
    # the model is left as it was
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    first = [r for r in report.layers if r.fixed_first]
    assert len(first) == 1
    i, part = first[0].block, first[0].part
    assert first_red(plain.layers).block == i  # the earliest block red by its gap
    later = [r for r in report.layers if r.gap_given_first is not None]
    assert later, "the set-up must leave reds after the first one"
    # independent: substitute the first block's reference by hand and run P1 on that model
    fixed = copy.deepcopy(model)
    fixed.blocks[i] = copy.deepcopy(report.references["p1"][(i, part)])
    again = {(r.block, r.part): r for r in peel(fixed, mset, cfg).layers}
    explained = 0
    for r in later:
        assert r.block > i
        r2 = again[(r.block, r.part)]
        assert r.gap_given_first == pytest.approx(r2.gap, abs=1e-6)
        assert r.ci_given_first == pytest.approx([r2.ci_low, r2.ci_high], abs=1e-6)
        was = next(p for p in plain.layers if (p.block, p.part) == (r.block, r.part))
        assert was.verdict == "red" and r.gap == was.gap  # measured as before
        if r2.verdict == "red":
            assert r.verdict == "red" and r.explained_by is None
        else:
            assert r.verdict == "yellow" and r.explained_by == i
            explained += 1
    # rows that are not re-checked keep their verdicts
    for r, p in zip(report.layers, plain.layers, strict=True):
        if r.gap_given_first is None:
            assert r.verdict == p.verdict
    # settling the idle verdicts again keeps an explained row yellow
    rows = copy.deepcopy(report.layers)
    mark_idle(rows, Thresholds(red=red, **LINES))
    assert [r.verdict for r in rows] == [r.verdict for r in report.layers]
    assert explained > 0 if red == 0.02 else explained < len(later)  # each outcome occurs


def test_an_idle_block_is_neither_fixed_nor_rechecked():
    def red(block: int, part: str, gap: float, ci_low: float, idle: bool | None = None) -> GapRow:
        return GapRow(block, part, gap, ci_low, gap, Verdict.RED, 0.0, 0.0, "closed", 0.0, part,
                      None, idle=idle)  # fmt: skip

    rows = [red(0, "block", 0.0, 0.0, idle=True), red(1, "block", 0.05, 0.04)]
    rows += [red(2, "block", 0.09, 0.07), red(1, "attn", 0.06, 0.05)]
    assert first_red(rows) is rows[3]  # block 1, its largest gap
    assert first_red(rows[:1]) is None


def test_attribution_is_a_single_process_analysis():
    model, mset = _setup()
    with pytest.raises(ConfigError, match="attribute"):
        peel(model, mset, PeelConfig(attribute=True), sharded=True)
