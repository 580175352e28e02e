"""The whole-model verdict: each rule pinned with small inputs and a tiny random model."""

import json
import math

import pytest
import torch

from layerpeel import GPT, GPTConfig
from layerpeel.peel.evidence import UNTRAINED_SPIKE, Trend, bigram_ce, loss_trend, weight_spike
from layerpeel.peel.scoring import Thresholds
from layerpeel.peel.verdict import Answer, BlockEvidence, WholeVerdict, whole_model_verdict
from layerpeel.verdict import Verdict


def ev(block, gap, half=0.002, **kw):
    return BlockEvidence(block, gap, gap - half, gap + half, **kw)


FLAT = Trend(step=1000, drop_per_doubling=0.001, stderr=0.001, points=40)


def test_power_law_history_is_falling_and_a_plateau_is_not():
    falling = [(s, 2.0 + 3.0 * s**-0.5) for s in range(1, 201)]
    trend = loss_trend(falling)
    assert trend is not None and trend.step == 200
    expected = 3.0 * (100**-0.5 - 200**-0.5)  # about the drop from step 100 to step 200
    assert trend.drop_per_doubling == pytest.approx(expected, rel=0.15)
    assert trend.falling_by > 0.02
    flat = [(s, 1.5 + 0.01 * math.sin(s)) for s in range(1, 201)]
    assert abs(loss_trend(flat).drop_per_doubling) < 0.005


def test_a_noisy_plateau_is_not_falling_with_confidence():
    gen = torch.Generator().manual_seed(0)
    noise = (0.05 * torch.randn(200, generator=gen)).tolist()
    trend = loss_trend([(s, 1.5 + noise[s - 1]) for s in range(1, 201)])
    assert trend.falling_by < 0.02
    falling = loss_trend(
        [(s, 1.5 + 0.2 * math.log2(400 / s) + noise[s - 1]) for s in range(1, 201)]
    )
    assert falling.drop_per_doubling == pytest.approx(0.2, abs=0.05) and falling.falling_by > 0.02


def test_trend_needs_points_in_both_windows_and_ends_at_the_given_step():
    assert loss_trend([(10, 3.0), (20, 2.0)]) is None  # two points: no error estimate
    assert loss_trend([]) is None
    hist = [(s, 10.0 / s) for s in range(1, 401)]
    assert loss_trend(hist, step=100).step == 100
    assert loss_trend(hist, step=100).drop_per_doubling > loss_trend(hist).drop_per_doubling


def test_weight_spike_tells_a_fresh_block_from_one_with_learned_structure():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, d_model=64, n_head=4, block_size=32))
    fresh = weight_spike(model.blocks[0])
    assert fresh is not None and fresh < UNTRAINED_SPIKE
    with torch.no_grad():  # one learned direction: a rank-1 outlier in one matrix
        w = model.blocks[1].mlp.fc.weight
        u, v = torch.randn(w.shape[0], 1), torch.randn(1, w.shape[1])
        edge = float(w.std()) * (math.sqrt(w.shape[0]) + math.sqrt(w.shape[1]))
        w += 1.5 * edge * (u / u.norm()) @ (v / v.norm())  # an outlier 1.5x the edge
    assert weight_spike(model.blocks[1]) > UNTRAINED_SPIKE


def test_no_gap_and_a_flat_loss_is_green():
    v = whole_model_verdict([ev(0, 0.001), ev(1, 0.0), ev(2, 0.002)], trend=FLAT)
    assert v.colour is Verdict.GREEN and v.answers == (Answer.NONE_IMPROVABLE,)
    assert v.sentence.startswith("No block is improvable")


def test_falling_loss_is_never_green_even_with_no_gap():
    trend = Trend(step=20, drop_per_doubling=0.9, stderr=0.05, points=10)
    v = whole_model_verdict([ev(0, 0.001), ev(1, 0.0)], trend=trend)
    assert v.colour is Verdict.YELLOW and v.answers == (Answer.STILL_TRAINING,)
    assert "keep training" in v.sentence and "0.900" in v.sentence


def test_every_block_about_equally_improvable_is_still_training_not_one_block():
    blocks = [ev(0, 0.030, 0.004), ev(1, 0.034, 0.004), ev(2, 0.038, 0.004), ev(3, 0.031, 0.004)]
    v = whole_model_verdict(blocks)
    assert v.answers == (Answer.STILL_TRAINING,) and v.behind == ()
    assert v.colour is Verdict.YELLOW and v.improvable == (0, 1, 2, 3)


