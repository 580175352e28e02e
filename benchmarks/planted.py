"""Models with a planted fault: one block that training leaves behind, on purpose.

A detector of under-optimized layers should rank the faulty block first and a healthy model,
trained the same way, should get no alarm. Faults:
- "frozen": the block keeps its initial weights for the whole run;
- "slow": the block learns with a learning rate 100 times smaller than the rest;
- "reinit": the block is re-initialised at 80 % of the run and then trained with the rest.
Used by the tests and by `benchmarks/planted_faults.py`; also a quick way for a user to check
what layerpeel reports on a known fault. A loss bound can only find a fault that costs loss: in
small models the other blocks take over most of a frozen block's work (docs/peeling.md has the
measured costs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from layerpeel.data import SequenceDataset
from layerpeel.errors import ConfigError
from layerpeel.models import GPT, GPTConfig
from layerpeel.quant import QuantConfig, quantize_

FAULTS = ("none", "frozen", "slow", "reinit")


@dataclass
class PlantedRun:
    """How to train one model with (or without) a fault."""

    fault: str = "frozen"  # one of FAULTS
    block: int = 1  # the faulty block (0-based)
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 20
    quant: str = "none"
    seed: int = 0

    def validate(self, n_layer: int) -> None:
        if self.fault not in FAULTS:
            raise ConfigError(f"unknown fault {self.fault!r}; known: {', '.join(FAULTS)}")
        if not 0 <= self.block < n_layer:
            raise ConfigError(f"faulty block must be in 0..{n_layer - 1}, got {self.block}")


def _lr(step: int, run: PlantedRun) -> float:
    if step < run.warmup:
        return run.lr * (step + 1) / run.warmup
    frac = (step - run.warmup) / max(1, run.steps - run.warmup)
    return run.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def train_planted(
    model_cfg: GPTConfig, data: SequenceDataset, train_ids: np.ndarray, run: PlantedRun
) -> GPT:
    """Train a GPT on `data` windows `train_ids` with the fault of `run` planted in one block."""
    run.validate(model_cfg.n_layer)
    torch.manual_seed(run.seed)
    model = GPT(model_cfg)
    if run.quant != "none":
        quantize_(model, QuantConfig(scheme=run.quant))
    faulty = {id(p) for p in model.blocks[run.block].parameters()}
    if run.fault == "frozen":
        for p in model.blocks[run.block].parameters():
            p.requires_grad_(False)
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in faulty]
    mine = [p for p in model.parameters() if p.requires_grad and id(p) in faulty]
    groups = [{"params": rest, "scale": 1.0}]
    if mine:
        groups.append({"params": mine, "scale": 0.01 if run.fault == "slow" else 1.0})
    opt = torch.optim.AdamW(groups, lr=run.lr, weight_decay=0.0)
    gen = np.random.Generator(np.random.PCG64(run.seed))
    model.train()
    for step in range(run.steps):
        if run.fault == "reinit" and step == int(0.8 * run.steps):
            fresh = GPT(model_cfg)
            if run.quant != "none":
                quantize_(fresh, QuantConfig(scheme=run.quant))
            with torch.no_grad():
                for p, q in zip(
                    model.blocks[run.block].parameters(),
                    fresh.blocks[run.block].parameters(),
                    strict=True,
                ):
                    p.copy_(q)
        for g in opt.param_groups:
            g["lr"] = _lr(step, run) * g["scale"]
        x, y = data.batch(train_ids[gen.integers(0, len(train_ids), run.batch_size)])
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval()
