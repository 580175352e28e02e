"""YES bounds: parity with a plain per-subset pinv computation, achievability, monotonicity, errors."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from layerpeel.errors import LayerpeelError
from layerpeel.models import MLP, MLPConfig
from layerpeel.yes import YesBounds, YesInputError, YesTracker, yes_bounds
from layerpeel.yes.basis import Basis
from layerpeel.yes.bounds import verdict

RTOL = 1e-6


# ----------------------------------------------------------------------------- the plain reference


def plain_losses(X, Y, hidden, bias=True):
    """J(sigma) for every anchor subset, written from the definition in docs/yes.md with nothing shared.

    For each subset and each layer: H~ = [H; 1^T], W = T pinv(H~) with numpy's pinv at the usual
    cutoff max(rows, N) * eps * sigma_max, H = ReLU(W H~) (no ReLU on the last layer).
    """
    X, Y = np.asarray(X, float), np.asarray(Y, float)
    hidden = [np.asarray(h, float) for h in hidden]
    n_layers, n = len(hidden) + 1, Y.shape[1]
    losses = {}
    for k in range(n_layers):
        for sub in itertools.combinations(range(1, n_layers), k):
            h = X
            for layer in range(1, n_layers + 1):
                anchor = min([s for s in sub if s >= layer], default=n_layers)
                target = Y if anchor == n_layers else hidden[anchor - 1]
                ht = np.vstack([h, np.ones((1, n))]) if bias else h
                w = target @ np.linalg.pinv(ht, rcond=max(ht.shape) * np.finfo(float).eps)
                h = w @ ht
                if layer < n_layers:
                    h = np.maximum(h, 0)
            losses[sub] = float(((h - Y) ** 2).sum() / n)
    return losses


def plain_yes(losses, n_layers):
    yes0 = losses[()]
    yes, prev = [], yes0
    for k in range(1, n_layers):
        prev = min(prev, min(v for s, v in losses.items() if len(s) == k))
        yes.append(prev)
    return yes0, yes


def rel(a, b, floor=1e-300):
    """Relative error; `floor` keeps losses that are 0 up to rounding from dividing by ~0."""
    return abs(a - b) / max(abs(b), floor)


def assert_parity(b: YesBounds, X, Y, hidden, bias=True):
    ref = plain_losses(X, Y, hidden, bias)
    assert set(b.losses) == set(ref)
    floor = 1e-12 * float((np.asarray(Y) ** 2).sum()) / np.asarray(Y).shape[1]
    worst = max(rel(b.losses[s], v, floor) for s, v in ref.items())
    assert worst < RTOL, worst
    yes0, yes = plain_yes(ref, len(hidden) + 1)
    assert rel(b.yes0, yes0, floor) < RTOL
    assert all(rel(a, c, floor) < RTOL for a, c in zip(b.yes, yes, strict=True))


# ----------------------------------------------------------------------------- data


def net_data(n=5, m=8, n_samples=60, n_layers=4, seed=0):
    """X (n, N), Y (m, N) and the hidden outputs (m, N) of a random float64 MLP."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_samples, generator=g, dtype=torch.float64)
    y = torch.randn(m, n, generator=g, dtype=torch.float64) @ x
    y = y.abs()
    torch.manual_seed(seed)
    net = MLP(MLPConfig(n_in=n, width=m, n_layers=n_layers)).double()
    with torch.no_grad():
        hidden = [h.T for h in net.hidden(x.T)]
    return x, y, hidden


def rank_deficient_data(seed=1):
    """Dead units, a duplicated unit, a dead layer and a duplicated input feature."""
    x, y, hidden = net_data(n=5, m=8, n_samples=50, n_layers=5, seed=seed)
    x = torch.cat([x, x[:1]])  # a repeated feature
    hidden = [h.clone() for h in hidden]
    hidden[0][[1, 4]] = 0.0  # dead units
    hidden[1][3] = hidden[1][2]  # a duplicated unit
    hidden[1][6] = 0.0
    hidden[2][:] = 0.0  # a dead layer
    hidden[3][5] = 2.0 * hidden[3][0]  # a scaled copy
    return x, y, hidden


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("seed", [0, 1])
def test_parity_random(seed):
    x, y, hidden = net_data(seed=seed)
    b = yes_bounds(x, y, hidden)
    assert_parity(b, x, y, hidden)
    assert b.stats["subsets"] == 2 ** (len(hidden))


