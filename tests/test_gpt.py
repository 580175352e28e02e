import dataclasses

import pytest
import torch

from layerpeel import GPT, GPTConfig
from layerpeel.errors import ConfigError

TINY = GPTConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, block_size=16)


def test_causal_masking_future_tokens_never_change_earlier_outputs():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    idx = torch.randint(0, 64, (3, 16))
    base = model(idx)
    for t in range(15):
        changed = idx.clone()
        changed[:, t + 1 :] = torch.randint(0, 64, changed[:, t + 1 :].shape)
        out = model(changed)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])


def test_attention_matches_explicit_softmax_attention():
    torch.manual_seed(1)
    model = GPT(TINY).eval()
    attn = model.blocks[0].attn
    x = torch.randn(2, 10, 32)
    weights = attn.attention_weights(x)  # (B, H, T, T)
    v = attn.split_heads(attn.v(x))
    y = (weights @ v).transpose(1, 2).reshape(2, 10, 32)
    torch.testing.assert_close(attn(x), attn.out(y), rtol=1e-5, atol=1e-6)
    assert torch.all(weights.triu(1) == 0)


def test_blocks_and_subblocks_are_named_and_swappable():
    model = GPT(TINY).eval()
    names = dict(model.named_modules())
    for i in range(TINY.n_layer):
        assert f"blocks.{i}.attn" in names and f"blocks.{i}.mlp" in names
    idx = torch.randint(0, 64, (1, 8))
    before = model(idx)
    model.blocks[1].mlp = torch.nn.Identity()
    assert not torch.allclose(model(idx), before)


def test_weight_tying_is_optional():
    tied = GPT(TINY)
    untied = GPT(dataclasses.replace(TINY, tie_weights=False))
    assert tied.head.weight is tied.wte.weight
    assert untied.head.weight is not untied.wte.weight
    assert untied.num_params() == tied.num_params() + 64 * 32


def test_config_round_trips_through_json(tmp_path):
    path = tmp_path / "cfg.json"
    TINY.to_json(path)
    assert GPTConfig.from_json(path) == TINY


@pytest.mark.parametrize(
    "bad",
    [
        dict(d_model=30, n_head=4),
        dict(n_layer=0),
        dict(vocab_size=-1),
        dict(dropout=1.5),
    ],
)
def test_impossible_configs_are_rejected(bad):
    with pytest.raises(ConfigError):
        GPT(dataclasses.replace(TINY, **bad))


def test_unknown_config_field_is_rejected():
    with pytest.raises(ConfigError, match="unknown field"):
        GPTConfig.from_dict({"n_layers": 3})


def test_longer_context_than_block_size_is_an_error():
    model = GPT(TINY)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))
