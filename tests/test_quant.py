"""Tests of layerpeel.quant: value sets and scales, STE gradients, checkpoints, training, bits."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call

from layerpeel import GPT, GPTConfig
from layerpeel.errors import ConfigError
from layerpeel.quant import (
    SCHEMES,
    GlobalScale,
    QuantConfig,
    QuantEmbedding,
    Quantizer,
    QuantLinear,
    bits_per_weight,
    dequantize_,
    get_quantizer,
    global_scale,
    is_quantized,
    layer_bits,
    model_scheme,
    quantize_,
    register_scheme,
)
from layerpeel.training.checkpoint import load_checkpoint, load_model_state, save_checkpoint

TINY = GPTConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, block_size=16)
UNTIED = dataclasses.replace(TINY, tie_weights=False)
ALL = ["binary-global", "binary-channel", "ternary", "int2", "int3", "int4", "int8"]
CODE_BITS = {
    "binary-global": 1.0,
    "binary-channel": 1.0,
    "ternary": math.log2(3),
    "int2": 2.0,
    "int3": 3.0,
    "int4": 4.0,
    "int8": 8.0,
}


def tiny_gpt(scheme: str, seed: int = 0, cfg: GPTConfig = TINY, **kw: bool) -> GPT:
    torch.manual_seed(seed)
    model = GPT(cfg)
    quantize_(model, QuantConfig(scheme=scheme, **kw))
    return model


def quant_layers(model: nn.Module) -> dict[str, QuantLinear | QuantEmbedding]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantEmbedding))}


def pm_sign(w: torch.Tensor) -> torch.Tensor:
    """Independent sign with sign(0) = +1."""
    out = torch.ones_like(w)
    out[w < 0] = -1.0
    return out


# ----------------------------------------------------------------------------- value sets


def test_binary_global_one_shared_scale_is_mean_abs_over_all_quantized_weights():
    torch.manual_seed(0)
    plain = GPT(TINY)
    plain.blocks[0].mlp.fc.weight.data[0, :3] = 0.0  # sign(0) must give +lambda
    expected = torch.cat(
        [
            m.weight.detach().double().abs().flatten()
            for n, m in plain.named_modules()
            if isinstance(m, nn.Linear) and n != "head"
        ]
    ).mean()
    model = quantize_(plain, QuantConfig(scheme="binary-global"))
    lam = model.quant_scale.value
    assert isinstance(model.quant_scale, GlobalScale) and global_scale(model) is model.quant_scale
    assert lam.requires_grad and lam.shape == ()
    assert lam.item() == pytest.approx(expected.item(), rel=1e-6)
    layers = quant_layers(model)
    assert len(layers) == 12
    for layer in layers.values():
        assert layer.global_scale is model.quant_scale
        assert layer.current_scale() is lam  # the same Parameter object in every layer
        q = layer.quantized_weight().detach()
        assert torch.equal(q, lam.detach() * pm_sign(layer.weight.detach()))
        assert set(q.unique().tolist()) <= {-lam.item(), lam.item()}
    assert torch.all(model.blocks[0].mlp.fc.quantized_weight()[0, :3] == lam)
    state = model.state_dict()
    holding_lam = [k for k, v in state.items() if v.data_ptr() == lam.data_ptr()]
    assert holding_lam == ["quant_scale.value"]  # stored exactly once
    assert sum(p is lam for p in model.parameters()) == 1


def test_binary_channel_is_sign_times_row_mean_abs():
    torch.manual_seed(1)
    w = torch.randn(6, 10)
    w[2] = 0.0
    w[3, 4] = 0.0
    expected = torch.stack([row.abs().sum() / row.numel() * pm_sign(row) for row in w])
    got = get_quantizer("binary-channel").quantize(w)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    assert got[3, 4] > 0 and torch.all(got[2] == 0)


def test_ternary_follows_the_twn_threshold_rule():
    torch.manual_seed(2)
    w = torch.randn(12, 20)
    delta = 0.7 * w.abs().sum() / w.numel()
    above = [abs(v) for v in w.flatten().tolist() if abs(v) > delta]
    a = sum(above) / len(above)
    expected = torch.tensor(
        [[a if v > delta else -a if v < -delta else 0.0 for v in row] for row in w.tolist()]
    )
    got = get_quantizer("ternary").quantize(w)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    assert set(torch.unique(get_quantizer("ternary").codes(w)).tolist()) == {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_intk_is_nearest_level_per_channel(bits):
    torch.manual_seed(bits)
    w = torch.randn(8, 24)
    w[5] = 0.0  # an all-zero row must give zeros, not nan
    quantizer = get_quantizer(f"int{bits}")
    qmax = 2 ** (bits - 1) - 1
    assert quantizer.levels == tuple(range(-qmax, qmax + 1))
    got = quantizer.quantize(w)
    for r, row in enumerate(w):
        s = row.abs().max().item() / qmax
        values = [level * s for level in range(-qmax, qmax + 1)]
        for c, v in enumerate(row.tolist()):
            nearest = min(values, key=lambda x: abs(x - v))  # brute force over the value set
            assert got[r, c].item() == pytest.approx(nearest, abs=1e-6)
    assert torch.all(got[5] == 0) and not got.isnan().any()
    if bits == 2:  # int2 is {-s, 0, s} per row
        s = w.abs().amax(dim=1, keepdim=True)
        assert torch.all((got == 0) | ((got.abs() - s).abs() < 1e-7))


@pytest.mark.parametrize("scheme", ALL)
def test_layer_uses_the_quantizer_values(scheme):
    model = tiny_gpt(scheme)
    quantizer = get_quantizer(scheme)
    for layer in quant_layers(model).values():
        w = layer.weight.detach()
        q = layer.quantized_weight().detach()
        scale = layer.current_scale().detach()
        assert torch.equal(q, quantizer.quantize(w, scale))
        allowed = quantizer.values(scale).reshape(scale.numel(), -1)  # (rows or 1, levels)
        rows = q if quantizer.per_channel else q.reshape(1, -1)
        for row, ok in zip(rows, allowed, strict=True):
            assert torch.isin(row, ok).all()
        assert set(torch.unique(layer.codes()).tolist()) <= set(quantizer.levels)


@pytest.mark.parametrize("scheme", ALL)
def test_quantizing_a_quantized_weight_changes_nothing(scheme):
    torch.manual_seed(6)
    quantizer = get_quantizer(scheme)
    q = quantizer.quantize(torch.randn(10, 16))
    torch.testing.assert_close(quantizer.quantize(q), q, rtol=1e-6, atol=0)


def test_half_precision_weights_quantize_without_underflow():
    torch.manual_seed(3)
    lin = nn.Linear(16, 4, dtype=torch.bfloat16)
    q = QuantLinear.from_linear(lin, "int4").quantized_weight().detach()
    assert q.dtype == torch.bfloat16 and not q.isnan().any()
    ref = get_quantizer("int4").quantize(lin.weight.detach().float())
    torch.testing.assert_close(q.float(), ref, rtol=1e-2, atol=1e-3)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("scheme", ALL)
def test_gradients_pass_straight_through_the_whole_model(scheme):
    """The latent weight gets d loss / d Q(weight), the latter taken from a plain model."""
    model = tiny_gpt(scheme, cfg=UNTIED)
    idx = torch.randint(0, 64, (2, 12))
    tgt = torch.randint(0, 64, (2, 12))
    model.loss(idx, tgt).backward()
    plain = dequantize_(copy.deepcopy(model))
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in plain.named_parameters()}
    logits = functional_call(plain, leaves, (idx,), strict=True)
    loss = nn.functional.cross_entropy(logits.reshape(-1, 64), tgt.reshape(-1))
    torch.testing.assert_close(loss, model.loss(idx, tgt), rtol=0, atol=0)
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
    for name, layer in quant_layers(model).items():
        assert layer.weight.grad is not None
        torch.testing.assert_close(layer.weight.grad, grads[f"{name}.weight"])
        torch.testing.assert_close(layer.bias.grad, grads[f"{name}.bias"])


@pytest.mark.parametrize("cfg", [TINY, UNTIED])
def test_binary_global_scale_gets_its_true_gradient(cfg):
    model = tiny_gpt("binary-global", cfg=cfg)
    idx, tgt = torch.randint(0, 64, (2, 12)), torch.randint(0, 64, (2, 12))
    model.loss(idx, tgt).backward()
    # explicit reference: a plain GPT whose quantized weights are lam * sign(W), lam a leaf
    torch.manual_seed(0)
    ref = GPT(cfg)
    ref.load_state_dict(model.state_dict(), strict=False)
    lam = model.quant_scale.value.detach().clone().requires_grad_(True)
    params = dict(ref.named_parameters())
    for name, layer in quant_layers(model).items():
        params[f"{name}.weight"] = lam * pm_sign(layer.weight.detach())
    logits = functional_call(ref, params, (idx,))
    loss = nn.functional.cross_entropy(logits.reshape(-1, 64), tgt.reshape(-1))
    (g,) = torch.autograd.grad(loss, lam)
    assert g.abs() > 0
    torch.testing.assert_close(model.quant_scale.value.grad, g, rtol=1e-4, atol=1e-7)


@pytest.fixture
def learned_scheme():
    """A temporary scheme with a learnable per-channel scale, registered for one test."""

    @register_scheme("test-binary-learned")
    class BinaryLearned(Quantizer):
        levels = (-1, 1)
        code_bits = 1.0
        per_channel = True
        learnable_scale = True

        def init_scale(self, w):
            return w.abs().mean(dim=1, keepdim=True)

        def codes(self, w, scale=None):
            return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

    yield "test-binary-learned"
    del SCHEMES["test-binary-learned"]


def test_learnable_per_layer_scale_is_a_parameter_with_true_gradient(learned_scheme):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    expected_init = net[0].weight.detach().abs().mean(dim=1)
    quantize_(net, QuantConfig(scheme=learned_scheme))
    assert "0.weight_scale" in net.state_dict() and "2.weight_scale" in net.state_dict()
    s0 = net[0].weight_scale
    assert s0.shape == (5,) and torch.equal(s0.detach(), expected_init)
    x = torch.randn(7, 6)
    net(x).pow(2).sum().backward()
    leaf0 = s0.detach().clone().requires_grad_(True)
    leaf2 = net[2].weight_scale.detach().clone().requires_grad_(True)
    w0 = leaf0[:, None] * pm_sign(net[0].weight.detach())
    w2 = leaf2[:, None] * pm_sign(net[2].weight.detach())
    h = torch.relu(x @ w0.T + net[0].bias.detach())
    g0, g2 = torch.autograd.grad((h @ w2.T + net[2].bias.detach()).pow(2).sum(), [leaf0, leaf2])
    torch.testing.assert_close(s0.grad, g0)
    torch.testing.assert_close(net[2].weight_scale.grad, g2)


def test_tied_layers_share_one_learnable_scale(learned_scheme):
    model = tiny_gpt(learned_scheme, quantize_embeddings=True)
    assert model.head.weight_scale is model.wte.weight_scale
    state = model.state_dict()
    assert state["head.weight_scale"].data_ptr() == state["wte.weight_scale"].data_ptr()
    assert torch.equal(model.head.quantized_weight(), model.wte.quantized_weight())


def test_register_scheme_refuses_duplicates_and_none():
    with pytest.raises(ValueError, match="already registered"):
        register_scheme("int4")(type("Again", (Quantizer,), {}))
    with pytest.raises(ValueError, match="reserved"):
        register_scheme("none")


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("scheme", ALL)
def test_state_dict_round_trips_through_safetensors_bit_exactly(tmp_path, scheme):
    model = tiny_gpt(scheme, cfg=UNTIED).eval()
    with torch.no_grad():  # move away from init so a fresh model cannot match by accident
        for p in model.parameters():
            p.mul_(1.1)
    state = model.state_dict()
    plain_keys = set(GPT(UNTIED).state_dict())
    extra = {"quant_scale.value"} if scheme == "binary-global" else set()
    assert set(state) == plain_keys | extra
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))  # refuses shared tensors: the global scale must be stored once
    cfg_json = QuantConfig(scheme=scheme).to_dict()
    fresh = GPT(UNTIED)
    quantize_(fresh, QuantConfig.from_dict(cfg_json))
    fresh.load_state_dict(load_file(str(path)), strict=True)
    fresh.eval()
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert torch.equal(fresh(idx), model(idx))
    if scheme == "binary-global":
        assert all(m.global_scale is fresh.quant_scale for m in quant_layers(fresh).values())


def test_checkpoint_with_tied_quantized_embeddings_round_trips(tmp_path):
    qcfg = QuantConfig(scheme="binary-global", quantize_embeddings=True)
    model = tiny_gpt("binary-global", quantize_embeddings=True)
    with torch.no_grad():
        model.quant_scale.value.mul_(1.5)
    meta = {"step": 3, "model": TINY.to_dict(), "quant": qcfg.to_dict()}
    jpath = save_checkpoint(tmp_path, "step_000003", model, meta)
    ckpt = load_checkpoint(jpath)
    fresh = GPT(GPTConfig.from_dict(ckpt.meta["model"]))
    quantize_(fresh, QuantConfig.from_dict(ckpt.meta["quant"]))
    load_model_state(fresh, ckpt)
    assert fresh.head.weight is fresh.wte.weight
    assert fresh.quant_scale.value.item() == model.quant_scale.value.item()
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert torch.equal(fresh(idx), model(idx))


def test_deepcopy_and_pickle_keep_one_shared_scale():
    model = tiny_gpt("binary-global")
    idx = torch.randint(0, 64, (1, 8))
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert other.quant_scale is not model.quant_scale
        assert all(m.global_scale is other.quant_scale for m in quant_layers(other).values())
        assert all(m.quantizer is SCHEMES["binary-global"] for m in quant_layers(other).values())
        with torch.no_grad():
            assert torch.equal(other(idx), model(idx))


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("scheme", ALL)
def test_quantized_gpt_trains(scheme):
    model = tiny_gpt(scheme)
    seq = torch.arange(17) % 5
    x, y = seq[None, :-1].repeat(4, 1), seq[None, 1:].repeat(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    lam0 = model.quant_scale.value.item() if scheme == "binary-global" else None
    losses = []
    for _ in range(30):
        loss = model.loss(x, y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0], losses[::5]
    if scheme == "binary-global":  # the shared scale learned and every layer still uses it
        lam = model.quant_scale.value
        assert lam.item() != lam0
        q = model.blocks[1].mlp.proj.quantized_weight().detach()
        assert set(q.unique().tolist()) <= {-lam.item(), lam.item()}


# ----------------------------------------------------------------------------- selection


def test_default_selection_leaves_head_and_embeddings_alone_and_keeps_parameters():
    torch.manual_seed(0)
    model = GPT(TINY)
    before = {n: p for n, p in model.named_parameters()}
    quantize_(model, QuantConfig(scheme="int4"))
    names = set(quant_layers(model))
    assert names == {
        f"blocks.{i}.{s}"
        for i in range(2)
        for s in ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.fc", "mlp.proj")
    }
    assert type(model.head) is nn.Linear and type(model.wte) is nn.Embedding
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    assert all(after[n] is p for n, p in before.items())  # an existing optimizer stays valid
    assert model_scheme(model) == "int4" and is_quantized(model)


def test_quantize_head_and_embeddings_on_an_untied_model():
    model = tiny_gpt("int8", cfg=UNTIED, quantize_head=True)
    assert isinstance(model.head, QuantLinear) and type(model.wte) is nn.Embedding
    model = tiny_gpt("ternary", cfg=UNTIED, quantize_embeddings=True)
    assert isinstance(model.wte, QuantEmbedding) and isinstance(model.wpe, QuantEmbedding)
    assert type(model.head) is nn.Linear
    idx = torch.randint(0, 64, (2, 16))
    emb = model.wte(idx)
    assert torch.equal(emb, model.wte.quantized_weight()[idx])


def test_tied_weight_is_quantized_everywhere_or_nowhere(caplog):
    with caplog.at_level(logging.WARNING, logger="layerpeel.quant"):
        model = tiny_gpt("binary-channel", quantize_embeddings=True)
    assert "head" in caplog.text and "tied" in caplog.text
    assert isinstance(model.wte, QuantEmbedding) and isinstance(model.head, QuantLinear)
    assert model.head.weight is model.wte.weight
    assert torch.equal(model.head.quantized_weight(), model.wte.quantized_weight())
    model = tiny_gpt("int4")  # tied, nothing tied chosen: both stay full precision
    assert type(model.head) is nn.Linear and type(model.wte) is nn.Embedding


def test_filter_fn_and_none_and_double_quantization():
    torch.manual_seed(0)
    model = GPT(TINY)
    quantize_(model, QuantConfig(scheme="int3"), filter_fn=lambda m, name: name.endswith("fc"))
    assert set(quant_layers(model)) == {"blocks.0.mlp.fc", "blocks.1.mlp.fc"}
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_(model, QuantConfig(scheme="int3"))
    plain = GPT(TINY)
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    assert quantize_(plain, QuantConfig()) is plain and not is_quantized(plain)
    assert all(torch.equal(v, state[k]) for k, v in plain.state_dict().items())


def test_any_module_shared_submodules_and_multihead_attention():
    torch.manual_seed(5)
    shared = nn.Linear(4, 4)
    net = nn.ModuleDict({"a": shared, "b": shared, "mha": nn.MultiheadAttention(4, 2)})
    quantize_(net, QuantConfig(scheme="int8"))
    assert isinstance(net["a"], QuantLinear) and net["a"] is net["b"]
    assert type(net["mha"].out_proj) is not QuantLinear  # MHA reads its weights directly


def test_bad_configs_are_config_errors():
    with pytest.raises(ConfigError, match="int5.*binary-global"):
        QuantConfig(scheme="int5").validate()
    with pytest.raises(ConfigError, match="scheme"):
        QuantConfig.from_dict({"scheme": "int5"})
    with pytest.raises(ConfigError, match="quantize_head"):
        QuantConfig(scheme="int4", quantize_head="yes").validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="int5"):
        quantize_(GPT(TINY), QuantConfig(scheme="int5"))
    with pytest.raises(ConfigError, match="known"):
        get_quantizer("int5")
    with pytest.raises(ConfigError, match="shares one scale"):
        QuantLinear(4, 4, quantizer="binary-global")
    cfg = QuantConfig(scheme="ternary", quantize_embeddings=True)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert set(SCHEMES) == set(ALL)


# ----------------------------------------------------------------------------- dequantize, bits


@pytest.mark.parametrize("scheme", ["binary-global", "ternary", "int4"])
def test_dequantize_keeps_outputs_and_ties(scheme):
    model = tiny_gpt(scheme, quantize_embeddings=True).eval()
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        before = model(idx)
        expected = model.blocks[0].attn.v.quantized_weight().clone()
    dequantize_(model)
    assert not is_quantized(model) and global_scale(model) is None
    assert set(model.state_dict()) == set(GPT(TINY).state_dict())
    assert model.head.weight is model.wte.weight
    assert torch.equal(model.blocks[0].attn.v.weight, expected)
    with torch.no_grad():
        assert torch.equal(model(idx), before)


@pytest.mark.parametrize("scheme", ALL)
def test_bits_per_weight_of_schemes(scheme):
    assert bits_per_weight(scheme) == pytest.approx(CODE_BITS[scheme])
    assert get_quantizer(scheme).bits_per_weight == pytest.approx(CODE_BITS[scheme])


def test_bits_per_weight_of_models_counts_scales_once():
    assert bits_per_weight("none") == 32.0
    model = tiny_gpt("binary-global")
    n = sum(m.weight.numel() for m in quant_layers(model).values())
    assert bits_per_weight(model, quantized_only=True) == pytest.approx((n + 32) / n)
    model = tiny_gpt("int4")
    layers = quant_layers(model).values()
    n = sum(m.weight.numel() for m in layers)
    bits = sum(4 * m.weight.numel() + 32 * m.out_features for m in layers)
    assert bits_per_weight(model, quantized_only=True) == pytest.approx(bits / n)
    rows = layer_bits(model)
    assert len(rows) == 12 + 2  # wte (tied with head, counted once) and wpe full precision
    full = sum(r.n_weights for r in rows if r.scheme == "none")
    assert bits_per_weight(model) == pytest.approx((bits + 32 * full) / (n + full))
    assert get_quantizer("ternary").storage_bits((4, 8)) == pytest.approx(32 * math.log2(3) + 32)
