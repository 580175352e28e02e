"""The models of the validity benchmark: what to train, training with a planted fault, the cache.

A `Case` is one training run: an architecture and size (`Spec`), a quantizer, a fault planted
in one block (or none), a seed, and the steps at which it is kept (the last step, and for the
along-training runs earlier checkpoints too). Trained models are cached in `<cache>/models/`,
layerpeel GPTs as safetensors checkpoints with their JSON (`layerpeel.training.checkpoint`),
Hugging Face models as `save_pretrained` folders, so a second run only evaluates.

Faults (`FAULTS`), all in block `Case.block`:
- lr10 / lr100: the block learns with a learning rate 10 / 100 times smaller than the rest;
- stall: the block stops training at half the run (frozen from mid-training);
- reinit: the block is re-initialised at 80 % of the run (its optimizer state reset), then
  trained with the rest;
- attn_frozen / mlp_frozen: the block's attention (or MLP) sub-block keeps its initial weights;
- bad_scale (ternary only): the block's quantized layers use a scale held at a quarter of its
  initial value instead of the one ternary recomputes from the weights; training never moves it
  (the oracle, which trains the block's own parameters, may).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from layerpeel.arch.table import model_view
from layerpeel.data import SequenceDataset, get_tokenizer, prepare_tokens, split_sequences
from layerpeel.errors import ConfigError
from layerpeel.models import GPTConfig
from layerpeel.quant import QuantConfig, QuantLinear
from layerpeel.training.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from layerpeel.training.run_folder import build_gpt
from layerpeel.training.trainer import TrainConfig, batch_ids, lr_at, token_cache_dir

log = logging.getLogger(__name__)

FAULTS = ("none", "lr10", "lr100", "stall", "reinit", "attn_frozen", "mlp_frozen", "bad_scale")
SUB_BLOCK_FAULTS = {"attn_frozen": "attn", "mlp_frozen": "mlp"}  # faults of one sub-block
BAD_SCALE = 0.25  # bad_scale: the held scale, relative to the block's initial ternary scale


@dataclass(frozen=True)
class Spec:
    """Architecture, size and training schedule shared by the cases of a suite."""

    arch: str = "gpt"  # "gpt" (layerpeel's, bytes), "llama" or "gpt2" (Hugging Face, GPT-2 BPE)
    n_layer: int = 4  # blocks
    d_model: int = 64  # width of the residual stream
    n_head: int = 4  # attention heads
    seq_len: int = 64  # context = training window, in tokens
    batch: int = 16  # sequences per step
    lr: float = 3e-3  # peak learning rate (AdamW, warm-up then cosine to 0.1 of it)
    warmup: int = 30  # warm-up steps

    @property
    def tokenizer(self) -> str:
        return "bytes" if self.arch == "gpt" else "gpt2"


@dataclass(frozen=True)
class Case:
    """One training run of the benchmark and the steps at which its model is analysed."""

    spec: Spec
    steps: int  # training steps
    fault: str = "none"  # one of FAULTS
    block: int = -1  # the faulty block (-1: none)
    quant: str = "none"  # quantizer of the model's Linear layers
    seed: int = 0
    keep: tuple[int, ...] = ()  # earlier steps also analysed (along training)

    @property
    def name(self) -> str:
        """Folder name: everything that changes the trained weights."""
        s = self.spec
        where = f"-b{self.block}" if self.fault != "none" else ""
        return (
            f"{s.arch}-L{s.n_layer}d{s.d_model}t{s.seq_len}-{self.quant}-{self.fault}{where}"
            f"-s{self.seed}-n{self.steps}"
        )

    @property
    def snapshots(self) -> tuple[int, ...]:
        return tuple(sorted({*self.keep, self.steps}))

    def validate(self) -> None:
        if self.fault not in FAULTS:
            raise ConfigError(f"unknown fault {self.fault!r}; known: {', '.join(FAULTS)}")
        if self.fault != "none" and not 0 <= self.block < self.spec.n_layer:
            raise ConfigError(f"faulty block must be in 0..{self.spec.n_layer - 1}")
        if self.fault == "bad_scale" and self.quant != "ternary":
            raise ConfigError("bad_scale is a fault of ternary models")
        if self.spec.arch != "gpt" and self.quant != "none":
            raise ConfigError("Hugging Face cases are full precision")


@dataclass
class Corpus:
    """Token windows of the built-in corpus in the case's tokenizer, and their split."""

    data: SequenceDataset
    train_ids: np.ndarray  # windows models (and the oracle) train on
    val_ids: np.ndarray  # windows never trained on: the oracle's held-out set


