"""Training a GPT (any size, any quantizer) into a run folder, resumable bit for bit."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from layerpeel.config import ConfigBase
from layerpeel.data import (
    SequenceDataset,
    get_tokenizer,
    load_tokenizer,
    prepare_tokens,
    save_tokenizer,
    split_sequences,
)
from layerpeel.errors import CheckpointError, ConfigError
from layerpeel.io import append_jsonl, atomic_write_text, check_output_dir
from layerpeel.models import GPT, GPTConfig
from layerpeel.quant import QuantConfig
from layerpeel.training.checkpoint import load_checkpoint, load_model_state, optimizer_from_tensors
from layerpeel.training.checkpoint import save_checkpoint as _save_checkpoint
from layerpeel.training.run_folder import RunFolder, build_gpt, open_run

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainConfig(ConfigBase):
    """How to train: data, optimizer, schedule, evaluation and checkpoints."""

    data: str | None = None  # corpus file or folder; None = the built-in Shakespeare corpus
    tokenizer: str = "bytes"  # "bytes" or "gpt2"
    val_fraction: float = 0.1  # fraction of sequences held out for validation
    batch_size: int = 32  # sequences per step
    max_steps: int = 1000  # optimizer steps in total
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50  # linear warm-up steps
    weight_decay: float = 0.1  # AdamW decay on matrices (not on biases, norms or scales)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # clip the global gradient norm (0 = off)
    eval_every: int = 100  # evaluate on validation every N steps
    eval_sequences: int = 256  # validation sequences used by periodic evaluations
    log_every: int = 10  # write a training-loss row every N steps
    checkpoint_every: int = 250  # write a checkpoint every N steps (and at the end)
    keep_checkpoints: int = 0  # keep only the newest N checkpoints (0 = keep all)
    seed: int = 0  # seed of initialisation and batch order

    def validate(self) -> None:
        positive = ("batch_size", "max_steps", "eval_every", "log_every", "checkpoint_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(
                f"TrainConfig.val_fraction must be in (0, 1), got {self.val_fraction}"
            )
        for name in ("lr", "weight_decay", "beta1", "beta2", "grad_clip", "min_lr_ratio"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"TrainConfig.{name} must be a finite number")
        if not self.lr > 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError("TrainConfig.lr must be > 0 and min_lr_ratio in [0, 1]")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.keep_checkpoints < 0:
            raise ConfigError("TrainConfig warmup_steps, grad_clip, keep_checkpoints must be >= 0")
        if self.weight_decay < 0 or not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ConfigError("TrainConfig weight_decay must be >= 0, beta1 and beta2 in [0, 1)")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to `lr * min_lr_ratio` at `max_steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def batch_ids(step: int, n_train: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices into the training sequences for `step`: a pure function of (seed, step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(n_train, (batch_size,), generator=g)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; tied parameters appear once."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():  # named_parameters() already drops tied duplicates
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


@torch.no_grad()
def evaluate(
    model: GPT, data: SequenceDataset, ids: np.ndarray, batch_size: int, progress: bool = False
) -> float:
    """Mean next-token cross-entropy (nats per token) of `model` over the sequences `ids`."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    starts = range(0, len(ids), batch_size)
    try:
        for start in tqdm(starts, desc="held-out evaluation", unit="batch", disable=not progress):
            x, y = data.batch(ids[start : start + batch_size])
            logits = model(x)
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
            )
            total += float(loss)
            count += y.numel()
    finally:
        model.train(was_training)
    return total / max(count, 1)


def token_cache_dir() -> Path:
    """Where tokenized corpora are cached: $LAYERPEEL_CACHE or ~/.cache/layerpeel/tokens."""
    root = os.environ.get("LAYERPEEL_CACHE") or Path.home() / ".cache" / "layerpeel"
    return Path(root) / "tokens"


@dataclasses.dataclass
class TrainData:
    """Token windows of a corpus and their train / validation split."""

    dataset: SequenceDataset
    train_ids: np.ndarray
    val_ids: np.ndarray


def load_train_data(cfg: TrainConfig, seq_len: int, tokenizer: Any) -> TrainData:
    tokens = prepare_tokens(cfg.data, tokenizer, token_cache_dir())
    dataset = SequenceDataset(tokens, seq_len)
    train_ids, val_ids = split_sequences(len(dataset), cfg.val_fraction, seed=0)
    return TrainData(dataset, train_ids, val_ids)


