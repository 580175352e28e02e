import pytest
import torch

from layerpeel import GPT, GPTConfig
from layerpeel.arch.capture import residual_stream
from layerpeel.arch.table import model_view
from layerpeel.solvers.closed import peel_block
from layerpeel.solvers.lstsq import Gram, sample_space_solve
from layerpeel.solvers.quantized import refit_scales

TINY = GPTConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, block_size=16)


def streamed(x, y, bias=True, chunks=4):
    g = Gram(x.shape[1], y.shape[1], bias=bias)
    for xb, yb in zip(x.chunk(chunks), y.chunk(chunks), strict=True):
        g.update(xb, yb)
    return g


@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_streamed_ridge_matches_lstsq_on_the_materialised_problem(ridge):
    torch.manual_seed(0)
    x = torch.randn(200, 12, dtype=torch.float64)
    y = x @ torch.randn(12, 5, dtype=torch.float64) + 0.1 * torch.randn(200, 5, dtype=torch.float64)
    w, b = streamed(x, y).solve(ridge)
    lam = ridge * float((x * x).sum()) / 12
    # independent reference: lstsq on [X 1; sqrt(lam) I 0] with the bias unpenalised
    a = torch.cat([x, torch.ones(200, 1, dtype=torch.float64)], 1)
    a = torch.cat([a, torch.cat([lam**0.5 * torch.eye(12), torch.zeros(12, 1)], 1).double()], 0)
    rhs = torch.cat([y, torch.zeros(12, 5, dtype=torch.float64)], 0)
    ref = torch.linalg.lstsq(a, rhs).solution
    torch.testing.assert_close(w, ref[:12], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(b, ref[12], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("bias", [True, False])
def test_sample_space_ridge_matches_lstsq_with_fewer_samples_than_features(bias):
    torch.manual_seed(3)
    n, p = 30, 80
    x = torch.randn(n, p, dtype=torch.float64) + 0.5  # not centred: the bias has work to do
    y = torch.randn(n, 4, dtype=torch.float64)
    ridge = 1e-3
    w, b = sample_space_solve(x, y, ridge, bias=bias)
    lam = ridge * float((x * x).sum()) / p
    # independent reference: lstsq on [X 1; sqrt(lam) I 0], the bias (if any) unpenalised
    a = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1) if bias else x
    pen = torch.cat(
        [lam**0.5 * torch.eye(p, dtype=torch.float64), torch.zeros(p, a.shape[1] - p)], 1
    )
    ref = torch.linalg.lstsq(torch.cat([a, pen], 0), torch.cat([y, torch.zeros(p, 4)], 0)).solution
    torch.testing.assert_close(w, ref[:p], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(b, ref[p] if bias else torch.zeros(4, dtype=torch.float64))
    gw, gb = streamed(x, y, bias=bias).solve(ridge)  # the streamed normal equations agree
    torch.testing.assert_close(w, gw, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(b, gb, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError):
        sample_space_solve(x, y, 0.0)


def test_rank_deficient_gives_pinv_predictions():
    torch.manual_seed(1)
    x = torch.randn(50, 6, dtype=torch.float64)
    x[:, 4] = 0.0  # a dead unit
    x[:, 5] = x[:, 0]  # a duplicate
    y = torch.randn(50, 3, dtype=torch.float64)
    g = streamed(x, y)
    w, b = g.solve(0.0)
    a = torch.cat([x, torch.ones(50, 1, dtype=torch.float64)], 1)
    expected = a @ (torch.linalg.pinv(a) @ y)
    torch.testing.assert_close(x @ w + b, expected, rtol=1e-7, atol=1e-9)
    assert g.sse(w, b) == pytest.approx(float(((expected - y) ** 2).sum()), rel=1e-7)


@pytest.mark.parametrize("bias", [False, True])
def test_binary_scale_matches_grid_search(bias):
    torch.manual_seed(2)
    x = torch.randn(300, 8, dtype=torch.float64)
    y = torch.randn(300, 4, dtype=torch.float64) + (x @ torch.randn(8, 4, dtype=torch.float64))
    g = streamed(x, y, bias=bias)
    codes = torch.sign(torch.randn(8, 4, dtype=torch.float64))
    weight, bvec = refit_scales(g, codes, per_channel=False)
    lam = float(weight[0, 0] / codes[0, 0])

    def loss(lam_):
        pred = x @ (lam_ * codes)
        if bias:
            pred = pred + (y - pred).mean(0)  # the best bias for this scale
        return float(((pred - y) ** 2).sum())

    grid = torch.linspace(lam - 1, lam + 1, 2001, dtype=torch.float64)
    best = grid[torch.tensor([loss(float(v)) for v in grid]).argmin()]
    assert lam == pytest.approx(float(best), abs=1.1e-3)
    if not bias:
        s_h = x @ codes
        assert lam == pytest.approx(float((y * s_h).sum() / (s_h * s_h).sum()), rel=1e-10)


@pytest.mark.parametrize("scheme", ["none", "ternary"])
def test_substituting_a_blocks_own_weights_reproduces_the_logits(scheme):
    from layerpeel.quant import QuantConfig, quantize_

    torch.manual_seed(3)
    model = quantize_(GPT(TINY), QuantConfig(scheme=scheme)).eval()
    view = model_view(model)
    idx = torch.randint(0, 64, (8, 16))
    stream = residual_stream(view, idx)
    with torch.no_grad():
        for i in range(TINY.n_layer):
            logits = view.run_from(i, stream[i], {i: view.reference_copy(i)})
            assert torch.equal(logits, model(idx))


@pytest.mark.parametrize("part", ["block", "attn", "mlp"])
def test_peeling_a_block_onto_its_own_output_keeps_it(part):
    torch.manual_seed(3)
    model = GPT(TINY).eval()
    view = model_view(model)
    idx = torch.randint(0, 64, (64, 16))  # 1024 tokens: more than the 129 MLP features
    stream = residual_stream(view, idx)
    ref = peel_block(view, 0, stream[0], stream[1], part)
    with torch.no_grad():
        torch.testing.assert_close(
            view.run_from(0, stream[0], {0: ref}), model(idx), rtol=1e-4, atol=1e-5
        )


def test_peeling_moves_towards_a_new_target():
    torch.manual_seed(4)
    model = GPT(TINY).eval()
    view = model_view(model)
    stream = residual_stream(view, torch.randint(0, 64, (16, 16)))
    target = stream[1] + 0.05 * torch.randn_like(stream[1])
    ref = peel_block(view, 0, stream[0], target, "block")
    with torch.no_grad():
        before = (stream[1] - target).pow(2).mean()
        after = (ref(stream[0]) - target).pow(2).mean()
    assert after < before