def test_parity_random_relu_targets_no_bias():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 40))
    y = rng.standard_normal((6, 40))
    hidden = [np.maximum(rng.standard_normal((6, 40)), 0) for _ in range(3)]
    hidden[1][:] = 0.0  # a dead layer: without a bias row that input has no rows at all
    b = yes_bounds(x, y, hidden, bias=False)
    assert_parity(b, x, y, hidden, bias=False)


def test_parity_two_layers():
    x, y, hidden = net_data(n_layers=2)
    b = yes_bounds(x, y, hidden)
    assert_parity(b, x, y, hidden)
    assert len(b.yes) == 1 and b.best_subset in ((), (1,))


def test_parity_rank_deficient():
    x, y, hidden = rank_deficient_data()
    b = yes_bounds(x, y, hidden)
    assert_parity(b, x, y, hidden)
    assert b.stats["gram"] < b.stats["factorizations"]  # the slow paths were exercised


@pytest.mark.parametrize("bias", [True, False])
def test_yes0_path_that_converges_at_its_first_layer_matches_pinv(bias):
    """A first fit with no negative entry ends the YES-0 path early; the loss is still pinv's."""
    x, y, hidden = net_data(n_layers=5, seed=2)
    y = y + 5.0  # far above 0: its least-squares fit from X is positive everywhere
    ones = torch.ones(1, x.shape[1], dtype=x.dtype)
    if not bias:
        x = torch.cat([x, ones])  # a constant feature, so that the fit can follow the offset
    xt = torch.cat([x, ones]) if bias else x
    first_fit = y @ torch.linalg.pinv(xt) @ xt
    assert float(first_fit.min()) > 0  # the case under test: the first ReLU changes nothing
    assert float((y - first_fit).square().sum()) > 1e-3  # and the loss is not trivially 0
    assert_parity(yes_bounds(x, y, hidden, bias=bias), x, y, hidden, bias=bias)


def test_parity_fewer_samples_than_width_warns():
    x, y, hidden = net_data(n=4, m=8, n_samples=7, n_layers=3)
    with pytest.warns(UserWarning, match="minimum-norm"):
        b = yes_bounds(x, y, hidden)
    assert_parity(b, x, y, hidden)


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("random", "gram"),
        ("dead_rows", "gram"),
        ("duplicate", "eig"),
        ("tiny_singular", "svd"),
        ("wide", "eig"),
        ("zero", "svd"),
        ("ill", "qr"),
        ("gap_ill", "eig"),
    ],
)
def test_basis_predictions_match_pinv(case, kind):
    """Each factorization path gives pinv's predictions, weights and residual."""
    rng = np.random.default_rng(7)
    h = np.maximum(rng.standard_normal((9, 30)), 0)
    if case == "dead_rows":
        h[[2, 5]] = 0
    elif case == "duplicate":
        h[3] = h[1]
    elif case == "tiny_singular":  # rank 4 plus noise at 1e-6: kept by pinv
        h = rng.standard_normal((9, 4)) @ rng.standard_normal((4, 30))
        h += 1e-6 * rng.standard_normal((9, 30))
    elif case == "wide":
        h = h[:, :6]
    elif case == "zero":
        h[:] = 0
    elif case == "ill":  # full rank, condition number ~1e6
        u, _, vt = np.linalg.svd(rng.standard_normal((9, 30)), full_matrices=False)
        h = (u * np.logspace(0, -6, 9)) @ vt
    elif case == "gap_ill":  # rank 5 with singular values 1 .. 1e-5, then nothing
        u = np.linalg.qr(rng.standard_normal((9, 5)))[0]
        vt = np.linalg.qr(rng.standard_normal((30, 5)))[0].T
        h = (u * np.logspace(0, -5, 5)) @ vt
    t = rng.standard_normal((5, h.shape[1]))
    ref = t @ np.linalg.pinv(h, rcond=max(h.shape) * np.finfo(float).eps) @ h
    basis = Basis(torch.from_numpy(h))  # Basis works on float64 tensors
    assert basis.kind == kind
    if case == "gap_ill":  # the kept rows' Gram is too ill-conditioned for normal equations
        assert basis.pivoted and basis.kinv is None and basis.cond > 1e8
    got = basis.project(torch.from_numpy(t)).numpy()
    assert np.linalg.norm(got - ref) <= 1e-8 * max(np.linalg.norm(ref), 1.0)
    w = basis.weights(torch.from_numpy(t)).numpy()
    assert np.allclose(w @ h, ref, atol=1e-8 * max(np.linalg.norm(ref), 1.0))
    sse = basis.sse(torch.from_numpy(t), float((t**2).sum()))
    assert sse == pytest.approx(float(((t - ref) ** 2).sum()), rel=1e-9, abs=1e-12)


