"""The Hugging Face and Lightning callbacks, with real trainers and tiny random models on CPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from layerpeel.data.monitoring import monitoring_set
from layerpeel.errors import ConfigError, DataError
from layerpeel.monitor import MonitorConfig, every, read_events
from layerpeel.peel.analysis import PeelConfig

transformers = pytest.importorskip("transformers")
FAST = MonitorConfig(
    preset="economy",
    warmup=2,
    max_overhead=None,
    peel=PeelConfig(n_boot=50, etas=(0.0, 0.1), search_sequences=4),
)
VOCAB = 48


def mset(length: int = 9, vocab: int = VOCAB):
    g = torch.Generator().manual_seed(3)
    return monitoring_set(torch.randint(0, vocab, (6, length), generator=g))


def gpt2():
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.1
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg)


def llama():
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)


class Tokens(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(7)
        self.ids = torch.randint(0, VOCAB, (32, 12), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def hf_train(model, out: Path, callbacks: list) -> None:
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=8,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Tokens(), callbacks=callbacks
    )
    trainer.train()


@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
def test_hf_trainer_callback_monitors_without_changing_the_run(tmp_path: Path, build):
    from layerpeel.integrations.hf import LayerpeelCallback

    plain = build()
    hf_train(plain, tmp_path / "plain", [])
    watched = build()
    callback = LayerpeelCallback(mset(), tmp_path / "run", FAST, every(3), model=watched)
    hf_train(watched, tmp_path / "watched", [callback])
    events = read_events(tmp_path / "run" / "monitor.jsonl")
    analyses = [e for e in events if e["event"] == "analysis"]
    assert [e["step"] for e in analyses] == [3, 6]
    assert [e["unit"] for e in analyses] == ["sweep", "p1"]
    assert {r["block"] for r in analyses[0]["report"]["layers"]} == {0, 1}
    assert analyses[1]["train_loss"] is not None  # the loss logged at step 2 or 4
    assert callback.monitor is not None and callback.monitor.failures == 0
    for (name, a), (_, b) in zip(plain.named_parameters(), watched.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_hf_callback_changes_nothing_but_control(tmp_path: Path):
    from transformers import TrainerControl, TrainerState

    from layerpeel.integrations.hf import LayerpeelCallback

    model = gpt2()
    callback = LayerpeelCallback(mset(), tmp_path, dataclasses.replace(FAST, warmup=0), every(1))
    state = TrainerState()
    state.global_step = 1
    control = TrainerControl()
    before = dataclasses.asdict(control)
    assert callback.on_train_begin(None, state, control, model=model) is control
    assert callback.on_step_end(None, state, control, model=model) is control
    assert dataclasses.asdict(control) == before
    assert callback.monitor is not None and callback.monitor.analyses == 1


def test_hf_bad_input_fails_before_training(tmp_path: Path):
    from layerpeel.integrations.hf import LayerpeelCallback

    with pytest.raises(DataError, match="vocabulary"):
        LayerpeelCallback(mset(vocab=VOCAB + 10), tmp_path, model=gpt2())
    with pytest.raises(DataError, match="context"):
        LayerpeelCallback(mset(length=20), tmp_path, model=llama())
    bert = transformers.BertForMaskedLM(
        transformers.BertConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
        )
    )
    with pytest.raises(ConfigError, match="unsupported model class BertForMaskedLM"):
        LayerpeelCallback(mset(), tmp_path, model=bert)


# -- Lightning --------------------------------------------------------------------------------


def lightning_module():
    pl = pytest.importorskip("lightning.pytorch")

    from layerpeel.models import GPT, GPTConfig

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = GPT(
                GPTConfig(vocab_size=VOCAB, n_layer=2, n_head=2, d_model=16, block_size=16)
            )

        def training_step(self, batch, batch_idx):
            x = batch[0]
            return self.net.loss(x[:, :-1], x[:, 1:])

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

        def train_dataloader(self):
            g = torch.Generator().manual_seed(7)
            data = torch.utils.data.TensorDataset(torch.randint(0, VOCAB, (64, 13), generator=g))
            return torch.utils.data.DataLoader(data, batch_size=4)

    return pl, Module()


def pl_trainer(pl, root: Path, steps: int, callbacks: list):
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        callbacks=callbacks,
    )


def test_lightning_callback_resumes_with_its_history(tmp_path: Path):
    from layerpeel.integrations.lightning import LayerpeelCallback

    pl, module = lightning_module()
    first = LayerpeelCallback(mset(), tmp_path / "run", FAST, every(2))
    trainer = pl_trainer(pl, tmp_path, 6, [first])
    trainer.fit(module)
    ckpt = tmp_path / "at6.ckpt"
    trainer.save_checkpoint(ckpt)
    assert first.monitor is not None and first.monitor.analyses == 3  # steps 2, 4, 6
    assert first.monitor.analysis.next_unit().blocks == (0,)

    # a step past the checkpoint was logged by a run that then died: resuming drops it
    pl2, module2 = lightning_module()
    ghost = LayerpeelCallback(mset(), tmp_path / "run", FAST, every(2))
    ghost.setup(None, module2, "fit")
    assert ghost.monitor is not None
    for step in (7, 8):
        ghost.monitor.step(step)
    assert [e["step"] for e in read_events(tmp_path / "run" / "monitor.jsonl")][-1] == 8

    second = LayerpeelCallback(mset(), tmp_path / "run", FAST, every(2))
    trainer2 = pl_trainer(pl2, tmp_path, 10, [second])
    trainer2.fit(module2, ckpt_path=str(ckpt))
    events = [
        e for e in read_events(tmp_path / "run" / "monitor.jsonl") if e["event"] == "analysis"
    ]
    assert [e["step"] for e in events] == [2, 4, 6, 8, 10]
    # the rotation went on from the checkpoint: sweep, block 0, block 1, then block 0, block 1
    assert [e["unit"] for e in events] == ["sweep", "p1", "p1", "p1", "p1"]
    assert [e["report"]["layers"][0]["block"] for e in events[1:]] == [0, 1, 0, 1]
    assert second.monitor is not None and second.monitor.analyses == 5


def test_lightning_unsupported_module_is_a_clear_error(tmp_path: Path):
    from layerpeel.integrations.lightning import find_model

    pl = pytest.importorskip("lightning.pytorch")
    with pytest.raises(ConfigError, match="no module of Linear is a supported model"):
        find_model(torch.nn.Linear(2, 2))
    _, module = lightning_module()
    assert type(find_model(module)).__name__ == "GPT"
    del pl
