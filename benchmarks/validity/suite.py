"""The suites (quick and full) and the evaluation of one snapshot: oracle and detectors, cached.

An evaluation's result is a JSON file in `<cache>/results/`, named by the snapshot and a hash
of every setting that changes the oracle, so a rerun with the same settings only prints; a
change to the detectors (`DETECTORS_VERSION`) runs them again, not the oracle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerpeel.arch.table import model_view
from layerpeel.data.monitoring import MonitoringSet, monitoring_set
from layerpeel.io import atomic_write_json
from layerpeel.peel.evidence import loss_trend

from .cases import (
    SUB_BLOCK_FAULTS,
    Case,
    Corpus,
    Spec,
    load_corpus,
    load_losses,
    load_snapshot,
    train_cached,
)
from .detectors import run_detectors
from .oracle import OracleConfig, oracle_gap, sequence_ce

log = logging.getLogger(__name__)

# What the detections record; bump it when a detector changes: a cached result then runs its
# detectors again, not its oracle (4: the verdict judged with the run's loss trend, gain-rate
# and depth; 5: P1's line search scores every 4th position; 6: idleness counts once the model
# beats a bigram table; 7: a sub-block that never trained puts its block behind).
DETECTORS_VERSION = 8


@dataclass(frozen=True)
class Settings:
    """What every evaluation of a suite shares."""

    oracle: OracleConfig = OracleConfig()
    monitoring: int = 256  # monitoring sequences of layerpeel and the data-driven detectors
    held: int = 256  # held-out validation sequences the oracle scores on
    parts: tuple[str, ...] = ("block", "attn", "mlp")  # layerpeel default's P1 parts

    def digest(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def quick_suite() -> tuple[list[Case], Settings]:
    """Tiny byte GPTs (4 blocks, d_model 64, context 64, 300 steps): about 10 minutes."""
    s, n = Spec(), 300
    cases = [
        Case(s, n, keep=(30, 100)),  # along training, and healthy seed 0
        Case(s, n, seed=1),
        Case(s, n, "lr100", 1),
        Case(s, n, "reinit", 0),
        Case(s, n, "reinit", 2, seed=1),
        Case(s, n, "mlp_frozen", 2),
        Case(s, n, quant="ternary"),
        Case(s, n, "bad_scale", 1, quant="ternary"),
    ]
    return cases, Settings(OracleConfig(max_steps=150, eval_every=25))


def full_suite(hf: bool) -> tuple[list[Case], Settings]:
    """Byte GPTs of 4 blocks, 600 steps: every fault at two positions and two seeds.

    Along training in three formats, healthy models of four seeds; with `hf`, small Hugging Face
    Llama and GPT-2 models on GPT-2 BPE as well.
    """
    s, n = Spec(), 600
    along = (25, 75, 200)
    cases = [Case(s, n, quant=q, keep=along) for q in ("none", "ternary", "binary-global")]
    cases += [Case(s, n, quant=q, seed=seed) for q in ("none", "ternary") for seed in (1, 2, 3)]
    for fault in ("lr10", "lr100", "stall", "reinit", "attn_frozen", "mlp_frozen"):
        cases += [Case(s, n, fault, b, seed=seed) for b in (0, 2) for seed in (0, 1)]
    cases += [Case(s, n, "bad_scale", b, "ternary", seed) for b in (1, 2) for seed in (0, 1)]
    cases += [Case(s, n, "reinit", 0, "binary-global", seed) for seed in (0, 1)]
    if hf:
        # A 50,257-word head makes a training step cost about 15 times a byte model's: windows of 32
        # tokens and batches of 8 keep these six runs affordable on a CPU.
        for arch in ("llama", "gpt2"):
            h = Spec(arch=arch, d_model=64, seq_len=32, batch=8, lr=2e-3)
            cases += [Case(h, 300), Case(h, 300, "lr100", 1), Case(h, 300, "reinit", 0)]
    return cases, Settings(OracleConfig(max_steps=300, eval_every=25, patience=3))


def _result_path(cache: Path, case: Case, step: int, settings: Settings) -> Path:
    return cache / "results" / f"{case.name}@{step}-{settings.digest()}.json"


def _monitoring(corpus: Corpus, settings: Settings) -> MonitoringSet:
    """The monitoring set of layerpeel and the data-driven detectors: training windows."""
    picks = np.linspace(0, len(corpus.train_ids) - 1, settings.monitoring).round()
    return monitoring_set(corpus.data.windows(corpus.train_ids[picks.astype(np.int64)]))


def train_job(case: Case, cache: Path) -> str:
    """Train `case` into the cache (a no-op when it is there); for a worker process."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    train_cached(case, cache, load_corpus(case.spec))
    return f"trained {case.name} in {time.perf_counter() - t0:.0f} s"