def test_numpy_and_torch_inputs_agree():
    x, y, hidden = net_data()
    a = yes_bounds(x, y, hidden)
    b = yes_bounds(x.numpy(), y.numpy(), [h.float().numpy() for h in hidden])
    assert rel(a.yes0, b.yes0) < 1e-12
    assert all(rel(p, q) < 1e-6 for p, q in zip(a.yes, b.yes, strict=True))


# ----------------------------------------------------------------------------- achievability


def reference_mse(b: YesBounds, x, y, subset=None) -> float:
    net = b.reference_mlp(subset)
    assert next(net.parameters()).dtype == torch.float64
    with torch.no_grad():
        pred = net(torch.as_tensor(x, dtype=torch.float64).T)  # (N, m)
    return float(((pred - torch.as_tensor(y, dtype=torch.float64).T) ** 2).sum(1).mean())


@pytest.mark.parametrize("data", ["random", "rank_deficient"])
def test_reference_network_reaches_the_bound(data):
    x, y, hidden = net_data(seed=2) if data == "random" else rank_deficient_data()
    b = yes_bounds(x, y, hidden)
    assert rel(reference_mse(b, x, y), b.yes[-1]) < RTOL
    for k, sub in enumerate(b.best_subsets):
        assert rel(b.losses[sub], b.yes[k - 1] if k else b.yes0) < 1e-12
        assert rel(reference_mse(b, x, y, sub), b.losses[sub]) < RTOL
    assert rel(reference_mse(b, x, y, ()), b.yes0) < RTOL


def test_reference_network_without_bias():
    x, y, hidden = net_data(seed=4)
    b = yes_bounds(x, y, hidden, bias=False)
    net = b.reference_mlp()
    assert all(layer.bias is None for layer in net.layers)
    assert rel(reference_mse(b, x, y), b.yes[-1]) < RTOL


def test_reference_subset_validation():
    x, y, hidden = net_data()
    b = yes_bounds(x, y, hidden)
    with pytest.raises(YesInputError):
        b.reference_mlp((2, 1))
    with pytest.raises(YesInputError):
        b.reference_mlp((4,))


# ----------------------------------------------------------------------------- monotonicity


def test_bounds_are_monotone_and_best_subsets_consistent():
    x, y, hidden = net_data(n_layers=5, seed=5)
    b = yes_bounds(x, y, hidden)
    chain = [b.yes0, *b.yes]
    assert all(later <= earlier for earlier, later in itertools.pairwise(chain))
    assert b.best_subset == b.best_subsets[-1]
    assert all(len(s) <= k for k, s in enumerate(b.best_subsets))
    rows = b.rows()
    assert len(rows) == 2**4 and rows[0]["subset"] == []


