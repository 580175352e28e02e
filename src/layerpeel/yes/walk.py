"""The computation behind YES bounds: every J(sigma) by one depth-first walk over anchor prefixes."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from layerpeel.yes.basis import KINDS, Basis, tilde

logger = logging.getLogger(__name__)

Subset = tuple[int, ...]  # increasing 1-based indices of the hidden layers used as anchors


class AnchorWalk:
    """All J(sigma) for fixed data X (n, N), Y (m, N): a depth-first walk over anchor prefixes.

    A node is one input representation of one layer; all subsets that share the targets of the
    layers before it share the node, its factorization, and one stacked product onto every
    target it can fit next. The X factorization and YES-0 do not depend on the net: done once.
    Every tensor is float64 on X's device; the walk runs there.
    """

    def __init__(self, x: Tensor, y: Tensor, n_layers: int, bias: bool) -> None:
        self.x, self.y, self.n_layers, self.bias = x, y, n_layers, bias
        self.m, self.n_samples = y.shape
        self.yy = float(y.square().sum())
        self.y_live = y[(y != 0).any(1)]  # (m', N): zero rows of Y are fitted exactly
        self.x_basis = Basis(tilde(x, bias))
        self._yes0: float | None = None
        # Per run: the cap, the stacked targets, their sizes and offsets, the results.
        self.cap = 0
        self.targets = y
        self.sizes: list[int] = []
        self.offsets: list[int] = []
        self.losses: dict[Subset, float] = {}
        self.stats: dict[str, int] = {}

    @property
    def device(self) -> torch.device:
        """The device the walk runs on (X's)."""
        return self.x.device

    @property
    def yes0(self) -> float:
        """YES-0, the loss of the path that fits every layer onto Y (computed once)."""
        if self._yes0 is None:
            self._yes0 = self._yes0_path()
        return self._yes0

    def _yes0_path(self) -> float:
        """YES-0: fit every layer onto Y in turn, from X.

        When a layer's ReLU changes nothing (its fit Z = Y pinv(B~) B~ has no negative entry),
        the path has converged: H~ = [Z; 1] spans a subspace of B~'s rows that holds Z's rows, so
        fitting Y from it gives Z again, exactly, in every later layer and in the linear last one.
        The loss is then ||Y - Z||^2 / N, with no further factorization.
        """
        basis = self.x_basis
        for _ in range(1, self.n_layers):
            z = basis.project(self.y)  # (m, N)
            if float(z.min()) >= 0.0:
                return float((self.y - z).square().sum()) / self.n_samples
            basis = Basis(tilde(z.clamp_(min=0.0), self.bias))
        return basis.sse(self.y, self.yy) / self.n_samples

    def run(self, hidden: list[Tensor], cap: int) -> tuple[dict[Subset, float], dict[str, int]]:
        """J(sigma) for every subset of at most `cap` anchors, and the work counts."""
        self.cap = cap
        self.losses = {}
        self.stats = dict.fromkeys(["subsets", "factorizations", "projections", *KINDS], 0)
        if cap > 0:
            self.stack(hidden)
            self._descend(self.x_basis, 1, (), None)
        self.losses[()] = self.yes0
        self.stats["subsets"] = len(self.losses)
        logger.debug("YES work: %s", self.stats)
        return self.losses, self.stats

    def stack(self, hidden: list[Tensor]) -> None:
        """Stack the live rows of the targets G_1..G_{L-1}, Y into `targets`, in layer order.

        Dead units (all-zero rows) of a target give all-zero rows of every fit onto it, which
        change no row space: each target keeps only its live rows. A node's targets are then
        one contiguous slice of the stack.
        """
        live = [t[(t != 0).any(1)] for t in hidden] + [self.y_live]
        self.sizes = [t.shape[0] for t in live]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes) + 1)]
        self.targets = torch.cat(live)  # (sum of sizes, N)

    def choices(self, layer: int, subset: Subset, forced: int | None) -> list[int]:
        """The targets layer `layer` may fit, in increasing order (see `_descend`)."""
        n_layers = self.n_layers
        if forced is not None:
            choices = [forced]
        elif len(subset) < self.cap:
            choices = list(range(layer, n_layers + 1))  # G_layer..G_{L-1}, Y
        else:
            choices = [n_layers]
        if layer == 1:  # the all-onto-Y path is YES-0, already known
            choices = [c for c in choices if c != n_layers]
        return choices

    def _descend(self, basis: Basis, layer: int, subset: Subset, forced: int | None) -> None:
        """Fit `layer` from the input factored in `basis` onto each target it may take, recurse.

        `forced` is the target this layer must fit (an anchor not reached yet, or Y = L); None
        means the layer before reached its anchor, so the target is free: a later anchor or Y.
        """
        n_layers = self.n_layers
        if layer == n_layers:  # only Y is left: the loss needs no predictions
            self.stats["projections"] += 1
            self.losses[subset] = basis.sse(self.y_live, self.yy) / self.n_samples
            return
        choices = self.choices(layer, subset, forced)
        lo, hi = self.offsets[choices[0] - 1], self.offsets[choices[-1]]
        coef = basis.coef(self.targets[lo:hi])  # (rows of the chosen targets, q): one product
        self.stats["projections"] += len(choices)
        start = 0
        for target in choices:
            stop = start + self.sizes[target - 1]
            child = self._child(basis, coef[start:stop])
            new = subset + (target,) if forced is None and target < n_layers else subset
            self._descend(child, layer + 1, new, None if target == layer else target)
            start = stop

    def _child(self, basis: Basis, coef: Tensor) -> Basis:
        """The factored H~ = [ReLU(coef @ basis.rows); 1] of a fitted layer's output, coef (c, q)."""
        rows = coef.shape[0]
        h = coef.new_empty(rows + int(self.bias), self.n_samples)  # (c + bias, N)
        out = h[:rows]  # a contiguous view: the product and the ReLU are written in place
        torch.mm(coef, basis.rows, out=out)
        out.clamp_(min=0.0)
        if self.bias:
            h[rows] = 1.0
        child = Basis(h)
        self.stats["factorizations"] += 1
        self.stats[child.kind] += 1
        return child
