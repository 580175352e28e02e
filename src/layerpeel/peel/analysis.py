"""`peel(model, data, PeelConfig) -> PeelReport`: run P1, P2 and P3 on one model."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from layerpeel.arch.views import model_view
from layerpeel.config import ConfigBase
from layerpeel.data.monitoring import MonitoringSet
from layerpeel.errors import ConfigError, DataError
from layerpeel.peel.attribution import attribute
from layerpeel.peel.cascade import cascade
from layerpeel.peel.context import build_context
from layerpeel.peel.gap import GapOptions, block_gaps
from layerpeel.peel.ladder import ladder
from layerpeel.peel.report import PeelReport
from layerpeel.peel.scoring import SCORE_DTYPES, Thresholds, mark_idle
from layerpeel.quant import model_scheme
from layerpeel.solvers import SOLVERS

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PeelConfig(ConfigBase):
    """What to compute and how; recorded in every report."""

    solver: str = "closed"  # P1 solver: "closed" (target propagation) or "adam"
    parts: tuple[str, ...] = ("block", "attn", "mlp")  # P1 parts per block
    blocks: tuple[int, ...] | None = None  # P1 blocks (0-based); None = all
    ladder: bool = True  # compute P2
    cascade: bool = True  # compute P3
    max_anchors: int | None = None  # P3 subset size cap; None = all for L <= 8, else 2
    cascade_target: str = "preimage"  # P3 final target: "preimage" or "trained"
    red: float = 0.02  # a gap is red when its interval's lower end exceeds this (nats/token)
    yellow: float = 0.005  # a gap is yellow when it exceeds this (nats/token)
    work: bool = True  # score each whole block's removal: its work, and whether it is idle
    idle: float = 0.1  # idle (red) below this fraction of the other blocks' median work; 0: off
    etas: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3)  # target-propagation steps, relative
    search_sequences: int = 64  # fit sequences for the eta line search
    ridge: float = 1e-3  # ridge of closed-form solves, relative to feature energy (see docs)
    adam_steps: int = 200  # steps of the Adam solver
    adam_lr: float = 1e-3  # learning rate of the Adam solver
    n_boot: int = 1000  # bootstrap resamples
    batch: int = 16  # sequences per forward batch
    score_dtype: str = "float32"  # blocks' matrix products when scoring tails: float32 or bfloat16
    budget_mb: float = 2048  # memory budget for cached activations (MiB)
    seed: int = 0  # seed of bootstrap and Adam batches
    attribute: bool = False  # re-check the reds after the first red block with it fixed

    def validate(self) -> None:
        if self.solver not in SOLVERS:
            raise ConfigError(f"unknown solver {self.solver!r}; known: {', '.join(SOLVERS)}")
        bad = set(self.parts) - {"block", "attn", "mlp"}
        if bad:
            raise ConfigError(f"unknown part(s) {sorted(bad)}; known: block, attn, mlp")
        if self.cascade_target not in ("preimage", "trained"):
            raise ConfigError("cascade_target must be 'preimage' or 'trained'")
        if not self.budget_mb > 0:
            raise ConfigError(f"the memory budget must be positive, got {self.budget_mb} MiB")
        if self.search_sequences < 1 or not self.etas:
            raise ConfigError("the eta line search needs at least one step and one sequence")
        if self.score_dtype not in SCORE_DTYPES:
            raise ConfigError(f"score_dtype must be one of {', '.join(SCORE_DTYPES)}")
        if not self.idle >= 0:
            raise ConfigError(f"idle must be a fraction >= 0, got {self.idle}")
        if self.batch < 1 or self.n_boot < 1:
            raise ConfigError("batch and n_boot must be positive")

    def thresholds(self) -> Thresholds:
        """The verdict thresholds these settings name."""
        return Thresholds(red=self.red, yellow=self.yellow, idle=self.idle)


class ModelState:
    """Puts a model in eval mode for the analysis and restores its mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes = {m: m.training for m in model.modules()}

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.modes.items():
            m.training = mode


@dataclasses.dataclass
class Analysis:
    """What every analysis of one model settles before it peels: view, quantizer, blocks."""

    view: Any  # the model's `ModelView`
    scheme: str | None  # the model's quantizer ("ternary", "Q4_1", ...) or None
    blocks: tuple[int, ...]  # P1 blocks
    cap: int | None  # P3 anchor subset size cap
    options: GapOptions  # P1 settings
    thresholds: Thresholds  # verdict thresholds

    @property
    def n_blocks(self) -> int:
        return int(self.view.n_blocks)


