import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from layerpeel import GPT, GPTConfig
from layerpeel.checkpoint import unique_state_dict
from layerpeel.errors import ConfigError
from layerpeel.quant import (
    SCHEMES,
    QuantConfig,
    QuantLinear,
    bits_per_weight,
    dequantize_,
    get_quantizer,
    quantize_,
)

TINY = GPTConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, block_size=16)
ALL = ["binary-global", "binary-channel", "ternary", "int2", "int3", "int4", "int8"]


def quantized_tiny(scheme, seed=0):
    torch.manual_seed(seed)
    return quantize_(GPT(TINY), QuantConfig(scheme=scheme))


def quant_layers(model):
    return [m for m in model.modules() if isinstance(m, QuantLinear)]


def test_default_filter_keeps_head_and_embeddings_full_precision():
    model = quantized_tiny("int4")
    names = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert len(names) == TINY.n_layer * 6  # q, k, v, out, fc, proj
    assert not isinstance(model.head, QuantLinear)
    assert type(model.wte) is torch.nn.Embedding


def test_binary_global_one_shared_scale_initialised_to_mean_abs():
    torch.manual_seed(0)
    plain = GPT(TINY)
    expected = torch.cat(
        [
            m.weight.detach().abs().flatten()
            for n, m in plain.named_modules()
            if isinstance(m, torch.nn.Linear) and not n.endswith("head")
        ]
    ).mean()
    model = quantize_(plain, QuantConfig(scheme="binary-global"))
    layers = quant_layers(model)
    assert model.quant_scale.value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(layer._scale() is model.quant_scale.value for layer in layers)
    for layer in layers:
        values = torch.unique(layer.quantized_weight().detach())
        lam = model.quant_scale.value.item()
        torch.testing.assert_close(values, torch.tensor([-lam, lam]))
    keys = [k for k in model.state_dict() if "quant_scale" in k]
    assert keys == ["quant_scale.value"]


def brute_nearest(w, levels):
    lv = torch.tensor(levels, dtype=w.dtype)
    return lv[(w[..., None] - lv).abs().argmin(-1)]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_intk_is_round_to_nearest_level_per_channel(bits):
    torch.manual_seed(bits)
    w = torch.randn(8, 20)
    qmax = 2 ** (bits - 1) - 1
    s = w.abs().max(dim=1, keepdim=True).values / qmax
    expected = brute_nearest(w / s, list(range(-qmax, qmax + 1))) * s
    got = get_quantizer(f"int{bits}").quantize(w)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_ternary_threshold_rule():
    torch.manual_seed(1)
    w = torch.randn(16, 16)
    delta = 0.7 * w.abs().mean()
    big = w.abs() > delta
    a = w.abs()[big].mean()
    expected = torch.where(big, a * torch.sign(w), torch.zeros_like(w))
    torch.testing.assert_close(get_quantizer("ternary").quantize(w), expected)


def test_binary_channel_scale_per_row():
    w = torch.tensor([[1.0, -3.0], [0.0, -0.5]])
    got = get_quantizer("binary-channel").quantize(w)
    torch.testing.assert_close(got, torch.tensor([[2.0, -2.0], [0.25, -0.25]]))


@pytest.mark.parametrize("scheme", ALL)
def test_gradients_pass_straight_through(scheme):
    torch.manual_seed(0)
    layer = quant_layers(quantized_tiny(scheme))[0]
    x = torch.randn(5, layer.in_features)
    g_out = torch.randn(5, layer.out_features)
    (layer(x) * g_out).sum().backward()
    expected = g_out.T @ x  # gradient w.r.t. the quantized weight, computed by hand
    torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-5, atol=1e-6)


def test_binary_global_scale_gets_its_true_gradient():
    model = quantized_tiny("binary-global")
    layers = quant_layers(model)[:2]
    x = torch.randn(4, layers[0].in_features)
    loss = layers[1](layers[0](x)).pow(2).sum()
    loss.backward()
    lam = model.quant_scale.value.detach().clone().requires_grad_(True)
    s0 = torch.where(layers[0].weight >= 0, 1.0, -1.0).detach()
    s1 = torch.where(layers[1].weight >= 0, 1.0, -1.0).detach()
    h = x @ (lam * s0).T + layers[0].bias.detach()
    ref = (h @ (lam * s1).T + layers[1].bias.detach()).pow(2).sum()
    (g,) = torch.autograd.grad(ref, lam)
    torch.testing.assert_close(model.quant_scale.value.grad, g)


@pytest.mark.parametrize("scheme", ALL)
def test_state_dict_round_trips_through_safetensors(tmp_path, scheme):
    model = quantized_tiny(scheme).eval()
    tensors, aliases = unique_state_dict(model)
    save_file(tensors, str(tmp_path / "w.safetensors"))
    loaded = load_file(str(tmp_path / "w.safetensors"))
    for alias, target in aliases.items():
        loaded[alias] = loaded[target]
    fresh = quantized_tiny(scheme, seed=1).eval()
    fresh.load_state_dict(loaded)
    idx = torch.randint(0, 64, (2, 16))
    assert torch.equal(model(idx), fresh(idx))


@pytest.mark.parametrize("scheme", ALL)
def test_loss_falls_when_training_quantized(scheme):
    model = quantized_tiny(scheme)
    seq = torch.arange(17) % 7
    x, y = seq[None, :-1].repeat(4, 1), seq[None, 1:].repeat(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = model.loss(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5


def test_bits_per_weight():
    assert bits_per_weight("binary-global") == 1.0
    assert bits_per_weight("ternary") == pytest.approx(math.log2(3))
    assert bits_per_weight("int4") == 4.0
    assert bits_per_weight("none") == 32.0
    model = quantized_tiny("int4")
    assert 4.0 < bits_per_weight(model) < 32.0


def test_dequantize_keeps_outputs():
    model = quantized_tiny("ternary").eval()
    idx = torch.randint(0, 64, (2, 16))
    before = model(idx)
    dequantize_(model)
    assert not quant_layers(model)
    torch.testing.assert_close(model(idx), before)


def test_unknown_scheme_is_a_config_error():
    with pytest.raises(ConfigError, match="int5"):
        QuantConfig(scheme="int5").validate()
    assert set(ALL) == set(SCHEMES)
