"""Checkpoints as safetensors + JSON: model weights, optimizer state and RNG state, written atomically.

A checkpoint named `step_000500` in a folder is three files:
  step_000500.safetensors        model state_dict (shared tensors stored once)
  step_000500.optim.safetensors  optimizer tensors and the torch RNG state (optional)
  step_000500.json               configs, step, optimizer hyper-parameters, sha256 of both files
The JSON is written last, so a checkpoint without its JSON is incomplete and is ignored.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from layerpeel.errors import CheckpointError
from layerpeel.io import atomic_write, atomic_write_json, file_sha256

log = logging.getLogger(__name__)

FORMAT = "layerpeel-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: its metadata and tensors."""

    path: Path  # the .json file
    meta: dict[str, Any]  # everything in the JSON
    model_state: dict[str, torch.Tensor]
    optim_state: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def unique_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state_dict with tied tensors stored once, and the map alias -> stored name."""
    state = model.state_dict(keep_vars=False)
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = t.detach().contiguous().clone()
    return tensors, aliases


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], Any]:
    """Split an optimizer state_dict into flat tensors and a JSON-able remainder."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: Any
) -> None:
    """Inverse of `optimizer_to_tensors`: load the state into `opt`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, scalars in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(scalars)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    folder: Path,
    name: str,
    model: nn.Module,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write `name`.safetensors (+ optimizer and RNG state) and `name`.json atomically; return the JSON path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights, aliases = unique_state_dict(model)
    wpath = folder / f"{name}.safetensors"
    atomic_write(wpath, lambda tmp: save_file(weights, str(tmp)))
    record: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **meta,
        "weights": wpath.name,
        "weights_sha256": file_sha256(wpath),
        "aliases": aliases,
    }
    if optimizer is not None:
        otensors, ometa = optimizer_to_tensors(optimizer)
        otensors["rng.torch"] = torch.get_rng_state()
        opath = folder / f"{name}.optim.safetensors"
        atomic_write(opath, lambda tmp: save_file(otensors, str(tmp)))
        record["optimizer"] = ometa
        record["optimizer_state"] = opath.name
        record["optimizer_sha256"] = file_sha256(opath)
    jpath = folder / f"{name}.json"
    atomic_write_json(jpath, record)
    return jpath


def _load_tensors(path: Path, expected_sha: str | None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    if expected_sha is not None and file_sha256(path) != expected_sha:
        raise CheckpointError(
            f"checkpoint file is truncated or corrupted (sha256 mismatch): {path}"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None


def load_checkpoint(json_path: Path, with_optimizer: bool = True) -> Checkpoint:
    """Read and verify a checkpoint from its JSON file."""
    json_path = Path(json_path)
    if json_path.suffix == ".safetensors":
        json_path = json_path.with_name(json_path.name.split(".")[0] + ".json")
    try:
        meta = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {json_path}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint metadata unreadable: {json_path} ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"not a layerpeel checkpoint: {json_path}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format is newer than this layerpeel: {json_path}")
    folder = json_path.parent
    weights = _load_tensors(folder / meta["weights"], meta.get("weights_sha256"))
    for alias, target in meta.get("aliases", {}).items():
        weights[alias] = weights[target]
    optim: dict[str, torch.Tensor] = {}
    if with_optimizer and "optimizer_state" in meta:
        optim = _load_tensors(folder / meta["optimizer_state"], meta.get("optimizer_sha256"))
    return Checkpoint(json_path, meta, weights, optim)


def load_model_state(model: nn.Module, ckpt: Checkpoint) -> None:
    """Load weights into `model`, naming the mismatch if the checkpoint does not fit its config."""
    try:
        missing, unexpected = model.load_state_dict(ckpt.model_state, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first if "size mismatch" in ln), first[-1].strip())
        raise CheckpointError(
            f"checkpoint {ckpt.path} does not match its config: {detail}"
        ) from None
    if missing or unexpected:
        what = f"missing {list(missing)[:3]}" if missing else f"unexpected {list(unexpected)[:3]}"
        raise CheckpointError(f"checkpoint {ckpt.path} does not match its config: {what}")


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints (their JSON files) in `folder`, oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for p in folder.glob("*.json"):
        try:
            meta = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            log.warning("skipping unreadable checkpoint metadata %s", p)
            continue
        if isinstance(meta, dict) and meta.get("format") == FORMAT:
            out.append((int(meta.get("step", -1)), p))
    return [p for _, p in sorted(out)]


__all__ = [
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_model_state",
    "list_checkpoints",
    "unique_state_dict",
]