STANDS_OUT = "P1 reference gains the most by a clear margin"


def test_a_block_whose_gap_clears_every_other_interval_is_reported_not_behind():
    blocks = [ev(0, 0.004), ev(1, 0.080, 0.01), ev(2, 0.006), ev(3, 0.003)]
    v = whole_model_verdict(blocks, trend=FLAT)
    assert v.colour is Verdict.YELLOW and v.behind == () and v.improvable == (1,)
    assert v.answers == () and f"block 1's {STANDS_OUT}" in v.sentence
    # the same top gap inside another block's interval does not stand out
    close = [ev(0, 0.070, 0.01), ev(1, 0.080, 0.01), ev(2, 0.006), ev(3, 0.003)]
    assert STANDS_OUT not in whole_model_verdict(close, trend=FLAT).sentence


def test_while_the_whole_model_still_trains_no_gap_stands_out():
    blocks = [ev(0, 0.004), ev(1, 0.006), ev(2, 0.008), ev(3, 0.030)]  # block 3 stands out
    assert f"block 3's {STANDS_OUT}" in whole_model_verdict(blocks, trend=FLAT).sentence
    falling = Trend(step=20, drop_per_doubling=0.9, stderr=0.05, points=10)
    for v in (
        whole_model_verdict(blocks, trend=falling),  # the loss still falls steeply
        whole_model_verdict(blocks, trend=FLAT, ce_trained=3.0, ce_bigram=2.5),  # above bigram
    ):
        assert v.answers == (Answer.STILL_TRAINING,) and v.behind == ()
        assert STANDS_OUT not in v.sentence and "keep training" in v.sentence
        assert "none clearly more" not in v.sentence  # block 3 does stand out; it is not named


def test_idle_and_never_trained_blocks_are_behind_while_the_model_still_trains():
    blocks = [
        ev(0, 0.03, 0.004),
        ev(1, 0.03, 0.004, spike=1.01),  # never trained
        ev(2, 0.03, 0.004, idle=True, work_ratio=0.02),
        ev(3, 0.03, 0.004, spike=1.9),
    ]
    v = whole_model_verdict(blocks)
    assert v.colour is Verdict.RED and v.behind == (1, 2)
    assert v.answers == (Answer.STILL_TRAINING, Answer.BLOCK_BEHIND)
    assert "random initialization" in v.sentence and "no work" in v.sentence


TRAINED = {"attn": 2.3, "mlp": 2.1}


def test_a_sub_block_that_never_trained_puts_its_block_behind():
    """A frozen MLP leaves its block's attention trained: only the part's weights tell."""
    fresh_mlp = {"attn": 2.4, "mlp": 1.02}
    blocks = [ev(b, 0.01, spike=2.4, part_spikes=TRAINED) for b in (0, 1, 3)]
    blocks.insert(2, ev(2, 0.01, spike=2.4, part_spikes=fresh_mlp))
    v = whole_model_verdict(blocks, trend=FLAT)
    assert v.behind == (2,) and v.behind_parts == ((2, "mlp"),) and v.colour is Verdict.RED
    assert "block 2's MLP weights still look like their random initialization" in v.sentence
    assert v.to_dict()["behind_parts"] == [[2, "mlp"]]
    # the same sub-block fresh in most blocks: the model, not one block, is at its start
    most = [ev(b, 0.01, spike=2.4, part_spikes=fresh_mlp) for b in range(3)]
    most.append(ev(3, 0.01, spike=2.4, part_spikes=TRAINED))
    assert whole_model_verdict(most, trend=FLAT).behind == ()
    # a whole block never trained is named once, as a block
    whole = [ev(b, 0.01, spike=2.4, part_spikes=TRAINED) for b in range(3)]
    whole.append(ev(3, 0.01, spike=1.01, part_spikes={"attn": 1.01, "mlp": 0.99}))
    w = whole_model_verdict(whole, trend=FLAT)
    assert w.behind == (3,) and w.behind_parts == () and "block 3's weights" in w.sentence


