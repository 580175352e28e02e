"""Scoring and solving shortcuts of the P1 engine against plain, independent computations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_models import VOCAB, tiny_model
from layerpeel.arch.capture import residual_stream
from layerpeel.arch.table import model_view
from layerpeel.data.monitoring import monitoring_set
from layerpeel.peel.config import PeelConfig
from layerpeel.peel.context import build_context
from layerpeel.peel.gap import block_gaps
from layerpeel.peel.scoring import Thresholds, same_block, sequence_ce, token_ce
from layerpeel.solvers.closed import factor_value_maps


def llama():
    torch.manual_seed(0)
    return tiny_model("LlamaForCausalLM", attn="sdpa").eval()


def test_chunked_ce_matches_the_models_own_logits():
    model = llama()
    view = model_view(model)
    idx = torch.randint(0, VOCAB, (3, 17))
    x, targets = idx[:, :-1], idx[:, 1:]
    with torch.no_grad():
        logits = model(x).logits  # (B,T,V), the model's own forward
        want = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        )
        stream = residual_stream(view, x)
        got = token_ce(view.head, stream[-1], targets, rows=5)  # chunks that split sequences
        torch.testing.assert_close(got, want.view(targets.shape), rtol=0, atol=1e-5)
        per_seq = sequence_ce(view, 1, stream[1], targets, None, batch=2)
        torch.testing.assert_close(
            per_seq, want.view(targets.shape).mean(1).double(), atol=1e-5, rtol=0
        )
        # every 3rd position: the mean of the model's own CE at positions 0, 3, ..., 15
        strided = sequence_ce(view, 1, stream[1], targets, None, batch=2, stride=3)
        torch.testing.assert_close(
            strided, want.view(targets.shape)[:, ::3].mean(1).double(), atol=1e-5, rtol=0
        )


def test_bfloat16_scoring_is_close_to_float32_and_paired_with_its_own_baseline():
    model = llama()
    view = model_view(model)
    idx = torch.randint(0, VOCAB, (4, 33))
    with torch.no_grad():
        stream = residual_stream(view, idx[:, :-1])
        fp = sequence_ce(view, 0, stream[0], idx[:, 1:])
        bf = sequence_ce(view, 0, stream[0], idx[:, 1:], dtype="bfloat16")
    assert not torch.equal(fp, bf)  # the products really ran in bfloat16
    torch.testing.assert_close(bf, fp, atol=2e-2, rtol=0)


def test_a_reference_equal_to_the_block_scores_exactly_as_the_trained_model():
    model = llama()
    view = model_view(model)
    mset = monitoring_set(torch.randint(0, VOCAB, (8, 17)))
    for dtype in ("float32", "bfloat16"):
        ctx = build_context(view, mset, batch=4, score_dtype=dtype)
        base = ctx.trained_held_ce(1)
        rerun = ctx.held_ce(1, ctx.held[1], {1: view.reference_copy(1)})
        assert torch.equal(base, rerun) if dtype == "bfloat16" else torch.allclose(base, rerun)
        assert same_block(view.reference_copy(1), view.blocks[1])
        rows = block_gaps(ctx, 1, ("attn",), None, PeelConfig(etas=(0.0,)), Thresholds())
        assert rows[0].ce_trained == float(base.mean())
    changed = view.reference_copy(1)
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    assert not same_block(changed, view.blocks[1])


def test_value_factor_is_the_best_rank_hd_factor_of_each_group():
    """W_v^g W_v^g^T equals U_k S_k U_k^T of the SVD of the group's stacked maps."""
    model = llama()
    bv = model_view(model).block_view(model_view(model).blocks[0])
    h, hd, h_kv = bv.n_head, bv.head_dim, bv.kv_heads
    c = bv.value.in_features
    torch.manual_seed(1)
    m = torch.randn(h * c, c, dtype=torch.float64)
    wv = factor_value_maps(m, bv)
    rep = h // h_kv
    for g in range(h_kv):
        group = torch.cat([m[(g * rep + j) * c : (g * rep + j + 1) * c] for j in range(rep)], 1)
        u, s, _ = torch.linalg.svd(group, full_matrices=False)
        k = min(hd, s.numel())
        want = (u[:, :k] * s[:k]) @ u[:, :k].T
        w = wv[:, g * hd : g * hd + k]
        torch.testing.assert_close(w @ w.T, want, atol=1e-8, rtol=1e-8)


def test_the_line_search_scores_the_trained_block_once(monkeypatch):
    """Candidates equal to the trained block share one tail run; the others each get their own."""
    import layerpeel.peel.gap as peel_mod

    model = llama()
    view = model_view(model)
    ctx = build_context(view, monitoring_set(torch.randint(0, VOCAB, (8, 17))), batch=4)
    calls = []
    real = peel_mod.sequence_ce
    monkeypatch.setattr(peel_mod, "sequence_ce", lambda *a, **k: calls.append(1) or real(*a, **k))
    tp = peel_mod._TargetPropagation(ctx, 0, PeelConfig(etas=(0.0, 0.0, 0.0), search_sequences=4))
    ref, eta, moved = tp.reference("attn", None)
    assert eta == 0.0 and moved == "attn" and same_block(ref, view.blocks[0])  # eta 0: own output
    assert len(calls) == 1
    calls.clear()
    tp = peel_mod._TargetPropagation(ctx, 0, PeelConfig(etas=(0.0, 5.0), search_sequences=4))
    tp.reference("block", None)
    # a whole block tries three moves (block, attn, mlp) at each eta: at eta 0 all three equal
    # the trained block and share one run; at eta 5 each is a different block with its own run
    assert len(calls) == 1 + 3
