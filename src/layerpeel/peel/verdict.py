"""The whole-model verdict: one answer to "can training still lower the loss, and where?".

A per-layer table answers "which row has the largest gap"; a user acts on a different question,
and the answers to it are kept apart [design, docs/peeling.md]:

- *still training*: the loss is still falling (the run's own history), the model does not beat
  a bigram table of its data, most blocks still look like their initialization, or every block
  can still lower held-out CE by about as much as the others: keep training, no one block is to
  blame;
- *block behind*: a block does no work next to the others (once the model beats a bigram table;
  before, work is uneven while every block is still learning), or its weights still look like
  their random initialization (never trained) while most blocks' do not, or those of its
  attention or its MLP do while that sub-block of most blocks trained;
- *no block improvable*: no gap above the yellow line and no falling loss.

Apart from these answers the verdict names the block *most likely to gain from more training*:
of the blocks not behind, the one that turns the residual stream most (`gap.block_influence`),
unless most blocks still look like their initialization.
Training each block alone, the block that wins most is that one in 25 of 26 fault cases whose
most improvable block is clear (docs/validation.md), where P1's gaps order the blocks poorly.
A block whose P1 gap clears every other block's interval is reported as such, and only once the
model has stopped training as a whole.

Every rule is a comparison that can come out either way. The P3 cascade enters only through
YES-0 (a network fitted block by block onto the targets, no anchors): its CE below the trained
CE is the paper's "ineffective training". YES-(L-1) is not used: with every block as an anchor
the trained blocks are among the candidates, so it cannot be worse than the trained model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from layerpeel.peel.evidence import UNTRAINED_SPIKE, Trend
from layerpeel.peel.rows import Cascade, GapRow
from layerpeel.peel.scoring import Thresholds, severity
from layerpeel.verdict import Verdict

QUESTION = "Can more training still lower this model's held-out loss, and is one block to blame?"

PART_NAMES = {"attn": "attention", "mlp": "MLP"}  # sub-blocks whose weights are checked apart


class Answer(StrEnum):
    """The three answers a whole-model verdict keeps apart."""

    STILL_TRAINING = "still training"
    BLOCK_BEHIND = "block behind"
    NONE_IMPROVABLE = "no block improvable"


@dataclass(frozen=True)
class BlockEvidence:
    """What the analysis measured of one whole block."""

    block: int
    gap: float  # P1 gap, nats/token
    ci_low: float
    ci_high: float
    idle: bool = False  # does no work next to its peers (scoring.Thresholds.is_idle)
    work_ratio: float | None = None  # its work over the other blocks' median
    spike: float | None = None  # weight_spike; below UNTRAINED_SPIKE: never trained
    part_spikes: dict[str, float | None] = field(default_factory=dict)  # "attn" / "mlp" -> spike
    influence: float | None = None  # gap.block_influence: how much it turns the residual stream

    @property
    def untrained(self) -> bool:
        return self.spike is not None and self.spike < UNTRAINED_SPIKE

    def untrained_part(self, part: str) -> bool:
        spike = self.part_spikes.get(part)
        return spike is not None and spike < UNTRAINED_SPIKE


@dataclass(frozen=True)
class WholeVerdict:
    """The whole-model verdict: its colour, the answers that hold, the sentence, the blocks."""

    colour: Verdict
    answers: tuple[Answer, ...]
    sentence: str
    behind: tuple[int, ...] = ()  # blocks behind the others (act on these first)
    improvable: tuple[int, ...] = ()  # blocks whose gap interval clears the yellow line
    trend: Trend | None = None
    reasons: tuple[str, ...] = field(default=())
    ce_trained: float | None = None  # the trained model's held-out CE
    ce_bigram: float | None = None  # held-out CE of a bigram table of the fit tokens
    spikes: dict[int, float | None] = field(default_factory=dict)  # weight_spike per block
    # (block, "attn" / "mlp"): a sub-block that never trained while most blocks' did
    behind_parts: tuple[tuple[int, str], ...] = ()
    part_spikes: dict[int, dict[str, float | None]] = field(default_factory=dict)
    # the block most likely to gain from more training (largest influence, not behind)
    most_improvable: int | None = None
    influence: dict[int, float] = field(default_factory=dict)  # gap.block_influence per block

    @property
    def order(self) -> tuple[int, ...]:
        """The blocks by how much more training is likely to gain in each, most first.

        Empty when no block is named most likely to gain (see `whole_model_verdict`).
        """
        if self.most_improvable is None:
            return ()
        return tuple(sorted(self.influence, key=lambda b: -self.influence[b]))

    @property
    def question(self) -> str:
        return QUESTION

    def to_dict(self) -> dict[str, Any]:
        return {
            "colour": self.colour.value,
            "answers": [a.value for a in self.answers],
            "sentence": self.sentence,
            "question": QUESTION,
            "behind": list(self.behind),
            "improvable": list(self.improvable),
            "trend": None if self.trend is None else self.trend.to_dict(),
            "reasons": list(self.reasons),
            "ce_trained": self.ce_trained,
            "ce_bigram": self.ce_bigram,
            "weight_spikes": {str(b): v for b, v in self.spikes.items()},
            "behind_parts": [[b, part] for b, part in self.behind_parts],
            "part_spikes": {str(b): dict(v) for b, v in self.part_spikes.items()},
            "most_improvable": self.most_improvable,
            "influence": {str(b): v for b, v in self.influence.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WholeVerdict:
        trend = data.get("trend")
        return cls(
            colour=Verdict(data["colour"]),
            answers=tuple(Answer(a) for a in data.get("answers", [])),
            sentence=str(data.get("sentence", "")),
            behind=tuple(int(b) for b in data.get("behind", [])),
            improvable=tuple(int(b) for b in data.get("improvable", [])),
            trend=None if trend is None else Trend(**trend),
            reasons=tuple(str(r) for r in data.get("reasons", [])),
            ce_trained=data.get("ce_trained"),
            ce_bigram=data.get("ce_bigram"),
            spikes={int(b): v for b, v in data.get("weight_spikes", {}).items()},
            behind_parts=tuple((int(b), str(part)) for b, part in data.get("behind_parts", [])),
            part_spikes={int(b): dict(v) for b, v in data.get("part_spikes", {}).items()},
            most_improvable=data.get("most_improvable"),
            influence={int(b): float(v) for b, v in data.get("influence", {}).items()},
        )


def _standout(blocks: Sequence[BlockEvidence], thresholds: Thresholds) -> int | None:
    """The block whose gap interval lies wholly above every other block's, and past yellow."""
    if len(blocks) < 2:
        return None
    top = max(blocks, key=lambda b: b.gap)
    rest = max(b.ci_high for b in blocks if b is not top)
    return top.block if top.ci_low > rest and top.ci_low > thresholds.yellow else None