def test_idleness_counts_only_once_the_model_beats_a_bigram_table():
    """Idle says nothing before the model beats a bigram table; untrained weights still do.

    Early in training the work sits in the blocks that learned the pair statistics.
    """
    blocks = [
        ev(0, 0.01),
        ev(1, 0.01, spike=1.01),  # never trained
        ev(2, 0.01, idle=True, work_ratio=0.02),
        ev(3, 0.01, spike=1.9),
    ]
    early = whole_model_verdict(blocks, ce_trained=3.4, ce_bigram=2.7, trend=FLAT)
    assert early.behind == (1,)
    assert early.answers == (Answer.STILL_TRAINING, Answer.BLOCK_BEHIND)
    assert "block 2" not in early.sentence and "bigram" in early.sentence
    later = whole_model_verdict(blocks, ce_trained=2.5, ce_bigram=2.7, trend=FLAT)
    assert later.behind == (1, 2)


def test_trained_model_above_yes0_is_red_and_yes_last_is_not_consulted():
    blocks = [ev(0, 0.0), ev(1, 0.0)]
    v = whole_model_verdict(blocks, trend=FLAT, ce_trained=2.0, yes0=1.9)
    assert v.colour is Verdict.RED and "YES-0" in v.sentence
    assert whole_model_verdict(blocks, trend=FLAT, ce_trained=2.0, yes0=2.5).colour is Verdict.GREEN


def test_thresholds_set_the_lines():
    blocks = [ev(0, 0.012), ev(1, 0.011)]
    assert whole_model_verdict(blocks, Thresholds(yellow=0.005)).colour is Verdict.YELLOW
    assert whole_model_verdict(blocks, Thresholds(yellow=0.02), trend=FLAT).colour is Verdict.GREEN


def test_to_dict_states_the_question_and_round_trips_to_json():
    import json

    v = whole_model_verdict([ev(0, 0.0), ev(1, 0.0)], trend=FLAT)
    d = json.loads(json.dumps(v.to_dict()))
    assert d["colour"] == "green" and d["question"].startswith("Can more training")
    assert d["trend"]["step"] == 1000 and d["answers"] == ["no block improvable"]


# ----------------------------------------------------------------------------- in a report

TINY = GPTConfig(vocab_size=64, n_layer=3, n_head=2, d_model=32, block_size=16)


def _mset(seed=9):
    from layerpeel.data.monitoring import monitoring_set

    gen = torch.Generator().manual_seed(seed)
    return monitoring_set(torch.randint(0, 64, (8, 17), generator=gen))