@contextmanager
def _interrupt_flag() -> Iterator[dict[str, bool]]:
    """Turn Ctrl-C into a flag checked between steps, so a step is never cut in half."""
    flag = {"stop": False}
    previous: Any = None
    try:
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            if flag["stop"]:  # a second Ctrl-C stops at once
                signal.signal(signal.SIGINT, previous)
                raise KeyboardInterrupt
            flag["stop"] = True

        signal.signal(signal.SIGINT, handler)
        installed = True
    except ValueError:  # not the main thread: leave Ctrl-C alone
        installed = False
    try:
        yield flag
    finally:
        if installed:
            signal.signal(signal.SIGINT, previous)


StepHook = Callable[[int, float, GPT], None]


class Trainer:
    """Trains a GPT into a `RunFolder`; `Trainer.resume(path)` continues a run exactly."""

    def __init__(
        self,
        run: RunFolder,
        model_cfg: GPTConfig,
        quant_cfg: QuantConfig,
        cfg: TrainConfig,
        progress: bool = False,
        on_step: StepHook | None = None,
    ) -> None:
        model_cfg.validate()
        quant_cfg.validate()
        cfg.validate()
        self.run, self.model_cfg, self.quant_cfg, self.cfg = run, model_cfg, quant_cfg, cfg
        self.progress = progress
        self.on_step = on_step
        self.step = 0
        self.tokenizer: Any = None
        self.data: TrainData | None = None
        torch.manual_seed(cfg.seed)
        self.model = build_gpt(model_cfg, quant_cfg)
        self.model.train()
        self.optimizer = make_optimizer(self.model, cfg)

    # -- set-up -----------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        out: Path,
        model_cfg: GPTConfig,
        quant_cfg: QuantConfig,
        cfg: TrainConfig,
        **kwargs: Any,
    ) -> Trainer:
        """Start a new run in `out`, which must not already hold one."""
        out = Path(out)
        check_output_dir(out, "--out")
        run = RunFolder(out)
        if run.config_path.exists():
            raise CheckpointError(
                f"{out} already holds a run; continue it with --resume {out} (a run stopped "
                "before its first checkpoint starts over) or give another --out"
            )
        tokenizer = get_tokenizer(cfg.tokenizer)
        if model_cfg.vocab_size < tokenizer.vocab_size:
            model_cfg = dataclasses.replace(model_cfg, vocab_size=tokenizer.vocab_size)
        trainer = cls(run, model_cfg, quant_cfg, cfg, **kwargs)
        trainer.tokenizer = tokenizer
        trainer.data = load_train_data(cfg, model_cfg.block_size, tokenizer)
        out.mkdir(parents=True, exist_ok=True)
        save_tokenizer(tokenizer, run.tokenizer_path)
        run.write_config(trainer.sections())
        return trainer

    @classmethod
    def resume(cls, path: Path, max_steps: int | None = None, **kwargs: Any) -> Trainer:
        """Reopen a run at its latest checkpoint; training then continues as if never stopped.

        A run stopped before its first checkpoint starts over from step 0, as it first began.
        """
        run = open_run(path)
        cfg_all = run.read_config()
        model_cfg, quant_cfg = run.model_config()
        try:
            cfg = TrainConfig.from_dict(cfg_all["train"])
        except KeyError:
            raise CheckpointError(f"run config has no train section: {run.config_path}") from None
        if max_steps is not None:
            cfg = dataclasses.replace(cfg, max_steps=max_steps)
            cfg.validate()
        trainer = cls(run, model_cfg, quant_cfg, cfg, **kwargs)  # seeded as the run first was
        if run.checkpoints():
            ckpt = load_checkpoint(run.latest_checkpoint(), with_optimizer=True)
            load_model_state(trainer.model, ckpt)
            if "optimizer" not in ckpt.meta:
                raise CheckpointError(f"checkpoint has no optimizer state to resume: {ckpt.path}")
            optimizer_from_tensors(trainer.optimizer, ckpt.optim_state, ckpt.meta["optimizer"])
            if "rng.torch" in ckpt.optim_state:
                torch.set_rng_state(ckpt.optim_state["rng.torch"])
            trainer.step = ckpt.step
            log.info("resuming %s at step %d", run.path, ckpt.step)
        else:
            log.warning("%s has no checkpoint yet: starting the run over from step 0", run.path)
        trainer.tokenizer = load_tokenizer(run.tokenizer_path)
        trainer.data = load_train_data(cfg, model_cfg.block_size, trainer.tokenizer)
        trainer._trim_metrics(trainer.step)
        if max_steps is not None:
            run.write_config(trainer.sections())
        return trainer

    def sections(self) -> dict[str, Any]:
        return {
            "model": self.model_cfg.to_dict(),
            "quant": self.quant_cfg.to_dict(),
            "train": self.cfg.to_dict(),
        }

    def _trim_metrics(self, step: int) -> None:
        """Drop metric rows written after the checkpoint we resume from."""
        rows = [r for r in self.run.metrics() if int(r.get("step", 0)) <= step]
        import json

        atomic_write_text(self.run.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    # -- the loop ---------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        meta = {"step": self.step, **self.sections(), "tokenizer": self.cfg.tokenizer}
        path = _save_checkpoint(
            self.run.checkpoint_dir, f"step_{self.step:07d}", self.model, meta, self.optimizer
        )
        if self.cfg.keep_checkpoints:
            for old in self.run.checkpoints()[: -self.cfg.keep_checkpoints]:
                for f in old.parent.glob(old.stem + ".*"):
                    f.unlink(missing_ok=True)
        return path

    def train_step(self) -> float:
        assert self.data is not None
        cfg = self.cfg
        ids = batch_ids(self.step, len(self.data.train_ids), cfg.batch_size, cfg.seed)
        x, y = self.data.dataset.batch(self.data.train_ids[ids.numpy()])
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        loss = self.model.loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def fit(self, until: int | None = None) -> dict[str, Any]:
        """Train to `max_steps` (or step `until`, or Ctrl-C), checkpointing on schedule.

        Stopping at `until` writes a checkpoint there, as Ctrl-C does; returns a summary.
        """
        from tqdm.auto import tqdm

        assert self.data is not None
        cfg = self.cfg
        tokens_per_step = cfg.batch_size * self.model_cfg.block_size
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.progress, unit="step")
        interrupted = False
        t_last, step_last = time.perf_counter(), self.step
        with _interrupt_flag() as flag:
            last = cfg.max_steps if until is None else min(until, cfg.max_steps)
            while self.step < last:
                loss = self.train_step()
                if not math.isfinite(loss):
                    raise CheckpointError(f"training loss became {loss} at step {self.step}")
                bar.update(1)
                if self.on_step is not None:
                    self.on_step(self.step, loss, self.model)
                if self.step % cfg.log_every == 0:
                    now = time.perf_counter()
                    tps = (self.step - step_last) * tokens_per_step / max(now - t_last, 1e-9)
                    t_last, step_last = now, self.step
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
                    append_jsonl(
                        self.run.metrics_path,
                        {
                            "step": self.step,
                            "train_loss": loss,
                            "lr": lr_at(self.step - 1, cfg),
                            "tokens_per_s": tps,
                        },
                    )
                if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                    val = evaluate(
                        self.model,
                        self.data.dataset,
                        self.data.val_ids[: cfg.eval_sequences],
                        cfg.batch_size,
                    )
                    append_jsonl(self.run.metrics_path, {"step": self.step, "val_loss": val})
                    bar.set_postfix(loss=f"{loss:.3f}", val=f"{val:.3f}")
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                    self.save_checkpoint()
                if flag["stop"]:
                    interrupted = True
                    break
        bar.close()
        if self.step < cfg.max_steps and not interrupted:
            if self.step % cfg.checkpoint_every:
                self.save_checkpoint()
            return {"step": self.step, "interrupted": False, "stopped_early": True}
        if interrupted:
            self.save_checkpoint()
            log.warning("interrupted at step %d; resume with --resume %s", self.step, self.run.path)
            return {"step": self.step, "interrupted": True}
        val_loss = self._final_loss()
        summary = {
            "step": self.step,
            "interrupted": False,
            "final_val_loss": val_loss,
            "val_tokens": int(len(self.data.val_ids) * self.model_cfg.block_size),
        }
        return summary

    def _final_loss(self) -> float:
        """The held-out loss at the end of training; one already in metrics.jsonl is reused.

        A finished run reopened (`layerpeel demo` run again) has the same weights and held-out
        set, so the row written the first time is the answer.
        """
        assert self.data is not None
        for row in reversed(self.run.metrics()):
            if row.get("step") == self.step and "final_val_loss" in row:
                log.info("held-out loss of step %d: reused from metrics.jsonl", self.step)
                return float(row["final_val_loss"])
        data, cfg = self.data, self.cfg
        val = evaluate(self.model, data.dataset, data.val_ids, cfg.batch_size, self.progress)
        append_jsonl(self.run.metrics_path, {"step": self.step, "final_val_loss": val})
        return val