def whole_model_verdict(
    blocks: Sequence[BlockEvidence],
    thresholds: Thresholds | None = None,
    trend: Trend | None = None,
    ce_trained: float | None = None,
    yes0: float | None = None,
    ce_bigram: float | None = None,
    spikes: dict[int, float | None] | None = None,
) -> WholeVerdict:
    """Combine the per-block evidence, the loss trend and YES-0 into one verdict.

    Red: a block is behind (idle, or never trained while most blocks did), or the trained CE is
    above YES-0. Yellow: the model is still training -- the loss falls by more than the red
    line per doubling of steps; or the trained CE does not beat a bigram table of the fit tokens
    by more than the red line; or at least half the blocks still look like their initialization,
    or every block is idle, or at least half have gap intervals above the yellow line with none
    standing out -- or some gap is above the yellow line. Green otherwise: no block improvable
    and no falling loss. Apart from the colour, it names the block most likely to gain from more
    training (`_most_improvable`).
    """
    t = thresholds or Thresholds()
    reasons: list[str] = []
    improvable = tuple(b.block for b in blocks if b.ci_low > t.yellow)
    idle = [b.block for b in blocks if b.idle]
    untrained = [b.block for b in blocks if b.untrained]
    # most blocks still at their initialization: the whole model is, not one block behind
    barely = len(blocks) >= 2 and len(untrained) * 2 >= len(blocks)
    if barely:
        reasons.append(
            f"{len(untrained)} of {len(blocks)} blocks' weights still look like their random "
            "initialization"
        )
        untrained = []
    # A sub-block whose weights never trained while the same sub-block of most blocks did: a
    # frozen attention or MLP, which leaves its block's work and its other weights trained
    # (docs/validation.md: trained sub-blocks grow outliers of 1.7-3.4 by step 30, one frozen
    # at its initialization stays at 1.0).
    fresh_parts: list[tuple[int, str]] = []
    for part in PART_NAMES:
        fresh = [b.block for b in blocks if b.untrained_part(part)]
        if not barely and len(fresh) * 2 < len(blocks):
            fresh_parts += [(b, part) for b in fresh if b not in untrained]
    # Behind means idle or never trained; a P1 gap that stands out is reported, not called
    # behind (docs/validation.md: a planted fault seldom makes its block the most improvable).
    standout = _standout(blocks, t)
    above_bigram = (
        ce_trained is not None and ce_bigram is not None and ce_trained > ce_bigram - t.red
    )
    # Before the model beats a bigram table its work sits in the blocks that learned the pair
    # statistics and the others look idle while every block is still learning
    # (docs/validation.md: healthy runs at steps 25 and 75), so idleness says nothing yet;
    # weights still at their initialization do.
    if above_bigram:
        idle = []
    # Every block idle: none is behind the others; the model has learned nothing a block does.
    idle_all = len(blocks) >= 2 and len(idle) == len(blocks)
    if idle_all:
        reasons.append(f"none of the {len(blocks)} blocks does measurable work")
        idle = []
    behind = tuple(dict.fromkeys([*untrained, *(b for b, _ in fresh_parts), *idle]))
    for b in untrained:
        reasons.append(f"block {b}'s weights still look like their random initialization")
    for b, part in fresh_parts:
        name = PART_NAMES[part]
        reasons.append(
            f"block {b}'s {name} weights still look like their random initialization, while "
            f"the other blocks' {name} trained"
        )
    for b in idle:
        if b not in untrained:
            reasons.append(f"block {b} does almost no work next to the other blocks")
    falling = trend is not None and trend.falling_by > t.red
    # While the whole model still trains, P1's gaps order the blocks against what training each
    # alone wins (docs/validation.md, along training: P1 grows with depth, the oracle shrinks),
    # so a gap that stands out then names no block.
    named = None if falling or above_bigram or barely else standout
    if named is not None:
        top = next(b for b in blocks if b.block == named)
        reasons.append(
            f"block {named}'s P1 reference gains the most by a clear margin "
            f"(gap {top.gap:+.3f} nats/token, interval above every other block's)"
        )
    everywhere = len(blocks) >= 2 and len(improvable) * 2 >= len(blocks) and named is None
    if above_bigram:
        reasons.append(
            f"the model's held-out CE {ce_trained:.3f} does not clearly beat a bigram table of the "
            f"fit tokens ({ce_bigram:.3f}), which uses no block at all"
        )
    still = falling or everywhere or above_bigram or barely or idle_all
    if falling:
        assert trend is not None
        reasons.append(
            f"the training loss falls {trend.drop_per_doubling:.3f} nats/token per doubling of "
            f"steps (fitted up to step {trend.step})"
        )
    if everywhere:
        reasons.append(
            f"{len(improvable)} of {len(blocks)} blocks can each still lower held-out CE"
            + (", none clearly more than the others" if standout is None else "")
        )
    worse_than_yes0 = (
        ce_trained is not None and yes0 is not None and math.isfinite(yes0) and ce_trained > yes0
    )
    if worse_than_yes0:
        reasons.append(
            f"a network fitted block by block without anchors reaches lower held-out CE "
            f"(YES-0 {yes0:.3f}) than the trained model ({ce_trained:.3f})"
        )
    answers: list[Answer] = []
    if still:
        answers.append(Answer.STILL_TRAINING)
    if behind:
        answers.append(Answer.BLOCK_BEHIND)
    if not answers and not improvable and not any(b.gap > t.yellow for b in blocks):
        answers.append(Answer.NONE_IMPROVABLE)
    if behind or worse_than_yes0:
        colour = Verdict.RED
    elif answers == [Answer.NONE_IMPROVABLE]:
        colour = Verdict.GREEN
    else:
        colour = Verdict.YELLOW
    influence = {b.block: b.influence for b in blocks if b.influence is not None}
    # A block at its initialization turns the stream by nothing whatever training it would win
    # (docs/validation.md, "Where the influence fails"): with most blocks there, name none.
    most = None if barely else _most_improvable(influence, behind)
    if most is not None and colour is not Verdict.GREEN:
        others = [v for b, v in influence.items() if b != most]
        reasons.append(
            f"more training is likely to gain most in block {most}, which turns the residual "
            f"stream most (influence {influence[most]:.3f}, next {max(others):.3f})"
        )
    return WholeVerdict(
        colour=colour,
        answers=tuple(answers),
        sentence=_sentence(colour, answers, behind, reasons),
        behind=behind,
        improvable=improvable,
        trend=trend,
        reasons=tuple(reasons),
        ce_trained=ce_trained,
        ce_bigram=ce_bigram,
        spikes=dict(spikes or {}),
        behind_parts=tuple(fresh_parts),
        part_spikes={b.block: dict(b.part_spikes) for b in blocks if b.part_spikes},
        most_improvable=most,
        influence=influence,
    )


