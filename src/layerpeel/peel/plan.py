"""The plan of an analysis: what it settles first, its units of work, their cost, their ranks.

Every analysis runs as a plan: one process is a world of size 1 that runs every unit itself.
A unit is everything that shares set-up work and nothing with other units:
- ("p1", (b,)): every P1 part of block b (they share the block's Gram matrices and gradients);
- ("p2", (l,)): the ladder row of block l (one `BlockProblem` serves every target G_l..G_L);
- ("p3", (a,)): the cascade paths whose first anchor is a (key (): the path with no anchor).
  Paths with different first anchors share no reference block, so no work is repeated. When one
  such group alone would cost more than a rank's fair share, it is split by the second anchor,
  ("p3", (a, b)): those units share only the blocks before a, which each computes again -- some
  repeated work that lets a deep model's cascade spread over many ranks (`p3_cost` counts it).

Costs are counted in *block passes*: one block's forward pass over one monitoring sequence. A
head pass (final norm + unembedding) costs `head` of them, about V / (12 C) for a GPT block of
width C with a vocabulary of V (2 C V against 24 C^2 flops per token). Accumulating the Gram
matrices of one block's least-squares problems costs about `GRAM` block passes per sequence.
docs/scaling.md derives these figures and checks them against measured row times.

The plan is the classic longest-processing-time rule: units by decreasing cost, each to the
least-loaded rank (ties to the lower rank). It depends only on the model's shape, the settings
and the world size, so every rank computes the same plan without talking to the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any

from torch import nn

from layerpeel.arch.table import model_view
from layerpeel.arch.views import ModelView
from layerpeel.data.monitoring import MonitoringSet
from layerpeel.errors import ConfigError
from layerpeel.peel.cascade import anchor_subsets
from layerpeel.peel.config import CASCADE_BLOCKS, PeelConfig
from layerpeel.peel.scoring import Thresholds
from layerpeel.quant import model_scheme

log = logging.getLogger(__name__)

GRAM = 2.0  # block passes per sequence to accumulate one block's Gram matrices (attention + MLP)


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the cost of an analysis depends on."""

    n_blocks: int  # L
    head: float  # a head pass in block passes: V / (12 C) for a GPT block (2 C V vs 24 C^2 flops)
    fit: int  # fit sequences
    held: int  # held-out sequences
    quantized: bool  # a quantized model peels every P1 part twice (quantized, full precision)


@dataclasses.dataclass(frozen=True)
class Unit:
    """One unit of work: its phase, key, modelled cost and (for "p3") its anchor subsets."""

    phase: str  # "p1", "p2" or "p3"
    key: tuple[int, ...]  # (block,) for p1, (from-block,) for p2, the first anchors for p3
    cost: float  # modelled block passes
    subsets: tuple[tuple[int, ...], ...] = ()  # P3 anchor subsets of this unit

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "key": self.key, "cost": self.cost}


