"""Hugging Face architectures: exact substitution, faithful block views, closed-form parity."""

from __future__ import annotations

import pytest
import torch

from hf_models import ARCHS, VOCAB, tiny_model
from layerpeel.arch.capture import hooks, residual_stream
from layerpeel.arch.table import ARCHITECTURES, model_view
from layerpeel.errors import ConfigError
from layerpeel.solvers.closed import BlockProblem, ClosedFormOptions, peel_block

# module names the tests read directly (independent of layerpeel.arch.hf_views's table)
ATTN = {
    "GPT2LMHeadModel": ("attn", "attn.c_proj"),
    "GPTNeoXForCausalLM": ("attention", "attention.dense"),
    "OPTForCausalLM": ("self_attn", "self_attn.out_proj"),
    "PhiForCausalLM": ("self_attn", "self_attn.dense"),
}
PROJ = {
    "GPT2LMHeadModel": "mlp.c_proj",
    "GPTNeoXForCausalLM": "mlp.dense_4h_to_h",
    "OPTForCausalLM": "fc2",
    "PhiForCausalLM": "mlp.fc2",
}


def stream64(view, idx):
    """G_0..G_L in float64 (capture stores float32); inputs for float64 models."""
    return [g.double() for g in residual_stream(view, idx)]


def attn_names(arch: str) -> tuple[str, str]:
    return ATTN.get(arch, ("self_attn", "self_attn.o_proj"))


def proj_weight(block: torch.nn.Module, arch: str) -> torch.Tensor:
    """The MLP output map of a block as (in, out), read from the module itself."""
    module = block.get_submodule(PROJ.get(arch, "mlp.down_proj"))
    w = module.weight.detach()
    return w if arch == "GPT2LMHeadModel" else w.T


def test_every_architecture_of_the_issue_is_in_the_table():
    assert set(ARCHS) <= set(ARCHITECTURES)