def _most_improvable(influence: dict[int, float], behind: tuple[int, ...]) -> int | None:
    """The block not behind that turns the residual stream most; None with fewer than 2 known."""
    if len(influence) < 2:
        return None
    candidates = [b for b in influence if b not in behind]
    return max(candidates, key=lambda b: influence[b]) if candidates else None


def _sentence(
    colour: Verdict, answers: list[Answer], behind: tuple[int, ...], reasons: list[str]
) -> str:
    """One plain sentence: what to do, then why."""
    parts = []
    if Answer.BLOCK_BEHIND in answers:
        names = ", ".join(str(b) for b in behind)
        parts.append(f"block{'s' if len(behind) > 1 else ''} {names} behind the others")
    if Answer.STILL_TRAINING in answers:
        parts.append("the whole model is still training: keep training")
    if Answer.NONE_IMPROVABLE in answers:
        parts.append("no block is improvable by re-optimizing it alone")
    if not parts:
        parts.append(
            "some blocks can still gain and none is behind"
            if colour is Verdict.YELLOW
            else "the trained model is above YES-0"
        )
    head = "; ".join(parts)
    why = "; ".join(reasons)
    return f"{head[0].upper()}{head[1:]}" + (f" ({why})." if why else ".")


def block_evidence(
    rows: Sequence[GapRow],
    spikes: dict[int, float | None] | None = None,
    part_spikes: dict[int, dict[str, float | None]] | None = None,
) -> list[BlockEvidence]:
    """One `BlockEvidence` per block with P1 rows: its whole-block row, else its largest part."""
    by_block: dict[int, GapRow] = {}
    for r in rows:
        cur = by_block.get(r.block)
        if cur is None or (cur.part != "block" and (r.part == "block" or r.gap > cur.gap)):
            by_block[r.block] = r
    return [
        BlockEvidence(
            block=b,
            gap=r.gap,
            ci_low=r.ci_low,
            ci_high=r.ci_high,
            idle=bool(r.idle),
            work_ratio=r.work_ratio,
            spike=(spikes or {}).get(b),
            part_spikes=dict((part_spikes or {}).get(b, {})),
            influence=r.influence if r.part == "block" else None,
        )
        for b, r in sorted(by_block.items())
    ]


