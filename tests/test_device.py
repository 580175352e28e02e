"""The analysis makes every tensor on the model's device, and `analyze --device` moves the model.

No accelerator is needed: with torch's default device set to "meta", any tensor the analysis
creates without naming a device lands on "meta", and mixing it with the CPU model's tensors
raises (or cannot be read back). A CPU model's analysis must then run and equal a plain run.
"""

import pytest
import torch

from hf_models import tiny_model
from layerpeel import GPT, GPTConfig
from layerpeel.commands.analyze import to_device
from layerpeel.data.monitoring import monitoring_set
from layerpeel.errors import ConfigError
from layerpeel.peel.analysis import PeelConfig, peel
from layerpeel.quant import QuantConfig, quantize_

TINY = GPTConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, block_size=16)


def _gpt(scheme: str = "none") -> torch.nn.Module:
    torch.manual_seed(0)
    model = GPT(TINY)
    if scheme != "none":
        quantize_(model, QuantConfig(scheme=scheme))
    return model.eval()


def _gaps(model: torch.nn.Module, cfg: PeelConfig, default_device: str | None) -> list[float]:
    windows = torch.randint(0, 64, (12, 17), generator=torch.Generator().manual_seed(1))
    mset = monitoring_set(windows)
    previous = torch.get_default_device()
    try:
        if default_device is not None:
            torch.set_default_device(default_device)
        report = peel(model, mset, cfg)
    finally:
        torch.set_default_device(previous)
    cells = [r.gap for r in report.layers] + [r.ci_low for r in report.layers]
    if report.cascade is not None:
        cells += [report.cascade.yes0, *report.cascade.yes]
    return cells


@pytest.mark.parametrize(
    ("make", "cfg"),
    [
        (_gpt, PeelConfig(n_boot=50, attribute=True, red=-1.0)),
        (lambda: _gpt("ternary"), PeelConfig(n_boot=50, ladder=False)),
        (_gpt, PeelConfig(n_boot=50, solver="adam", adam_steps=4, ladder=False, cascade=False)),
        (_gpt, PeelConfig(n_boot=50, score_dtype="bfloat16", cascade=False)),
        (lambda: tiny_model("LlamaForCausalLM").eval(), PeelConfig(n_boot=50)),
    ],
    ids=["gpt-attribute", "ternary", "adam", "bfloat16", "llama"],
)
def test_no_tensor_of_the_analysis_is_made_off_the_models_device(make, cfg):
    assert _gaps(make(), cfg, "meta") == _gaps(make(), cfg, None)


def test_device_flag_moves_the_model_or_says_in_one_line_why_not():
    model = torch.nn.Linear(2, 2)
    assert to_device(model, None) is model
    assert to_device(model, "cpu").weight.device.type == "cpu"
    with pytest.raises(ConfigError, match="--device nowhere"):
        to_device(model, "nowhere")
