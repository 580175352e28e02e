import json
import math
import subprocess
import sys

import pytest
import torch

from layerpeel.cli import main
from layerpeel.errors import CheckpointError
from layerpeel.models import GPTConfig
from layerpeel.quant import QuantConfig
from layerpeel.training.checkpoint import list_checkpoints, load_checkpoint
from layerpeel.training.run_folder import load_model, open_run
from layerpeel.training.trainer import TrainConfig, Trainer, lr_at

TINY = GPTConfig(vocab_size=256, n_layer=2, n_head=2, d_model=32, block_size=16)


def tiny_train(corpus, steps=12, **kw):
    return TrainConfig(
        data=str(corpus),
        max_steps=steps,
        batch_size=4,
        lr=1e-2,
        warmup_steps=2,
        eval_every=4,
        eval_sequences=8,
        log_every=2,
        checkpoint_every=4,
        **kw,
    )


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_loss_falls_on_a_tiny_corpus(tmp_path, tiny_corpus):
    trainer = Trainer.create(tmp_path / "run", TINY, QuantConfig(), tiny_train(tiny_corpus, 40))
    summary = trainer.fit()
    rows = trainer.run.metrics()
    train_losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert train_losses[-1] < train_losses[0] - 1.0
    assert summary["final_val_loss"] < math.log(256) - 1.0


def test_run_folder_layout(tmp_path, tiny_corpus):
    trainer = Trainer.create(tmp_path / "run", TINY, QuantConfig(), tiny_train(tiny_corpus, 8))
    trainer.fit()
    run = open_run(tmp_path / "run")
    cfg = run.read_config()
    assert cfg["model"]["d_model"] == 32 and cfg["train"]["max_steps"] == 8
    assert run.tokenizer_path.exists()
    assert [load_checkpoint(p).step for p in run.checkpoints()] == [4, 8]
    assert any("val_loss" in r for r in run.metrics())
    assert not list(run.path.rglob("*.tmp"))


@pytest.mark.parametrize("scheme", ["none", "binary-global"])
def test_checkpoint_round_trips_bit_for_bit(tmp_path, tiny_corpus, scheme):
    trainer = Trainer.create(
        tmp_path / "run", TINY, QuantConfig(scheme=scheme), tiny_train(tiny_corpus, 4)
    )
    trainer.fit()
    model, ckpt = load_model(tmp_path / "run")
    assert ckpt.step == 4
    saved, loaded = trainer.model.state_dict(), model.state_dict()
    assert saved.keys() == loaded.keys()
    for key in saved:
        assert torch.equal(saved[key], loaded[key]), key
    idx = torch.randint(0, 256, (2, 16))
    trainer.model.eval()
    assert torch.equal(trainer.model(idx), model(idx))


@pytest.mark.parametrize("scheme", ["none", "int4"])
def test_resume_equals_an_uninterrupted_run(tmp_path, tiny_corpus, scheme):
    q = QuantConfig(scheme=scheme)
    full = Trainer.create(tmp_path / "full", TINY, q, tiny_train(tiny_corpus, 12))
    full.fit()
    part = Trainer.create(tmp_path / "part", TINY, q, tiny_train(tiny_corpus, 12))
    part.fit(until=4)  # stop early, as a crash after the step-4 checkpoint would
    resumed = Trainer.resume(tmp_path / "part")
    assert resumed.step == 4
    resumed.fit()
    a, b = weights(full.model), weights(resumed.model)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows_full = [r for r in full.run.metrics() if "train_loss" in r]
    rows_res = [r for r in resumed.run.metrics() if "train_loss" in r]
    assert [r["train_loss"] for r in rows_full] == [r["train_loss"] for r in rows_res]