def judge(
    rows: Sequence[GapRow],
    cascade: Cascade | None,
    thresholds: Thresholds,
    spikes: dict[int, float | None] | None = None,
    trend: Trend | None = None,
    ce_bigram: float | None = None,
    part_spikes: dict[int, dict[str, float | None]] | None = None,
) -> WholeVerdict:
    """The whole-model verdict of a report's rows and cascade (see `whole_model_verdict`)."""
    ce_trained = cascade.ce_trained if cascade is not None else None
    if ce_trained is None and rows:
        ce_trained = rows[0].ce_trained
    return whole_model_verdict(
        block_evidence(rows, spikes, part_spikes),
        thresholds,
        trend,
        ce_trained=ce_trained,
        yes0=None if cascade is None else cascade.yes0,
        ce_bigram=ce_bigram,
        spikes=spikes,
    )


def ranking(rows: Sequence[GapRow], verdict: WholeVerdict, thresholds: Thresholds) -> list[GapRow]:
    """Rows in the order to look at them: blocks behind, red rows, then by `WholeVerdict.order`.

    Blocks behind come first, and in a block behind because one sub-block never trained, that
    sub-block's row leads it; then every red row (a reference that already wins past the red
    line); then the blocks most likely to gain from more training first. Ties (blocks without
    an influence, rows of one block) go by `scoring.severity` (verdict, then how near red).
    """
    behind = {b: i for i, b in enumerate(verdict.behind)}
    parts = set(verdict.behind_parts)
    order = {b: i for i, b in enumerate(verdict.order)}

    def key(r: GapRow) -> tuple[int, int, int, int, int, int, float]:
        level, alarm = severity(r, thresholds)
        fresh = int((r.block, r.part) in parts)
        red = int(level == Verdict.RED.rank)
        place = -order.get(r.block, len(order))
        return (int(r.block in behind), -behind.get(r.block, 0), fresh, red, place, level, alarm)

    return sorted(rows, key=key, reverse=True)