def test_tracker_never_rises_and_colours():
    x, y, _ = net_data(n_layers=4)
    tracker = YesTracker(x, y)
    losses = [50.0, 3.0, 0.01, 20.0]
    for seed, loss in enumerate(losses):
        _, _, hidden = net_data(n_layers=4, seed=seed)
        row = tracker.check(hidden, train_loss=loss, epoch=seed)
        assert row.epoch == seed
    rows = tracker.history
    for a, b in itertools.pairwise(rows):
        assert b.yes0_min <= a.yes0_min
        assert all(q <= p for p, q in zip(a.yes_min, b.yes_min, strict=True))
    for r in rows:
        chain = [r.yes0_min, *r.yes_min]
        assert all(q <= p for p, q in itertools.pairwise(chain))
        assert r.verdict == verdict(r.train_loss, r.yes0_min, r.yes_min[-1])
    assert rows[0].verdict == "red" and rows[2].verdict == "green"
    assert tracker.latest is rows[-1]
    d = rows[-1].to_dict()
    assert {"epoch", "train_loss", "train_loss_db", "yes0", "yes", "yes0_min", "yes_min"} <= set(d)


def test_verdict_thresholds():
    assert verdict(2.0, 1.0, 0.5) == "red"
    assert verdict(1.0, 1.0, 0.5) == "yellow"
    assert verdict(0.5, 1.0, 0.5) == "green"


def test_max_anchors_cap():
    x, y, hidden = net_data(n_layers=5, seed=6)
    full = yes_bounds(x, y, hidden)
    for cap in (0, 1, 2):
        tracker = YesTracker(x, y, max_anchors=cap)
        b = tracker.bounds(hidden)
        assert max(len(s) for s in b.losses) == cap
        assert b.max_anchors == cap
        assert b.yes0 == pytest.approx(full.yes0, rel=1e-12)
        for k in range(1, 5):
            want = full.yes[k - 1] if k <= cap else b.yes[cap - 1] if cap else b.yes0
            assert b.yes[k - 1] == pytest.approx(want, rel=1e-9)
        assert b.stats["factorizations"] <= full.stats["factorizations"]


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize(("n_layers", "cap"), [(2, None), (5, None), (6, None), (6, 2), (5, 1)])
def test_torch_threads_change_neither_bounds_nor_work(threads, n_layers, cap):
    """The serial walk under several torch thread counts: every J(sigma) and work count as on one."""
    x, y, hidden = rank_deficient_data() if n_layers == 5 else net_data(n_layers=n_layers)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = YesTracker(x, y, max_anchors=cap).bounds(hidden)
        torch.set_num_threads(threads)
        many = YesTracker(x, y, max_anchors=cap).bounds(hidden)
        assert torch.get_num_threads() == threads  # the walk leaves the setting alone
    finally:
        torch.set_num_threads(before)
    assert set(many.losses) == set(one.losses)
    for sub, value in one.losses.items():
        assert many.losses[sub] == pytest.approx(value, rel=1e-10, abs=1e-14)
    assert many.stats == one.stats
    if cap is None:
        assert_parity(many, x, y, hidden)


def test_walks_from_several_caller_threads_agree():
    """Callers on their own threads at once: each walk has its own state, the results are exact."""
    from concurrent.futures import ThreadPoolExecutor

    datasets = [net_data(n_layers=5, seed=s) for s in range(3)] + [rank_deficient_data()]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = [yes_bounds(x, y, h).losses for x, y, h in datasets]
        torch.set_num_threads(2)
        with ThreadPoolExecutor(max_workers=len(datasets)) as callers:
            runs = [
                callers.submit(lambda d: [yes_bounds(*d).losses for _ in range(3)], d)
                for d in datasets
            ]
            got = [r.result() for r in runs]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    for expected, repeats in zip(want, got, strict=True):
        for losses in repeats:
            assert set(losses) == set(expected)
            for sub, value in expected.items():
                assert losses[sub] == pytest.approx(value, rel=1e-10, abs=1e-14)


# ----------------------------------------------------------------------------- devices