def load_corpus(spec: Spec) -> Corpus:
    tokens = prepare_tokens(None, get_tokenizer(spec.tokenizer), token_cache_dir())
    data = SequenceDataset(tokens, spec.seq_len)
    train_ids, val_ids = split_sequences(len(data), 0.1, seed=0)
    return Corpus(data, train_ids, val_ids)


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) of a layerpeel GPT or a Hugging Face causal LM on tokens x (B, T)."""
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = logits_of(model, x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def new_model(case: Case) -> nn.Module:
    """The case's untrained model, seeded by the case, with its fault's structure in place."""
    s = case.spec
    torch.manual_seed(case.seed)
    if s.arch == "gpt":
        model: nn.Module = build_gpt(
            GPTConfig(n_layer=s.n_layer, n_head=s.n_head, d_model=s.d_model, block_size=s.seq_len),
            QuantConfig(scheme=case.quant),
        )
    else:
        model = _hf_model(s)
    if case.fault == "bad_scale":
        hold_scale(model, case.block)
    return model


def _hf_model(s: Spec) -> nn.Module:
    import transformers as t

    vocab = get_tokenizer(s.tokenizer).vocab_size
    if s.arch == "llama":
        cfg: Any = t.LlamaConfig(
            vocab_size=vocab, hidden_size=s.d_model, intermediate_size=8 * s.d_model // 3,
            num_hidden_layers=s.n_layer, num_attention_heads=s.n_head,
            num_key_value_heads=s.n_head, max_position_embeddings=s.seq_len,
            tie_word_embeddings=True,
        )  # fmt: skip
    elif s.arch == "gpt2":
        cfg = t.GPT2Config(
            vocab_size=vocab, n_positions=s.seq_len, n_embd=s.d_model, n_layer=s.n_layer,
            n_head=s.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
    else:
        raise ConfigError(f"unknown architecture {s.arch!r}")
    cfg.use_cache = False  # every forward here is one whole window: no key-value cache
    return t.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")


def hold_scale(model: nn.Module, block: int) -> None:
    """bad_scale: give block `block`'s ternary layers a scale of their own, held at a bad value.

    `QuantLinear.current_scale` uses a layer's own `weight_scale` when it has one; ternary codes
    ignore the scale, so the layer multiplies by BAD_SCALE x its initial scale times its codes.
    """
    for m in model_view(model).blocks[block].modules():
        if isinstance(m, QuantLinear):
            value = m.quantizer.init_scale(m.weight.detach()) * BAD_SCALE
            m.weight_scale = nn.Parameter(value.clone(), requires_grad=False)


def part_parameters(model: nn.Module, block: int, part: str) -> list[nn.Parameter]:
    """Parameters of block `block`'s `part` ("block", "attn" or "mlp"), scales included."""
    view = model_view(model)
    b = view.blocks[block]
    if part == "block":
        return list(b.parameters())
    named = dict(b.named_parameters())
    found = {id(p) for p in view.block_view(b).part_parameters(part)}
    prefix = {"attn": "attn", "mlp": "mlp"}[part]  # a held scale lives in the part's Linears
    return [p for n, p in named.items() if id(p) in found or ("weight_scale" in n and prefix in n)]


def _groups(model: nn.Module, case: Case) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices only (as the trainer), faulty block's lr scaled."""
    faulty: set[int] = set()
    if case.fault in ("lr10", "lr100"):
        faulty = {id(p) for p in part_parameters(model, case.block, "block")}
    scale = {"lr10": 0.1, "lr100": 0.01}.get(case.fault, 1.0)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((p.dim() >= 2, id(p) in faulty), []).append(p)
    return [
        {"params": ps, "weight_decay": 0.1 if decay else 0.0, "scale": scale if bad else 1.0}
        for (decay, bad), ps in groups.items()
    ]


