"""What every bound needs, computed once per analysis: residual streams, trained CE, gradients."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from layerpeel.arch.capture import DEFAULT_BUDGET_BYTES, residual_stream
from layerpeel.arch.views import ModelView
from layerpeel.data.monitoring import MonitoringSet
from layerpeel.peel.scoring import sequence_ce

GRAD_TOKENS = 1024  # tokens per backward pass: bounds the activations and logits kept for it


@dataclass
class PeelContext:
    """Residual streams G_0..G_L on the fit and held-out parts, and the trained model's scores."""

    view: ModelView
    mset: MonitoringSet
    fit: list[torch.Tensor]  # G_l on the fit part, each (S_fit, T, C)
    held: list[torch.Tensor]  # G_l on the held-out part, each (S_held, T, C)
    fit_targets: torch.Tensor  # (S_fit, T)
    held_targets: torch.Tensor  # (S_held, T)
    ce_trained_held: torch.Tensor  # per held-out sequence, (S_held,)
    batch: int = 16
    score_dtype: str = "float32"  # precision of the blocks when scoring a tail (see sequence_ce)
    _grads: list[torch.Tensor] | None = None
    _baselines: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def n_blocks(self) -> int:
        return self.view.n_blocks

    def held_ce(self, start: int, x: torch.Tensor, replace: dict) -> torch.Tensor:
        return sequence_ce(
            self.view, start, x, self.held_targets, replace, self.batch, self.score_dtype
        )

    def trained_held_ce(self, start: int) -> torch.Tensor:
        """The trained model's held-out CE per sequence, scored as a tail from block `start` is.

        In float32 this is `ce_trained_held` itself (the tail reproduces it); in a lower scoring
        precision the trained tail is run the same way, so a gap compares like with like.
        """
        if self.score_dtype == "float32":
            return self.ce_trained_held
        if start not in self._baselines:
            self._baselines[start] = self.held_ce(start, self.held[start], {})
        return self._baselines[start]

    def grads(self) -> list[torch.Tensor]:
        """dCE/dG_l on the fit part for l = 1..L (index l-1), from one backward pass per batch.

        Uses `torch.autograd.grad`, so no parameter's `.grad` is touched.
        """
        if self._grads is None:
            out: list[list[torch.Tensor]] = [[] for _ in range(self.n_blocks)]
            n_tok = self.fit_targets.numel()
            step = max(1, min(self.batch, GRAD_TOKENS // max(self.fit_targets.shape[1], 1)))
            for s in range(0, self.fit[0].shape[0], step):
                with torch.enable_grad():
                    x = self.fit[0][s : s + step].clone().requires_grad_(True)
                    outs = []
                    for block in self.view.blocks:
                        x = self.view.run_block(block, x)
                        outs.append(x)
                    logits = self.view.head(x)
                    loss = (
                        F.cross_entropy(
                            logits.flatten(0, 1).float(),
                            self.fit_targets[s : s + step].reshape(-1),
                            reduction="sum",
                        )
                        / n_tok
                    )
                    gs = torch.autograd.grad(loss, outs)
                for i, g in enumerate(gs):
                    out[i].append(g.detach())
            self._grads = [torch.cat(g, 0) for g in out]
        return self._grads


@torch.no_grad()
def build_context(
    view: ModelView,
    mset: MonitoringSet,
    batch: int = 16,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    score_dtype: str = "float32",
) -> PeelContext:
    fit = residual_stream(view, mset.inputs("fit"), batch, budget_bytes)
    held = residual_stream(view, mset.inputs("held"), batch, budget_bytes)
    device = fit[0].device  # the model's: every tensor of the analysis lives there
    held_targets = mset.targets("held").to(device)
    fit_targets = mset.targets("fit").to(device)
    ce = sequence_ce(view, view.n_blocks, held[-1], held_targets, None, batch)
    return PeelContext(view, mset, fit, held, fit_targets, held_targets, ce, batch, score_dtype)