def test_walk_runs_in_torch_on_the_inputs_device():
    """Tensor inputs are walked as float64 tensors where they are; numpy inputs on the CPU."""
    x, y, hidden = net_data(n_layers=4, seed=8)
    tracker = YesTracker(x.float(), y, max_anchors=None)
    b = tracker.bounds([h.float() for h in hidden])
    walk = tracker._walk
    assert walk is not None and walk.device == torch.device("cpu")
    assert walk.targets.dtype == torch.float64 and walk.targets.device == walk.device
    assert walk.x_basis.rows.dtype == torch.float64
    assert all(t.dtype == torch.float64 for t in (b._data[0], b._data[1], *b._data[2]))
    from_numpy = yes_bounds(x.numpy(), y.numpy(), [h.numpy() for h in hidden])
    assert from_numpy._data[0].device == torch.device("cpu")
    for sub, value in from_numpy.losses.items():
        assert b.losses[sub] == pytest.approx(value, rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_walk_on_cuda_matches_the_cpu():
    """Hidden outputs on CUDA: the walk runs there and matches pinv and the CPU walk."""
    x, y, hidden = rank_deficient_data()
    cuda = torch.device("cuda")
    b = yes_bounds(x.to(cuda), y.to(cuda), [h.to(cuda) for h in hidden])
    assert b._data[0].device.type == "cuda" and b._data[2][0].device.type == "cuda"
    assert_parity(b, x, y, hidden)
    cpu = yes_bounds(x, y, hidden)
    for sub, value in cpu.losses.items():
        assert b.losses[sub] == pytest.approx(value, rel=1e-9, abs=1e-14)
    tracker = YesTracker(x, y)  # data on the CPU, hidden outputs on CUDA: the walk goes there
    tb = tracker.bounds([h.to(cuda) for h in hidden])
    assert tracker._walk is not None and tracker._walk.device.type == "cuda"
    assert tb.yes == pytest.approx(cpu.yes, rel=1e-9)
    net = b.reference_mlp()
    with torch.no_grad():
        pred = net(x.to(cuda).T)
    assert rel(float(((pred - y.to(cuda).T) ** 2).sum(1).mean()), b.yes[-1]) < RTOL


def test_sharing_does_less_work_than_per_subset():
    x, y, hidden = net_data(n_layers=6, seed=0)
    b = yes_bounds(x, y, hidden)
    n_layers = 6
    assert b.stats["factorizations"] < (n_layers - 1) * 2 ** (n_layers - 1)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda x, y, h: (x[:, :-1], y, h), "samples"),
        (lambda x, y, h: (x, y, [h[0][:-1], *h[1:]]), "width .* m=8"),
        (lambda x, y, h: (x, y, [h[0].T, *h[1:]]), "h.T"),
        (lambda x, y, h: (x, y, [h[0][:, :-1], *h[1:]]), "expected"),
        (lambda x, y, h: (x, y, []), "empty"),
        (lambda x, y, h: (x, y, h[0]), "list"),
        (lambda x, y, h: (x[0], y, h), "2-D"),
        (lambda x, y, h: (x, y, [np.array([["a"]]), *h[1:]]), "numeric"),
    ],
)
def test_bad_input_raises_value_error(mutate, match):
    x, y, hidden = net_data()
    with pytest.raises(ValueError, match=match) as info:
        yes_bounds(*mutate(x, y, hidden))
    assert isinstance(info.value, LayerpeelError)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["X", "Y", "hidden"])
def test_nan_and_inf_are_rejected(bad, where):
    x, y, hidden = net_data()
    x, y, hidden = x.clone(), y.clone(), [h.clone() for h in hidden]
    {"X": x, "Y": y, "hidden": hidden[1]}[where][0, 3] = bad
    with pytest.raises(YesInputError, match="NaN or Inf"):
        yes_bounds(x, y, hidden)


def test_tracker_bad_input():
    x, y, hidden = net_data()
    with pytest.raises(YesInputError):
        YesTracker(x, y, max_anchors=-1)
    tracker = YesTracker(x, y)
    tracker.check(hidden, 1.0)
    with pytest.raises(YesInputError, match="hidden outputs"):
        tracker.check(hidden[:-1], 1.0)
    with pytest.raises(YesInputError, match="train_loss"):
        tracker.check(hidden, float("nan"))


def test_no_warning_with_enough_samples():
    x, y, hidden = net_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yes_bounds(x, y, hidden)