def evaluate(case: Case, step: int, cache: Path, settings: Settings) -> dict[str, Any]:
    """The oracle and every detector on the snapshot of `case` at `step` (cached).

    A cached result whose detections are of another `DETECTORS_VERSION` keeps its oracle and
    runs its detectors again.
    """
    torch.set_num_threads(1)
    path = _result_path(cache, case, step, settings)
    if not path.exists():
        result = _evaluate(case, step, cache, settings)
    else:
        result = dict(json.loads(path.read_text()))
        if result.get("detectors_version") == DETECTORS_VERSION:
            return result
        corpus = load_corpus(case.spec)
        result["seconds"] = {"oracle": result["seconds"]["oracle"]}
        result.update(
            _detect(case, step, cache, settings, load_snapshot(case, cache, step), corpus)
        )
    atomic_write_json(path, result)
    return result


def _detect(
    case: Case, step: int, cache: Path, settings: Settings, model: torch.nn.Module, corpus: Corpus
) -> dict[str, Any]:
    """Every detector on the snapshot, on the suite's monitoring set, with the run's loss trend."""
    t0 = time.perf_counter()
    trend = loss_trend(load_losses(case, cache, step))
    detections, rows = run_detectors(model, _monitoring(corpus, settings), settings.parts, trend)
    return {
        "detections": [d.to_dict() for d in detections],
        "rows": rows,
        "detectors_version": DETECTORS_VERSION,
        "detector_seconds": time.perf_counter() - t0,
    }


def _evaluate(case: Case, step: int, cache: Path, settings: Settings) -> dict[str, Any]:
    """The oracle and every detector on the snapshot, uncached."""
    corpus = load_corpus(case.spec)
    model = load_snapshot(case, cache, step)
    n = model_view(model).n_blocks
    t0 = time.perf_counter()
    pick = np.linspace(0, len(corpus.val_ids) - 1, settings.held).round().astype(np.int64)
    held = corpus.data.batch(corpus.val_ids[pick])
    base = sequence_ce(model, *held)

    def oracle(block: int, part: str) -> dict[str, Any]:
        run = oracle_gap(
            model, block, part, corpus.data, corpus.train_ids, held, settings.oracle, base
        )
        return run.to_dict()

    runs = [oracle(b, "block") for b in range(n)]
    # the oracle's own noise: the most improvable block again, on other windows
    top = int(np.argmax([r["gain"] for r in runs]))
    again = OracleConfig(
        **{**dataclasses.asdict(settings.oracle), "seed": settings.oracle.seed + 1}
    )
    repeat = oracle_gap(model, top, "block", corpus.data, corpus.train_ids, held, again, base)
    sub = []
    if case.fault in SUB_BLOCK_FAULTS:
        sub = [oracle(b, part) for b in range(n) for part in ("attn", "mlp")]
    t_oracle = time.perf_counter() - t0
    return {
        "name": case.name,
        "step": step,
        "case": dataclasses.asdict(case),
        "settings": dataclasses.asdict(settings),
        "ce": float(base.mean()),
        "oracle": runs,
        "oracle_sub": sub,
        "oracle_repeat": repeat.to_dict(),
        "seconds": {"oracle": t_oracle},
        **_detect(case, step, cache, settings, model, corpus),
    }
