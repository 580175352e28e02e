"""The validity benchmark's oracle and detectors on micro models: they measure what they say."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from validity.cases import BAD_SCALE, Case, Spec, load_corpus, new_model, part_parameters, train
from validity.detectors import gain_rates, gradient_norms, loo_and_influence
from validity.oracle import OracleConfig, oracle_gap, sequence_ce

SPEC = Spec(n_layer=3, d_model=32, n_head=4, seq_len=32, warmup=5)
ORACLE = OracleConfig(max_steps=60, eval_every=15, patience=2)


def _trained(case: Case, losses: dict[int, list] | None = None) -> nn.Module:
    kept: dict[int, nn.Module] = {}

    def keep(step: int, model: nn.Module, history: list) -> None:
        kept.setdefault(step, copy.deepcopy(model))
        if losses is not None:
            losses[step] = history

    train(case, load_corpus(case.spec), keep)
    return kept[case.steps]


@pytest.fixture(scope="module")
def models():
    """A micro GPT trained 120 steps, and a copy whose block 1 is put back to its initial weights."""
    corpus = load_corpus(SPEC)
    case = Case(SPEC, 120)
    intact = _trained(case).eval()
    damaged = copy.deepcopy(intact)
    damaged.blocks[1].load_state_dict(new_model(case).blocks[1].state_dict())
    held = corpus.data.batch(corpus.val_ids[:96])
    return intact, damaged, corpus, held


@pytest.fixture(scope="module")
def damaged(models):
    _, model, corpus, held = models
    return model, corpus, held


def test_oracle_finds_what_the_damaged_block_lost_and_never_reports_a_loss(models):
    intact, damaged, corpus, held = models
    before = {k: v.clone() for k, v in damaged.state_dict().items()}
    runs = {
        name: oracle_gap(model, 1, "block", corpus.data, corpus.train_ids, held, ORACLE)
        for name, model in (("intact", intact), ("damaged", damaged))
    }
    assert all(r.gain >= 0 and r.se >= 0 for r in runs.values())
    # block 1 lost what it had learned: training it alone wins back more than in the intact model
    d, i = runs["damaged"], runs["intact"]
    assert d.gain > i.gain + 2 * (d.se + i.se)
    assert d.best_step > 0 and d.curve[0] == (0, 0.0)
    assert max(g for _, g in d.curve) == pytest.approx(d.gain)
    # the oracle trains a copy: the model is untouched
    assert all(torch.equal(v, damaged.state_dict()[k]) for k, v in before.items())


def test_sub_blocks_split_the_block_and_carry_their_held_scales():
    model = new_model(Case(SPEC, 1, "bad_scale", 1, quant="ternary"))
    ids = {part: {id(p) for p in part_parameters(model, 1, part)} for part in ("attn", "mlp")}
    assert ids["attn"].isdisjoint(ids["mlp"])
    assert ids["attn"] | ids["mlp"] == {id(p) for p in model.blocks[1].parameters()}
    assert id(model.blocks[1].attn.out.weight_scale) in ids["attn"]
    assert id(model.blocks[1].mlp.fc.weight_scale) in ids["mlp"]


def test_leave_one_out_matches_the_model_without_the_block(damaged):
    model, corpus, held = damaged
    x, y = held
    loo, influence = loo_and_influence(model, x, y)
    base = sequence_ce(model, x, y).mean()
    for b in range(3):
        without = copy.deepcopy(model)
        without.blocks[b] = nn.Identity()
        cost = sequence_ce(without, x, y).mean() - base
        assert loo.values["cost"][b] == pytest.approx(cost, abs=1e-9)
    # the re-initialised block barely changes its input and does the least work
    assert loo.first == 1 and influence.first == 1
    assert all(0.0 <= v <= 2.0 for v in influence.values["influence"])


def test_gradient_norms_leave_the_model_as_it_was(damaged):
    model, corpus, held = damaged
    flags = [p.requires_grad for p in model.parameters()]
    grads = [p.grad for p in model.parameters()]
    norm, ratio = gradient_norms(model, *held)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(g is None for g in grads) and all(p.grad is None for p in model.parameters())
    # against one backward pass of the mean loss over all windows, on a copy
    ref = copy.deepcopy(model)
    x, y = held
    logits = ref(x)
    torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    ).backward()
    for b, block in enumerate(ref.blocks):
        g = sum(float(p.grad.pow(2).sum()) for p in block.parameters()) ** 0.5
        w = sum(float(p.detach().pow(2).sum()) for p in block.parameters()) ** 0.5
        assert norm.values["grad"][b] == pytest.approx(g, rel=1e-4)
        assert ratio.values["ratio"][b] == pytest.approx(g / w, rel=1e-4)


def test_bad_scale_is_held_through_training():
    case = Case(SPEC, 8, "bad_scale", 1, quant="ternary")
    model = _trained(case)
    start = new_model(case)
    layer, layer0 = model.blocks[1].attn.q, start.blocks[1].attn.q
    assert float(layer.weight_scale) == float(layer0.weight_scale)
    assert not torch.equal(layer.weight, layer0.weight)  # the weights did train
    init = layer0.quantizer.init_scale(layer0.weight.detach())
    assert float(layer.weight_scale) == pytest.approx(BAD_SCALE * float(init))
    levels = layer.quantized_weight().detach().abs().unique()
    assert torch.allclose(levels, torch.stack([torch.zeros(()), layer.weight_scale.detach()]))
    # the other blocks keep the scale ternary recomputes from their weights
    assert not hasattr(model.blocks[0].attn.q, "weight_scale")


def test_gain_rate_matches_per_batch_gradients_and_leaves_the_model_as_it_was(damaged):
    model, corpus, held = damaged
    x, y = held[0][:64], held[1][:64]
    flags = [p.requires_grad for p in model.parameters()]
    rate = gain_rates(model, x, y)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    # by hand, on a copy: .backward() of each batch of 16 windows, then the formula in float64
    ref = copy.deepcopy(model)
    batches = []
    for s in range(0, 64, 16):
        ref.zero_grad()
        logits = ref(x[s : s + 16])
        torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y[s : s + 16].reshape(-1)
        ).backward()
        batches.append([p.grad.double().clone() for p in ref.parameters()])
    names = [n for n, _ in ref.named_parameters()]
    for b in range(3):
        total = 0.0
        for i, n in enumerate(names):
            if not n.startswith(f"blocks.{b}."):
                continue
            g = torch.stack([batch[i] for batch in batches])
            a, c, v = g[0::2].mean(0), g[1::2].mean(0), g.pow(2).mean(0)
            total += float((a / (v.sqrt() + 1e-8) * c).sum())
        assert rate.values["rate"][b] == pytest.approx(1e-3 * total, rel=1e-4)


def test_training_records_the_loss_of_every_step():
    losses: dict[int, list] = {}
    _trained(Case(SPEC, 12, keep=(5,)), losses)
    assert sorted(losses) == [5, 12]
    assert [s for s, _ in losses[12]] == list(range(1, 13))
    assert losses[12][:5] == losses[5]
    assert all(0.0 < v < 10.0 for _, v in losses[12])
