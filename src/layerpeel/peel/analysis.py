"""`peel(model, data, PeelConfig) -> PeelReport`: plan P1, P2 and P3 as units, run them, merge."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from layerpeel.data.monitoring import MonitoringSet
from layerpeel.errors import ConfigError, DataError
from layerpeel.peel.attribution import attribute
from layerpeel.peel.config import PeelConfig
from layerpeel.peel.context import build_context
from layerpeel.peel.evidence import Trend, bigram_ce, weight_spike
from layerpeel.peel.plan import Analysis, plan_analysis
from layerpeel.peel.report import PeelReport
from layerpeel.peel.rows import Cascade, GapRow, LadderRow
from layerpeel.peel.run import Shard, merge, run_units
from layerpeel.peel.scoring import mark_idle
from layerpeel.peel.verdict import PART_NAMES, judge
from layerpeel.peel.world import World, env_world_size

log = logging.getLogger(__name__)


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


def peel(
    model: nn.Module,
    data: MonitoringSet,
    cfg: PeelConfig | None = None,
    progress: bool = False,
    keep_references: bool = False,
    sharded: bool = False,
    group: Any = None,
    trend: Trend | None = None,
) -> PeelReport:
    """Analyse `model` on the monitoring set: P1 rows, P2 ladder, P3 cascade.

    The analysis is planned as units (`layerpeel.peel.plan`); this process runs them all, or
    with `sharded` every rank of the initialised torch.distributed process group `group`
    (default: the world) calls this together, runs its share, and gets the report one process
    would write (timings aside: each phase's is the slowest rank's, "gather" is the merge).
    With `keep_references` the report's `references` hold every reference block: "p1" by
    (block, part), "p2" by (from_block, to_block), "p3" a list of blocks by anchor subset, and
    for a quantized model "p1_fp" the full-precision twin of each P1 reference.
    `trend` (`layerpeel.peel.verdict.loss_trend` of the run's loss history, when known) lets the
    whole-model verdict say whether the model is still training.
    """
    cfg = cfg or PeelConfig()
    if len(data.fit_ids) < 2:
        raise DataError(
            f"the monitoring set fits on {len(data.fit_ids)} sequence(s); the analysis needs at "
            "least 2 (its line search fits on one and scores another): give it more tokens"
        )
    if sharded and keep_references:
        raise ConfigError("a sharded analysis cannot keep the reference blocks")
    if sharded and cfg.attribute:
        raise ConfigError("a sharded analysis cannot attribute reds (run it in one process)")
    world = World.of(group) if sharded else World()
    a, plan = plan_analysis(model, data, cfg, world.size)
    refs: dict[str, dict[Any, Any]] = {"p1": {}, "p1_fp": {}, "p2": {}, "p3": {}}
    keep: dict[str, dict[Any, Any] | None] = dict(refs) if keep_references else dict.fromkeys(refs)
    if cfg.attribute and not keep_references:  # attribution needs the red rows' references
        keep = {**keep, "p1": {}}
    capture = capture_settings(cfg)
    mine = plan.ranks[world.rank]
    log.info(
        "rank %d of %d: %d of %d units, modelled load %.3g",
        world.rank,
        world.size,
        len(mine),
        len(plan.units),
        plan.load(world.rank),
    )

    def work() -> Shard:
        with ModelState(model):
            t0 = time.perf_counter()
            ctx = build_context(a.view, data, **capture)
            spent = time.perf_counter() - t0
            shard = run_units(ctx, a, cfg, plan, mine, keep, not keep_references,
                              progress and not world.sharded)  # fmt: skip
        shard.timings["capture"] = spent
        return shard

    def signature() -> dict[str, Any]:  # what every rank must agree on
        return {
            "world_size": world.size,
            "launcher_world_size": env_world_size() or world.size,
            "config": cfg.to_dict(),
            "monitoring": data.digest(),
            "model": [type(model).__name__, a.n_blocks, sum(p.numel() for p in model.parameters())],
            "plan": plan.digest(),
        }

    shards = world.gather(work, Shard.reader(plan), signature)
    t0 = time.perf_counter()
    rows, ladder_rows, casc = merge(plan, shards, cfg, a.n_blocks)
    phases = ["capture", "p1"] + ["p2"] * cfg.ladder + ["p3"] * cfg.cascade_on(a.n_blocks)
    timings = {ph: max(s.timings.get(ph, 0.0) for s in shards) for ph in phases}
    if world.sharded:
        timings["gather"] = time.perf_counter() - t0
    p1_refs = keep["p1"]
    if cfg.attribute and p1_refs is not None:
        t0 = time.perf_counter()
        mark_idle(rows, a.thresholds)  # an idle block is red for its work: not attributed
        with ModelState(model):
            attribute(model, a, data, rows, p1_refs, capture)
        timings["attribution"] = time.perf_counter() - t0
    report = make_report(model, data, cfg, a, rows, ladder_rows, casc, timings, trend)
    report.references = refs if keep_references else {}
    return report


def capture_settings(cfg: PeelConfig) -> dict[str, Any]:
    """`build_context`'s settings from `cfg`: for the analysis and attribution's capture alike."""
    return {
        "batch": cfg.batch,
        "budget_bytes": int(cfg.budget_mb * 2**20),
        "score_dtype": cfg.score_dtype,
    }


def make_report(
    model: nn.Module,
    data: MonitoringSet,
    cfg: PeelConfig,
    a: Analysis,
    rows: list[GapRow],
    ladder_rows: list[LadderRow],
    casc: Cascade | None,
    timings: dict[str, float],
    trend: Trend | None = None,
) -> PeelReport:
    """The `PeelReport` of the rows, with what was analysed, on what and with which settings.

    The idle verdicts are settled here, once every block's work is in `rows`, and then the
    whole-model verdict, with each block's weights checked for a never-trained look.
    """
    from layerpeel import __version__

    mark_idle(rows, a.thresholds)
    spikes = {i: weight_spike(b) for i, b in enumerate(a.view.blocks)}
    part_spikes = {
        i: {part: weight_spike(a.view.block_view(b).part_parameters(part)) for part in PART_NAMES}
        for i, b in enumerate(a.view.blocks)
    }
    vocab = int(a.view.unembed_weight().shape[0])
    bigram = bigram_ce(data.part("fit"), data.part("held"), vocab)
    verdict = judge(rows, casc, a.thresholds, spikes, trend, bigram, part_spikes)

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
        verdict=verdict,
    )


def report_is_finite(report: PeelReport) -> bool:
    return all(math.isfinite(r.gap) for r in report.layers)


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
