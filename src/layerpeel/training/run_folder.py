"""Run folders: config, tokenizer, metrics and checkpoints of one training run, and loading them back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerpeel.errors import CheckpointError, ConfigError
from layerpeel.io import atomic_write_json
from layerpeel.models import GPT, GPTConfig
from layerpeel.quant import QuantConfig, quantize_
from layerpeel.training.checkpoint import (
    Checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model_state,
)

RUN_KIND = "layerpeel-run"
RUN_VERSION = 1


def build_gpt(model_cfg: GPTConfig, quant_cfg: QuantConfig | None = None) -> GPT:
    """A fresh GPT with the quantizer of `quant_cfg` applied (full precision when None/"none")."""
    model = GPT(model_cfg)
    if quant_cfg is not None and quant_cfg.scheme != "none":
        quantize_(model, quant_cfg)
    return model


@dataclass
class RunFolder:
    """The files of one run: `config.json`, `tokenizer.json`, `metrics.jsonl`, `checkpoints/`."""

    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def write_config(self, sections: dict[str, Any]) -> None:
        from layerpeel import __version__

        record = {"kind": RUN_KIND, "version": RUN_VERSION, "layerpeel": __version__, **sections}
        atomic_write_json(self.config_path, record)

    def read_config(self) -> dict[str, Any]:
        try:
            data = json.loads(self.config_path.read_text())
        except FileNotFoundError:
            raise CheckpointError(
                f"not a layerpeel run folder (no config.json): {self.path}"
            ) from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"run config unreadable: {self.config_path} ({exc})") from None
        if not isinstance(data, dict) or data.get("kind") != RUN_KIND:
            raise CheckpointError(f"not a layerpeel run folder: {self.path}")
        return data

    def model_config(self) -> tuple[GPTConfig, QuantConfig]:
        cfg = self.read_config()
        try:
            return GPTConfig.from_dict(cfg["model"]), QuantConfig.from_dict(cfg.get("quant", {}))
        except KeyError:
            raise CheckpointError(f"run config has no model section: {self.config_path}") from None
        except ConfigError as exc:
            raise CheckpointError(f"run config invalid: {self.config_path}: {exc}") from None

    def checkpoints(self) -> list[Path]:
        return list_checkpoints(self.checkpoint_dir)

    def latest_checkpoint(self) -> Path:
        ckpts = self.checkpoints()
        if not ckpts:
            raise CheckpointError(f"run folder has no complete checkpoint: {self.path}")
        return ckpts[-1]

    def metrics(self) -> list[dict[str, Any]]:
        """Rows of metrics.jsonl; a torn last line (a killed run) is skipped."""
        rows: list[dict[str, Any]] = []
        if not self.metrics_path.exists():
            return rows
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def loss_history(self) -> list[tuple[int, float]]:
        """(step, training loss) of every logged step, in the order they were logged."""
        return [
            (int(r["step"]), float(r["train_loss"]))
            for r in self.metrics()
            if isinstance(r.get("step"), int) and isinstance(r.get("train_loss"), int | float)
        ]


def open_run(path: str | Path) -> RunFolder:
    """Open an existing run folder, checking that it is one."""
    run = RunFolder(Path(path))
    if not run.path.is_dir():
        raise CheckpointError(f"run folder not found: {run.path}")
    run.read_config()
    return run


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[GPT, Checkpoint]:
    """Load a GPT from a run folder (its latest checkpoint) or from a checkpoint's JSON file."""
    path = Path(path)
    if path.is_dir():
        run = open_run(path)
        ckpt = load_checkpoint(run.latest_checkpoint(), with_optimizer=False)
    else:
        ckpt = load_checkpoint(path, with_optimizer=False)
    try:
        model_cfg = GPTConfig.from_dict(ckpt.meta["model"])
        quant_cfg = QuantConfig.from_dict(ckpt.meta.get("quant", {}))
    except KeyError:
        raise CheckpointError(f"checkpoint has no model config: {ckpt.path}") from None
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint config invalid: {ckpt.path}: {exc}") from None
    model = build_gpt(model_cfg, quant_cfg)
    load_model_state(model, ckpt)
    model.to(torch.device(map_location)).eval()
    return model, ckpt