def test_report_carries_the_verdict_and_a_ranking_of_every_row(tmp_path):
    import json

    from layerpeel.peel.analysis import PeelConfig, peel
    from layerpeel.peel.report import PeelReport

    torch.manual_seed(0)
    model = GPT(TINY).eval()
    trend = Trend(step=20, drop_per_doubling=0.8, stderr=0.05, points=9)
    report = peel(model, _mset(), PeelConfig(n_boot=20, search_sequences=4), trend=trend)
    report.save(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    # a fresh model: every block looks untrained and the loss is falling: the whole model is
    # still training, not one block behind
    assert data["verdict"]["colour"] == "yellow"
    assert data["verdict"]["answers"] == ["still training"]
    assert data["verdict"]["behind"] == []
    assert (
        "3 of 3 blocks' weights still look like their random initialization"
        in (data["verdict"]["sentence"])
    )
    assert data["verdict"]["ce_bigram"] > 0 and data["verdict"]["ce_trained"] > 0
    spikes = data["verdict"]["weight_spikes"]
    assert sorted(spikes) == ["0", "1", "2"] and all(v < UNTRAINED_SPIKE for v in spikes.values())
    assert data["verdict"]["question"].startswith("Can more training")
    ranked = [(r["block"], r["part"]) for r in data["ranking"]]
    assert sorted(ranked) == sorted((r.block, r.part) for r in report.layers)
    again = PeelReport.load(tmp_path / "r.json")
    assert again.verdict == report.verdict and again.to_dict() == report.to_dict()


def test_a_report_finds_the_one_mlp_that_kept_its_initialization_and_ranks_its_row_first():
    from layerpeel.peel.analysis import PeelConfig, peel

    torch.manual_seed(0)
    model = GPT(TINY).eval()
    with torch.no_grad():  # "training": a learned outlier in every matrix but block 1's MLP
        for b, block in enumerate(model.blocks):
            for name, w in block.named_parameters():
                if w.ndim != 2 or (b == 1 and name.startswith("mlp.")):
                    continue
                u, v = torch.randn(w.shape[0], 1), torch.randn(1, w.shape[1])
                edge = float(w.std()) * (math.sqrt(w.shape[0]) + math.sqrt(w.shape[1]))
                w += 2.0 * edge * (u / u.norm()) @ (v / v.norm())
    report = peel(model, _mset(), PeelConfig(n_boot=20, search_sequences=4), trend=FLAT)
    whole = report.whole()
    assert whole.behind == (1,) and whole.behind_parts == ((1, "mlp"),)
    assert whole.part_spikes[1]["mlp"] < UNTRAINED_SPIKE < whole.part_spikes[1]["attn"]
    assert all(whole.part_spikes[b]["mlp"] > UNTRAINED_SPIKE for b in (0, 2))
    top = report.in_order()[0]
    assert (top.block, top.part) == (1, "mlp")
    # the summary says why a red verdict may sit under a table with no red row
    import io

    from layerpeel.commands.analyze import print_verdict

    out = io.StringIO()
    print_verdict(report, out, color=False)
    assert not any(r.verdict == "red" for r in report.layers)
    assert "no red row; the verdict below names block 1 behind." in out.getvalue()


def test_reports_without_a_recorded_verdict_are_judged_from_their_rows():
    import pathlib

    from layerpeel.peel.report import PeelReport

    for path in sorted(pathlib.Path(__file__).parent.glob("data/peel-report-v1-*.json")):
        report = PeelReport.load(path)
        assert report.verdict is None and "verdict" not in report.to_dict()
        whole = report.whole()
        assert whole.colour in set(Verdict) and whole.sentence
        assert len(report.in_order()) == len(report.layers)


def test_cascade_green_line_leaves_out_the_path_that_reproduces_the_trained_model():
    from layerpeel.peel.cascade import cascade_summary
    from layerpeel.peel.rows import CascadeRow

    rows = [
        CascadeRow([], 2.6),
        CascadeRow([1], 2.4),
        CascadeRow([2], 2.5),
        CascadeRow([1, 2], 2.0),  # every block an anchor: the trained model itself
    ]
    trivial = cascade_summary(rows, 2.0, "preimage", 0.0, n_blocks=3)
    assert trivial.yes == [2.4, 2.0] and trivial.green_line == 2.4
    assert trivial.verdict == "green"  # 2.0 <= 2.4: beats every path that could lose
    worse = cascade_summary(rows, 2.45, "preimage", 0.0, n_blocks=3)
    assert worse.verdict == "yellow"  # beaten by the one-anchor path, however YES-2 reads
    blended = cascade_summary(rows, 2.0, "preimage", 0.3, n_blocks=3)
    assert blended.green_line == 2.0  # the final target is a blend: the full path can lose too


def test_a_trained_block_in_a_real_model_is_not_flagged_untrained():
    """A few steps of Adam on a tiny GPT grow weight outliers the spike test sees."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, block_size=16))
    frozen = [p.detach().clone() for p in model.blocks[1].parameters()]
    opt = torch.optim.Adam(model.blocks[0].parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    pattern = torch.arange(17) % 7  # a learnable sequence
    for _ in range(60):
        idx = (pattern + torch.randint(0, 7, (16, 1), generator=gen)) % 64
        loss = model.loss(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.blocks[1].parameters(), strict=True))
    assert weight_spike(model.blocks[0]) > UNTRAINED_SPIKE > weight_spike(model.blocks[1])


def test_bigram_ce_matches_counting_by_hand():
    gen = torch.Generator().manual_seed(3)
    fit = torch.randint(0, 5, (4, 9), generator=gen)
    held = torch.randint(0, 5, (3, 9), generator=gen)
    vocab, alpha = 7, 1.0
    flat = fit.reshape(-1).tolist()
    uni = [(flat.count(v) + 1) / (len(flat) + vocab) for v in range(vocab)]
    pairs = [(w[i], w[i + 1]) for w in fit.tolist() for i in range(len(w) - 1)]
    total = 0.0
    held_pairs = [(w[i], w[i + 1]) for w in held.tolist() for i in range(len(w) - 1)]
    for a, b in held_pairs:
        c_ab = pairs.count((a, b))
        c_a = sum(1 for x, _ in pairs if x == a)
        total -= math.log((c_ab + alpha * uni[b]) / (c_a + alpha))
    assert bigram_ce(fit, held, vocab, alpha) == pytest.approx(total / len(held_pairs), rel=1e-12)


def test_a_model_that_does_not_beat_a_bigram_table_is_still_training():
    blocks = [ev(0, 0.001), ev(1, 0.0), ev(2, 0.002)]
    v = whole_model_verdict(blocks, trend=FLAT, ce_trained=2.52, ce_bigram=2.53)
    assert v.answers == (Answer.STILL_TRAINING,) and v.colour is Verdict.YELLOW
    assert "bigram table" in v.sentence
    beats = whole_model_verdict(blocks, trend=FLAT, ce_trained=1.53, ce_bigram=2.53)
    assert beats.colour is Verdict.GREEN


def test_one_untrained_block_is_behind_but_most_untrained_is_the_whole_model():
    one = [ev(0, 0.0, spike=1.9), ev(1, 0.0, spike=1.0), ev(2, 0.0, spike=2.1), ev(3, 0.0)]
    v = whole_model_verdict(one, trend=FLAT)
    assert v.behind == (1,) and v.colour is Verdict.RED
    most = [ev(0, 0.0, spike=1.0), ev(1, 0.0, spike=1.0), ev(2, 0.0, spike=2.1), ev(3, 0.0)]
    v = whole_model_verdict(most, trend=FLAT)
    assert v.behind == () and v.answers == (Answer.STILL_TRAINING,)


def _row(block, verdict, ci_low=0.0):
    from layerpeel.peel.rows import GapRow

    return GapRow(block=block, part="block", gap=0.01, ci_low=ci_low, ci_high=0.04,
                  verdict=Verdict(verdict), ce_trained=2.0, ce_reference=1.99, solver="closed",
                  eta=0.1, moved="block", quant=None)  # fmt: skip


def test_the_summary_names_no_block_while_the_whole_model_is_still_training():
    from layerpeel.commands.analyze import first_to_look_at

    falling = Trend(step=100, drop_per_doubling=0.3, stderr=0.01, points=50)
    still = whole_model_verdict([ev(0, 0.01), ev(1, 0.001)], Thresholds(), trend=falling)
    assert Answer.STILL_TRAINING in still.answers and still.behind == ()
    settled = whole_model_verdict([ev(0, 0.01), ev(1, 0.001)], Thresholds())
    assert Answer.STILL_TRAINING not in settled.answers
    assert not first_to_look_at(_row(0, "yellow"), still)  # keep training: none to blame
    assert first_to_look_at(_row(0, "yellow"), settled)
    assert not first_to_look_at(_row(0, "red", ci_low=0.03), still)  # red by its gap
    assert first_to_look_at(_row(0, "red", ci_low=0.03), settled)
    assert not first_to_look_at(_row(0, "red"), still)  # red as idle, not behind
    assert not first_to_look_at(_row(1, "green"), settled)
    behind = whole_model_verdict([ev(0, 0.0, idle=True), ev(1, 0.001), ev(2, 0.001)],
                                 Thresholds(), trend=falling)  # fmt: skip
    assert behind.behind == (0,) and first_to_look_at(_row(0, "green"), behind)


# ------------------------------------------------------------- where more training gains most


def test_most_improvable_is_the_block_not_behind_that_turns_the_residual_stream_most():
    blocks = [
        ev(0, 0.01, influence=0.40, idle=True, work_ratio=0.01),  # behind: not "most improvable"
        ev(1, 0.01, influence=0.30),
        ev(2, 0.01, influence=0.05),
        ev(3, 0.03, influence=0.10),  # the largest P1 gap does not decide it
    ]
    v = whole_model_verdict(blocks, trend=FLAT, ce_trained=2.0, ce_bigram=2.6)
    assert v.behind == (0,) and v.most_improvable == 1 and v.order == (0, 1, 3, 2)
    assert "more training is likely to gain most in block 1" in v.sentence
    again = WholeVerdict.from_dict(json.loads(json.dumps(v.to_dict())))
    assert again == v and again.to_dict()["most_improvable"] == 1
    # one block, or none with an influence: nothing to compare
    assert whole_model_verdict([ev(0, 0.01, influence=0.4)], trend=FLAT).most_improvable is None
    assert whole_model_verdict([ev(0, 0.01), ev(1, 0.02)], trend=FLAT).most_improvable is None
    # most blocks at their initialization: their influence says nothing yet
    fresh = [ev(0, 0.01, influence=0.4, spike=1.9), ev(1, 0.01, influence=0.0, spike=1.0),
             ev(2, 0.01, influence=0.01, spike=1.01)]  # fmt: skip
    v = whole_model_verdict(fresh, trend=FLAT)
    assert v.most_improvable is None and "likely to gain" not in v.sentence and v.order == ()


def test_a_green_verdict_names_no_block_to_train_further():
    blocks = [ev(0, 0.001, influence=0.3), ev(1, 0.0, influence=0.1)]
    v = whole_model_verdict(blocks, trend=FLAT)
    assert v.colour is Verdict.GREEN and "likely to gain" not in v.sentence
    assert v.most_improvable == 0  # still recorded, for the ranking


def _gap_row(block, part, gap, verdict, influence=None):
    from layerpeel.peel.rows import GapRow

    return GapRow(block, part, gap, gap - 0.001, gap + 0.001, Verdict(verdict), 2.0, 2.0 - gap,
                  "closed", 0.0, part, None, influence=influence)  # fmt: skip


def test_ranking_puts_blocks_behind_then_red_rows_then_the_most_improvable_blocks():
    from layerpeel.peel.verdict import judge, ranking

    rows = [
        _gap_row(0, "block", 0.002, "green", influence=0.50),
        _gap_row(0, "mlp", 0.011, "yellow"),
        _gap_row(1, "block", 0.001, "green", influence=0.20),
        _gap_row(2, "block", 0.030, "red", influence=0.01),
        _gap_row(3, "block", 0.012, "yellow", influence=0.05),
    ]
    t = Thresholds()
    v = judge(rows, None, t, trend=FLAT)
    assert v.behind == () and v.most_improvable == 0
    order = [(r.block, r.part) for r in ranking(rows, v, t)]
    assert order == [(2, "block"), (0, "mlp"), (0, "block"), (1, "block"), (3, "block")]


def test_block_influence_matches_cosines_of_each_blocks_input_and_output_by_hand():
    """1 - mean cos(block input, block output) per held-out token, from forward hooks."""
    from layerpeel.arch.table import model_view
    from layerpeel.peel.analysis import PeelConfig, peel
    from layerpeel.peel.context import build_context
    from layerpeel.peel.gap import block_influence

    torch.manual_seed(2)
    model = GPT(TINY).eval()
    mset = _mset(4)
    held = mset.inputs("held")
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [
        block.register_forward_hook(
            lambda _m, args, out, b=b: seen.__setitem__(b, (args[0].detach(), out.detach()))
        )
        for b, block in enumerate(model.blocks)
    ]
    with torch.no_grad():
        model(held)
    for h in hooks:
        h.remove()
    by_hand = [
        1.0 - float(torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1).mean())
        for x, y in (seen[b] for b in range(TINY.n_layer))
    ]
    ctx = build_context(model_view(model), mset)
    got = [block_influence(ctx, b, chunk=3) for b in range(TINY.n_layer)]
    assert got == pytest.approx(by_hand, rel=1e-6, abs=1e-9)
    report = peel(model, mset, PeelConfig(n_boot=20, search_sequences=4), trend=FLAT)
    rows = {r.block: r.influence for r in report.layers if r.part == "block"}
    assert [rows[b] for b in range(TINY.n_layer)] == pytest.approx(by_hand, rel=1e-6, abs=1e-9)
    assert report.whole().influence == pytest.approx(dict(enumerate(by_hand)))


def test_when_every_block_is_idle_none_is_behind_the_others():
    blocks = [ev(b, 0.001, idle=True, work_ratio=0.5) for b in range(3)]
    v = whole_model_verdict(blocks, trend=FLAT, ce_trained=4.1, ce_bigram=4.3)
    assert v.behind == () and v.answers == (Answer.STILL_TRAINING,)
    assert "none of the 3 blocks does measurable work" in v.sentence