def p1_cost(s: Shape, block: int, parts: int, etas: int, search: int, adam_steps: int = 0) -> float:
    """Every P1 part of `block`: Gram set-up, then per part an eta search and a held-out score.

    Each score runs blocks block..L-1 and the head. The Adam solver instead takes `adam_steps`
    steps of a forward and backward (about 3 passes) of the block and its tail.
    """
    tail = (s.n_blocks - block) + s.head
    twice = 2 if s.quantized else 1
    score = min(search, s.fit) - min(search, s.fit) // 2
    if adam_steps:
        return twice * parts * (adam_steps * 3 * tail + s.held * tail)
    setup = GRAM * (s.fit + min(search, s.fit) // 2)
    return setup + twice * parts * (etas * score * tail + s.held * tail)


def p2_cost(s: Shape, block: int) -> float:
    """Ladder row l: one Gram set-up, then for each j >= l the block and blocks j+1..L-1 + head."""
    runs = sum(1 + (s.n_blocks - 1 - j) + s.head for j in range(block, s.n_blocks))
    return GRAM * s.fit + s.held * runs


def p3_cost(s: Shape, subsets: list[tuple[int, ...]]) -> float:
    """Cascade paths: each distinct reference (Gram + a pass on fit and held) and a head per path."""
    stages = set()
    for subset in subsets:
        for i in range(s.n_blocks):
            nxt = [a for a in subset if a >= i + 1]
            stages.add((i, tuple(a for a in subset if not nxt or a <= nxt[0])))
    return len(stages) * (GRAM * s.fit + s.fit + s.held) + len(subsets) * s.held * s.head


def units(
    s: Shape,
    blocks: tuple[int, ...],
    cfg: PeelConfig,
    cap: int | None,
    world_size: int = 1,
) -> list[Unit]:
    """Every unit of an analysis with `cfg` (a `PeelConfig`), in the order a single process runs.

    Cascade groups costlier than 1 / `world_size` of the whole are split by their second anchor.
    """
    steps = cfg.adam_steps if cfg.solver == "adam" else 0
    out = [
        Unit("p1", (b,), p1_cost(s, b, len(cfg.parts), len(cfg.etas), cfg.search_sequences, steps))
        for b in blocks
    ]
    if cfg.ladder:
        out += [Unit("p2", (i,), p2_cost(s, i)) for i in range(s.n_blocks)]
    if cfg.cascade_on(s.n_blocks):
        groups: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for subset in anchor_subsets(s.n_blocks, cap):
            groups.setdefault(subset[:1], []).append(subset)
        p3 = [Unit("p3", k, p3_cost(s, g), tuple(g)) for k, g in groups.items()]
        share = (sum(u.cost for u in out) + sum(u.cost for u in p3)) / world_size
        for unit in p3:
            if unit.cost <= share or len(unit.subsets) == 1:
                out.append(unit)
                continue
            parts: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
            for subset in unit.subsets:
                parts.setdefault(subset[:2], []).append(subset)
            out += [Unit("p3", k, p3_cost(s, g), tuple(g)) for k, g in parts.items()]
    return out


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which rank runs which unit (indices into `units`), and each rank's modelled load."""

    units: tuple[Unit, ...]
    ranks: tuple[tuple[int, ...], ...]  # unit indices per rank, in the single-process order

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def load(self, rank: int) -> float:
        return sum(self.units[i].cost for i in self.ranks[rank])

    @property
    def balance(self) -> float:
        """Largest load / mean load (1.0 = perfect)."""
        loads = [self.load(r) for r in range(self.world_size)]
        mean = sum(loads) / len(loads)
        return max(loads) / mean if mean > 0 else 1.0

    def digest(self) -> str:
        """A short hash of the plan, compared between ranks before their results are merged."""
        text = json.dumps([[u.to_dict() for u in self.units], self.ranks], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_plan(work: list[Unit], world_size: int) -> Plan:
    """Longest processing time first: each unit, costliest first, to the least-loaded rank."""
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    loads = [0.0] * world_size
    mine: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(work)), key=lambda i: (-work[i].cost, i)):
        r = min(range(world_size), key=lambda r: (loads[r], r))
        loads[r] += work[i].cost
        mine[r].append(i)
    return Plan(tuple(work), tuple(tuple(sorted(m)) for m in mine))


@dataclasses.dataclass
class Analysis:
    """What every analysis of one model settles before it peels: view, quantizer, blocks."""

    view: ModelView  # where the model's blocks, norms and head are
    scheme: str | None  # the model's quantizer ("ternary", "Q4_1", ...) or None
    blocks: tuple[int, ...]  # P1 blocks
    cap: int | None  # P3 anchor subset size cap
    cfg: PeelConfig  # the settings
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
    deep = n > CASCADE_BLOCKS
    cap = cfg.max_anchors if cfg.max_anchors is not None else (2 if deep else None)
    if cfg.cascade is None and deep:
        log.info(
            "P3 cascade off for %d blocks (> %d): on a deep model its paths are worse than a "
            "uniform guess and cost the most; --cascade runs it",
            n,
            CASCADE_BLOCKS,
        )
    return Analysis(view, scheme, blocks, cap, cfg, Thresholds.of(cfg))


def shape_of(a: Analysis, data: MonitoringSet) -> Shape:
    """The cost model's view of an analysis; the head as a GPT block would weigh it."""
    vocab, width = a.view.unembed_weight().shape
    return Shape(
        n_blocks=a.n_blocks,
        head=int(vocab) / (12.0 * int(width)),
        fit=len(data.fit_ids),
        held=len(data.held_ids),
        quantized=a.scheme is not None,
    )


def plan_analysis(
    model: nn.Module, data: MonitoringSet, cfg: PeelConfig, world_size: int = 1
) -> tuple[Analysis, Plan]:
    """What analysing `model` with `cfg` settles, and its plan on `world_size` ranks."""
    a = prepare(model, cfg)
    return a, make_plan(units(shape_of(a, data), a.blocks, cfg, a.cap, world_size), world_size)