def test_a_model_outside_the_table_is_a_clear_error():
    with pytest.raises(ConfigError, match="supported: .*LlamaForCausalLM"):
        model_view(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
def test_substituting_each_blocks_own_weights_reproduces_the_logits_exactly(arch, attn):
    model = tiny_model(arch, attn=attn)
    view = model_view(model)
    idx = torch.randint(0, VOCAB, (3, 16))
    with torch.no_grad():
        logits = model(idx).logits
        stream = residual_stream(view, idx)
        assert torch.equal(view.embed(idx), stream[0])
        assert torch.equal(view.head(stream[-1]), logits)
        for i in range(view.n_blocks):
            assert torch.equal(view.run_from(i, stream[i], {i: view.reference_copy(i)}), logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_block_view_reproduces_the_models_own_attention_and_block(arch):
    """Patterns, attention output and block output against the eager modules' own tensors."""
    model = tiny_model(arch, attn="eager", dtype=torch.float64)
    view = model_view(model)
    idx = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        stream = stream64(view, idx)
        block = view.blocks[0]
        attn_mod = block.get_submodule(attn_names(arch)[0])
        seen = {}
        with hooks(post={attn_mod: lambda m, a, out: seen.update(out=out[0], weights=out[1])}):
            out = view.run_block(block, stream[0])
        bv = view.block_view(block)
        torch.testing.assert_close(bv.patterns(bv.attn_norm(stream[0])), seen["weights"])
        torch.testing.assert_close(bv.attn(stream[0]), seen["out"])
        torch.testing.assert_close(bv.forward(stream[0]), out)


def materialise(arch, model, x, target):
    """The attention and MLP problems of block 0, built from the eager modules' own tensors.

    Returns features and targets of: the joint value-output problem (A_h xn per head), the
    output-map problem (the output projection's input), and the MLP output-map problem.
    """
    view = model_view(model)
    block = view.blocks[0]
    attn_name, out_name = attn_names(arch)
    seen = {}
    mods = {
        "attn": block.get_submodule(attn_name),
        "out": block.get_submodule(out_name),
        "proj": block.get_submodule(PROJ.get(arch, "mlp.down_proj")),
    }
    pre = {
        mods["attn"]: lambda m, a: seen.update(xn=a[0] if a else None),
        mods["out"]: lambda m, a: seen.update(mixed=a[0]),
        mods["proj"]: lambda m, a: seen.update(hidden=a[0]),
    }
    post = {mods["attn"]: lambda m, a, out: seen.update(attn=out[0], weights=out[1])}

    def capture_xn(module, args, kwargs):
        seen["xn"] = args[0] if args else kwargs["hidden_states"]

    handle = mods["attn"].register_forward_pre_hook(capture_xn, with_kwargs=True)
    try:
        with (
            torch.no_grad(),
            hooks(pre={k: v for k, v in pre.items() if k is not mods["attn"]}, post=post),
        ):
            out = view.run_block(block, x)
    finally:
        handle.remove()
    a, xn = seen["weights"], seen["xn"]  # (B,H,T,T), (B,T,C)
    b, h, t, _ = a.shape
    joint = (a @ xn[:, None].expand(b, h, t, xn.shape[-1])).transpose(1, 2).reshape(b * t, -1)
    mlp_term = out - x - seen["attn"]
    r = (target - x - mlp_term).reshape(b * t, -1)
    mixed = seen["mixed"].reshape(b * t, -1)
    hidden = seen["hidden"].reshape(b * t, -1)
    r_mlp = (target - x - seen["attn"]).reshape(b * t, -1)
    return joint, mixed, r, hidden, r_mlp


def lstsq_predictions(features, target, bias):
    a = (
        torch.cat([features, torch.ones(features.shape[0], 1, dtype=features.dtype)], 1)
        if bias
        else features
    )
    sol = torch.linalg.lstsq(a, target, driver="gelsd").solution
    return a @ sol, sol


def sharpened(arch):
    """A float64 eager model whose query/key maps are scaled up so heads attend differently."""
    model = tiny_model(arch, attn="eager", dtype=torch.float64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("q_proj", "k_proj", "c_attn", "query_key_value")):
                p.mul_(4.0)
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_closed_form_solves_match_lstsq_on_the_materialised_problem(arch):
    torch.manual_seed(5)
    model = sharpened(arch)
    view = model_view(model)
    idx = torch.randint(0, VOCAB, (24, 16))  # 384 tokens: more than the 4*32+1 joint features
    with torch.no_grad():
        stream = stream64(view, idx)
    x = stream[0]
    target = stream[1] + 0.05 * torch.randn_like(stream[1])
    joint, mixed, r, hidden, r_mlp = materialise(arch, model, x, target)
    bv = view.block_view(view.reference_copy(0))
    bias_attn = bv.out.has_bias
    # attention: both Grams against lstsq on the features the model itself computed
    problem = BlockProblem(view, 0, x, [target], ClosedFormOptions(ridge=0.0))
    g_joint, g_out = problem.attention_grams((1.0,))
    for g, feats, bias in ((g_joint, joint, True), (g_out, mixed, bias_attn)):
        w, b = g.solve(0.0)
        expected, _ = lstsq_predictions(feats, r, bias)
        # normal equations square the condition number: agree to 1e-6 of the target's scale
        torch.testing.assert_close(
            feats @ w + b, expected, rtol=0, atol=1e-6 * float(r.abs().max())
        )
    # MLP: the reference's output map is the lstsq solution
    ref = peel_block(view, 0, x, target, "mlp", ClosedFormOptions(ridge=0.0))
    bias_mlp = bv.proj.has_bias
    expected, sol = lstsq_predictions(hidden, r_mlp, bias_mlp)
    w_ref = proj_weight(ref, arch)
    pred = hidden @ w_ref
    if bias_mlp:
        pred = pred + ref.get_submodule(PROJ.get(arch, "mlp.down_proj")).bias
    torch.testing.assert_close(pred, expected, rtol=0, atol=1e-6 * float(r_mlp.abs().max()))
    torch.testing.assert_close(w_ref, sol[: hidden.shape[1]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel"])
def test_a_realisable_attention_target_is_reached(arch):
    """Target = the block with other value/output maps: the peel must find maps that reach it.

    Covers grouped-query attention (Llama: 2 heads per key-value group, Qwen2: 4) and GPT-2's
    fused Conv1D, where the value map is a slice of c_attn.
    """
    torch.manual_seed(6)
    model = sharpened(arch)
    view = model_view(model)
    idx = torch.randint(0, VOCAB, (24, 16))
    with torch.no_grad():
        # no MLP output, so the block output is x + attention alone and the target is reachable
        model_proj = view.block_view(view.blocks[0]).proj
        model_proj.set(torch.zeros_like(model_proj.get()[0]), torch.zeros(model_proj.out_features))
        stream = stream64(view, idx)
        other = view.reference_copy(0)
        obv = view.block_view(other)
        for slot in (obv.value, obv.out):
            w, b = slot.get()
            slot.set(torch.randn_like(w) * w.std(), b)
        target = view.run_block(other, stream[0])
        ref = peel_block(view, 0, stream[0], target, "attn", ClosedFormOptions(ridge=0.0))
        before = (stream[1] - target).pow(2).sum()
        after = (view.run_block(ref, stream[0]) - target).pow(2).sum()
    assert after < 1e-8 * before


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("part", ["block", "attn", "mlp"])
def test_peeling_onto_the_blocks_own_output_keeps_it(arch, part):
    model = tiny_model(arch, dtype=torch.float64)
    view = model_view(model)
    idx = torch.randint(0, VOCAB, (24, 16))
    with torch.no_grad():
        stream = stream64(view, idx)
        ref = peel_block(view, 0, stream[0], stream[1], part)
        torch.testing.assert_close(view.run_block(ref, stream[0]), stream[1], rtol=1e-6, atol=1e-7)