def test_a_finished_run_reopened_reuses_its_final_evaluation(tmp_path, tiny_corpus, monkeypatch):
    first = Trainer.create(tmp_path / "run", TINY, QuantConfig(), tiny_train(tiny_corpus, 4))
    loss = first.fit()["final_val_loss"]
    rows = first.run.metrics_path.read_text()
    again = Trainer.resume(tmp_path / "run")

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the held-out set was evaluated again")

    monkeypatch.setattr("layerpeel.training.trainer.evaluate", no_evaluation)
    assert again.fit()["final_val_loss"] == loss
    assert again.run.metrics_path.read_text() == rows  # no second final row


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(max_steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lr_at(100, cfg) == pytest.approx(0.1)


def test_truncated_checkpoint_is_a_clear_error(tmp_path, tiny_corpus):
    trainer = Trainer.create(tmp_path / "run", TINY, QuantConfig(), tiny_train(tiny_corpus, 4))
    trainer.fit()
    path = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    weights_file = path.with_suffix(".safetensors")
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(tmp_path / "run")


def test_checkpoint_that_does_not_match_its_config(tmp_path, tiny_corpus):
    trainer = Trainer.create(tmp_path / "run", TINY, QuantConfig(), tiny_train(tiny_corpus, 4))
    trainer.fit()
    path = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    meta = json.loads(path.read_text())
    meta["model"]["d_model"] = 64
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(path)


def run_cli(*args):
    return main([str(a) for a in args])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--d-model", "30", "--n-head", "4"], "divisible"),
        (["--n-layer", "0"], "n_layer"),
        (["--quant", "int5"], "scheme"),
    ],
)
def test_cli_rejects_impossible_configs(tmp_path, tiny_corpus, capsys, args, message):
    code = run_cli("train", "--out", tmp_path / "run", "--data", tiny_corpus, *args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    (tmp_path / "notarun").mkdir()
    cases = [
        ["train", "--out", tmp_path / "a", "--data", tmp_path / "missing.txt"],
        ["train", "--out", tmp_path / "b", "--data", empty],
        ["train", "--resume", tmp_path / "notarun"],
        ["sample", tmp_path / "notarun"],
    ]
    for args in cases:
        assert run_cli(*args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("layerpeel: error:") and err.count("\n") == 1, err


def test_existing_run_is_never_overwritten(tmp_path, tiny_corpus, capsys):
    assert (
        run_cli(
            "train",
            "--out",
            tmp_path / "run",
            "--data",
            tiny_corpus,
            "--n-layer",
            "1",
            "--d-model",
            "16",
            "--n-head",
            "2",
            "--block-size",
            "16",
            "--max-steps",
            "2",
            "--no-progress",
        )
        == 0
    )
    before = (tmp_path / "run" / "config.json").read_text()
    code = run_cli("train", "--out", tmp_path / "run", "--data", tiny_corpus, "--no-progress")
    assert code == 2 and "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.json").read_text() == before


def test_sample_prints_text(tmp_path, tiny_corpus, capsys):
    Trainer.create(tmp_path / "run", TINY, QuantConfig(), tiny_train(tiny_corpus, 4)).fit()
    capsys.readouterr()
    assert run_cli("sample", tmp_path / "run", "--prompt", "It is", "--tokens", "20") == 0
    assert capsys.readouterr().out.startswith("It is")


def test_ctrl_c_leaves_a_resumable_checkpoint(tmp_path, tiny_corpus):
    script = f"""
import os, signal
from layerpeel.models import GPTConfig
from layerpeel.quant import QuantConfig
from layerpeel.training.trainer import TrainConfig, Trainer
cfg = TrainConfig(data={str(tiny_corpus)!r}, max_steps=50, batch_size=4, eval_every=100,
                  checkpoint_every=100, log_every=1)
def hook(step, loss, model):
    if step == 5:
        os.kill(os.getpid(), signal.SIGINT)
t = Trainer.create({str(tmp_path / "run")!r},
                   GPTConfig(n_layer=1, d_model=16, n_head=2, block_size=16), QuantConfig(), cfg,
                   on_step=hook)
print(t.fit())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "'interrupted': True" in out.stdout
    resumed = Trainer.resume(tmp_path / "run")
    assert resumed.step == 5