def prepare(model: nn.Module, cfg: PeelConfig) -> Analysis:
    """Validate `cfg` against `model` and settle what every phase needs."""
    cfg.validate()
    view = model_view(model)
    # a model loaded from a low-bit file (GGUF) names its format in `layerpeel_scheme`
    found = getattr(model, "layerpeel_scheme", None) or model_scheme(model)
    scheme = None if found in (None, "none") else found
    n = view.n_blocks
    blocks = tuple(range(n)) if cfg.blocks is None else tuple(cfg.blocks)
    if any(not 0 <= b < n for b in blocks):
        raise ConfigError(f"blocks must be in 0..{n - 1}, got {list(blocks)}")
    opts = GapOptions(
        solver=cfg.solver,
        etas=tuple(cfg.etas),
        search_sequences=cfg.search_sequences,
        ridge=cfg.ridge,
        adam_steps=cfg.adam_steps,
        adam_lr=cfg.adam_lr,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        work=cfg.work,
    )
    cap = cfg.max_anchors if cfg.max_anchors is not None else (None if n <= 8 else 2)
    return Analysis(view, scheme, blocks, cap, opts, cfg.thresholds())


def peel(
    model: nn.Module,
    data: MonitoringSet,
    cfg: PeelConfig | None = None,
    progress: bool = False,
    keep_references: bool = False,
    sharded: bool = False,
    group: Any = None,
) -> PeelReport:
    """Analyse `model` on the monitoring set: P1 rows, P2 ladder, P3 cascade.

    With `keep_references` the report's `references` hold every reference block: "p1" by
    (block, part), "p2" by (from_block, to_block), "p3" a list of blocks by anchor subset, and
    for a quantized model "p1_fp" the full-precision twin of each P1 reference.
    With `sharded`, every rank of the initialised torch.distributed process group `group`
    (default: the world) calls this together; the work is spread over the ranks and each gets
    the report one process would write (`layerpeel.distributed.peel_sharded`).
    """
    from tqdm.auto import tqdm

    cfg = cfg or PeelConfig()
    if len(data.fit_ids) < 2:
        raise DataError(
            f"the monitoring set fits on {len(data.fit_ids)} sequence(s); the analysis needs at "
            "least 2 (its line search fits on one and scores another): give it more tokens"
        )
    if sharded:
        if keep_references:
            raise ConfigError("a sharded analysis cannot keep the reference blocks")
        if cfg.attribute:
            raise ConfigError("a sharded analysis cannot attribute reds (run it in one process)")
        from layerpeel.distributed import peel_sharded

        return peel_sharded(model, data, cfg, group=group)
    a = prepare(model, cfg)
    n, scheme = a.n_blocks, a.scheme
    timings: dict[str, float] = {}
    refs: dict[str, dict[Any, Any]] = {"p1": {}, "p1_fp": {}, "p2": {}, "p3": {}}
    keep = refs if keep_references else dict.fromkeys(refs)
    with ModelState(model):
        t0 = time.perf_counter()
        capture: dict[str, Any] = {  # `build_context`'s settings, for attribution's capture too
            "batch": cfg.batch,
            "budget_bytes": int(cfg.budget_mb * 2**20),
            "score_dtype": cfg.score_dtype,
        }
        ctx = build_context(a.view, data, **capture)
        timings["capture"] = time.perf_counter() - t0
        rows: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        parts = tuple(cfg.parts)
        with tqdm(
            total=len(a.blocks) * len(parts),
            desc="P1 layer gaps",
            disable=not progress,
            unit="peel",
        ) as bar:
            # attribution needs the references of the red rows: kept even when not asked for
            p1_refs = keep["p1"] if keep["p1"] is not None or not cfg.attribute else {}
            for b in a.blocks:
                block_rows = block_gaps(
                    ctx, b, parts, scheme, a.options, a.thresholds, p1_refs, keep["p1_fp"]
                )
                rows.extend(block_rows)
                if keep["p1"] is None and p1_refs is not None:
                    for r in block_rows:
                        if r["verdict"] != "red":
                            del p1_refs[(b, r["part"])]
                bar.update(len(parts))
        timings["p1"] = time.perf_counter() - t0
        if cfg.attribute and p1_refs is not None:
            t0 = time.perf_counter()
            mark_idle(rows, a.thresholds)  # an idle block is red for its work: not attributed
            attribute(model, a, data, rows, p1_refs, capture)
            timings["attribution"] = time.perf_counter() - t0
        ladder_rows: list[dict[str, Any]] = []
        if cfg.ladder:
            t0 = time.perf_counter()
            with tqdm(total=n * (n + 1) // 2, desc="P2 ladder", disable=not progress) as bar:
                ladder_rows = ladder(ctx, scheme, cfg.ridge, bar, keep["p2"])
            timings["p2"] = time.perf_counter() - t0
        casc = None
        if cfg.cascade:
            t0 = time.perf_counter()
            from layerpeel.peel.cascade import anchor_subsets

            with tqdm(
                total=len(anchor_subsets(n, a.cap)), desc="P3 cascade", disable=not progress
            ) as bar:
                casc = cascade(ctx, scheme, a.cap, cfg.cascade_target, cfg.ridge, bar, keep["p3"])
            timings["p3"] = time.perf_counter() - t0
    report = make_report(model, data, cfg, a, rows, ladder_rows, casc, timings)
    report.references = refs if keep_references else {}
    return report


def make_report(
    model: nn.Module,
    data: MonitoringSet,
    cfg: PeelConfig,
    a: Analysis,
    rows: list[dict[str, Any]],
    ladder_rows: list[dict[str, Any]],
    casc: dict[str, Any] | None,
    timings: dict[str, float],
) -> PeelReport:
    """The `PeelReport` of the rows, with what was analysed, on what and with which settings.

    The idle verdicts are settled here, once every block's work is in `rows`.
    """
    from layerpeel import __version__

    mark_idle(rows, a.thresholds)

    return PeelReport(
        layers=rows,
        ladder=ladder_rows,
        cascade=casc,
        config=cfg.to_dict(),
        monitoring={
            "sha256": data.digest(),
            "tokens": data.n_tokens,
            "fit_sequences": len(data.fit_ids),
            "held_sequences": len(data.held_ids),
            "seq_len": data.seq_len,
        },
        model={
            "class": type(model).__name__,
            "blocks": a.n_blocks,
            "quant": a.scheme,
            "params": sum(p.numel() for p in model.parameters()),
        },
        timings=timings,
        version=__version__,
    )


def report_is_finite(report: PeelReport) -> bool:
    return all(torch.isfinite(torch.tensor(r["gap"])) for r in report.layers)


DEFAULT_TOKENS = 65536  # monitoring tokens of `layerpeel analyze`: half fit, half held out


@dataclasses.dataclass
class Target:
    """A model to analyse and where it came from."""

    model: nn.Module
    step: int | None  # training step of the checkpoint, when known
    run: Any  # the `RunFolder` it belongs to, or None
    source: str  # what the user named
    weights: Path  # the checkpoint's weights file (safetensors)


def load_target(path: str | Path) -> Target:
    """The model of a run folder (its latest checkpoint) or of one checkpoint's JSON file."""
    from layerpeel.errors import CheckpointError
    from layerpeel.training.run_folder import load_model, open_run

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no run folder or checkpoint at {p}")
    model, ckpt = load_model(p)
    run_dir = p if p.is_dir() else p.resolve().parent.parent
    run = open_run(run_dir) if (run_dir / "config.json").exists() else None
    weights = ckpt.path.parent / str(ckpt.meta.get("weights", ckpt.path.stem + ".safetensors"))
    return Target(model, ckpt.step, run, str(p), weights)


def monitoring_from_run(
    run: Any,
    data: str | None = None,
    n_tokens: int = DEFAULT_TOKENS,
    seq_len: int | None = None,
) -> MonitoringSet:
    """A monitoring set from the run's own corpus (or `data`), tokenized by the run's tokenizer.

    Sequences are spread evenly over the training split, so the set follows the training
    distribution; it holds ceil(n_tokens / seq_len) sequences (all there are, if fewer), half
    fitted and half held out. The same run and settings always give the same set.
    """
    from layerpeel.data import SequenceDataset, load_tokenizer, prepare_tokens, split_sequences
    from layerpeel.data.monitoring import (
        check_enough_sequences,
        monitoring_set,
        sequences_wanted,
    )
    from layerpeel.training.trainer import token_cache_dir

    cfg = run.read_config()
    train_cfg = cfg.get("train", {})
    seq_len = seq_len or int(cfg.get("model", {}).get("block_size", 128))
    want = sequences_wanted(n_tokens, seq_len)  # checked before the corpus is read
    tokenizer = load_tokenizer(run.tokenizer_path)
    source = data if data is not None else train_cfg.get("data")
    tokens = prepare_tokens(source, tokenizer, token_cache_dir())
    if len(tokens) and int(np.max(tokens)) >= tokenizer.vocab_size:
        raise DataError("the token data has ids outside the run's vocabulary")
    dataset = SequenceDataset(tokens, seq_len)
    n_seq = len(dataset)
    train_ids = (
        split_sequences(n_seq, float(train_cfg.get("val_fraction", 0.1)), seed=0)[0]
        if n_seq >= 2
        else np.arange(0)
    )
    check_enough_sequences(len(train_ids), seq_len)
    if want >= len(train_ids):
        ids = train_ids
    else:
        ids = train_ids[np.linspace(0, len(train_ids) - 1, want).round().astype(np.int64)]
    return monitoring_set(dataset.windows(ids))