def train(case: Case, corpus: Corpus, on_snapshot: Any) -> None:
    """Train `case`'s model, calling `on_snapshot(step, model, losses)` at each of its snapshots.

    `losses` is the training loss of every step so far, as (step, loss) pairs.
    """
    case.validate()
    s = case.spec
    model = new_model(case)
    if case.fault in SUB_BLOCK_FAULTS:
        for p in part_parameters(model, case.block, SUB_BLOCK_FAULTS[case.fault]):
            p.requires_grad_(False)
    tcfg = TrainConfig(max_steps=case.steps, lr=s.lr, warmup_steps=s.warmup, batch_size=s.batch)
    opt = torch.optim.AdamW(_groups(model, case), lr=s.lr, betas=(0.9, 0.95))
    block_params = part_parameters(model, case.block, "block") if case.block >= 0 else []
    model.train()
    losses: list[tuple[int, float]] = []
    for step in range(case.steps):
        if case.fault == "stall" and step == case.steps // 2:
            for p in block_params:
                p.requires_grad_(False)
                p.grad = None  # AdamW skips a parameter without a gradient: no update, no decay
        if case.fault == "reinit" and step == int(0.8 * case.steps):
            _reinit(model, case, opt)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tcfg) * g["scale"]
        ids = batch_ids(step, len(corpus.train_ids), s.batch, case.seed)
        x, y = corpus.data.batch(corpus.train_ids[ids.numpy()])
        loss = lm_loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append((step + 1, float(loss.detach())))
        if step + 1 in case.snapshots:
            on_snapshot(step + 1, model.eval(), list(losses))
            model.train()


@torch.no_grad()
def _reinit(model: nn.Module, case: Case, opt: torch.optim.Optimizer) -> None:
    fresh = new_model(dataclasses.replace(case, seed=case.seed + 1000))
    mine = part_parameters(model, case.block, "block")
    for p, q in zip(mine, part_parameters(fresh, case.block, "block"), strict=True):
        p.copy_(q)
        opt.state.pop(p, None)


# -- the cache -------------------------------------------------------------------------------


def _folder(cache: Path, case: Case) -> Path:
    return cache / "models" / case.name


def _meta_path(cache: Path, case: Case, step: int) -> Path:
    return _folder(cache, case) / f"step_{step:07d}.json"


def is_cached(cache: Path, case: Case) -> bool:
    """Every snapshot of `case` is in the cache, with its loss history."""
    return all(
        _meta_path(cache, case, s).exists() and "losses" in _meta_path(cache, case, s).read_text()
        for s in case.snapshots
    )


def train_cached(case: Case, cache: Path, corpus: Corpus) -> None:
    """Train `case` unless every snapshot of it is in the cache already."""
    if is_cached(cache, case):
        return
    folder = _folder(cache, case)

    def save(step: int, model: nn.Module, losses: list[tuple[int, float]]) -> None:
        meta = {"step": step, "case": case_dict(case), "losses": losses}
        if case.spec.arch == "gpt":
            model_cfg = model.config  # type: ignore[union-attr]
            meta.update(model=model_cfg.to_dict(), quant=QuantConfig(case.quant).to_dict())
            save_checkpoint(folder, f"step_{step:07d}", model, meta)
        else:
            model.save_pretrained(folder / f"step_{step:07d}")  # type: ignore[operator]
            (folder / f"step_{step:07d}.json").write_text(json.dumps(meta, indent=1))

    train(case, corpus, save)


def load_snapshot(case: Case, cache: Path, step: int) -> nn.Module:
    """The cached model of `case` at `step`, in eval mode."""
    path = _meta_path(cache, case, step)
    if case.spec.arch == "gpt":
        model = new_model(case)
        load_model_state(model, load_checkpoint(path, with_optimizer=False))
    else:
        import transformers as t

        model = t.AutoModelForCausalLM.from_pretrained(path.with_suffix(""))
        model.config.use_cache = False
    return model.eval()


def load_losses(case: Case, cache: Path, step: int) -> list[tuple[int, float]]:
    """The training loss of every step of `case` up to `step`, as (step, loss) pairs."""
    meta = json.loads(_meta_path(cache, case, step).read_text())
    return [(int(s), float(v)) for s, v in meta["losses"]]


def case_dict(case: Case) -> dict[str, Any]:
    return dataclasses.asdict(case)


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy that shares nothing with `model` (a binary-global scale stays shared inside)."""
    return copy.deepcopy(model)
