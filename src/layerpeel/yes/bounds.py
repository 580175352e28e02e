"""YES training bounds for MLPs: achievable reference losses from least-squares layer projections."""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from layerpeel.errors import LayerpeelError
from layerpeel.models.mlp import MLP, MLPConfig
from layerpeel.yes.basis import Basis, tilde
from layerpeel.yes.walk import AnchorWalk, Subset

logger = logging.getLogger(__name__)

VERDICTS = ("red", "yellow", "green")
VERDICT_WORDS = {"red": "ineffective training", "yellow": "caution", "green": "effective training"}


class YesInputError(LayerpeelError):
    """Data that YES bounds cannot be computed on (shapes, widths, NaN/Inf, empty lists)."""


def to_db(value: float) -> float:
    """A loss in decibels, 10*log10(value), floored at -300 dB for a loss of exactly 0."""
    return 10.0 * math.log10(max(value, 1e-30))


def verdict(train_loss: float, yes0: float, yes_last: float) -> str:
    """The YES colour: red above YES-0, green at or below YES-(L-1), yellow in between."""
    if train_loss > yes0:
        return "red"
    if train_loss <= yes_last:
        return "green"
    return "yellow"


# ----------------------------------------------------------------------------- inputs


def _array(a: Any, name: str, device: torch.device) -> Tensor:
    """A float64 tensor on `device`: a view of a 2-D array or tensor, or a copy; checked finite."""
    try:
        if not isinstance(a, torch.Tensor):
            a = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
        t = a.detach().to(device=device, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise YesInputError(f"{name} must be a numeric array or tensor: {exc}") from None
    if t.ndim != 2:
        raise YesInputError(f"{name} must be 2-D (features x samples), got shape {tuple(t.shape)}")
    # A sum is finite when every entry is (the converse fails only on overflow: check entries).
    if not (bool(t.sum().isfinite()) or bool(t.isfinite().all())):
        raise YesInputError(f"{name} contains NaN or Inf")
    return t


def _device(*arrays: Any) -> torch.device:
    """The device of the first torch tensor among `arrays`; the CPU if there is none."""
    return next((a.device for a in arrays if isinstance(a, torch.Tensor)), torch.device("cpu"))


def _check_xy(x: Any, y: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    """Validate and convert X (n, N) and Y (m, N) to float64 on `device`; warn when N < m + 1."""
    xt, yt = _array(x, "X", device), _array(y, "Y", device)
    (m, n_samples), n_x = yt.shape, xt.shape[1]
    if n_x != n_samples:
        raise YesInputError(f"X has {n_x} samples (columns) but Y has {n_samples}")
    if n_samples < m + 1:
        warnings.warn(
            f"only N={n_samples} samples for width m={m}: with fewer than m+1 samples the "
            "least-squares fits are underdetermined; layerpeel uses the minimum-norm (pinv) "
            "solutions and the bounds are easy to reach",
            UserWarning,
            stacklevel=3,
        )
    return xt, yt


def _hidden_list(hidden: Sequence[Any]) -> list[Any]:
    """`hidden` as a list, checked to be a non-empty sequence (not one array) of outputs."""
    if isinstance(hidden, (torch.Tensor, np.ndarray)) or not isinstance(hidden, Sequence):
        raise YesInputError("hidden must be a list of the L-1 hidden outputs, each (m, N)")
    if len(hidden) == 0:
        raise YesInputError("hidden is empty: YES needs the L-1 >= 1 hidden outputs of the net")
    return list(hidden)


def _check_hidden(hidden: list[Any], m: int, n_samples: int, device: torch.device) -> list[Tensor]:
    """Validate and convert the L-1 hidden outputs, each (m, N), to float64 on `device`."""
    hs = []
    for i, h in enumerate(hidden):
        ht = _array(h, f"hidden[{i}]", device)
        if ht.shape[1] != n_samples:
            hint = " (pass h.T: columns are samples)" if ht.shape[0] == n_samples else ""
            raise YesInputError(
                f"hidden[{i}] has shape {tuple(ht.shape)}, expected ({m}, {n_samples}){hint}"
            )
        if ht.shape[0] != m:
            raise YesInputError(
                f"hidden layer {i + 1} has width {ht.shape[0]} but the output width is m={m}: "
                "YES needs every hidden width equal to m, because each layer is fitted onto a "
                "hidden output or onto Y, and only then is the reference a network of the "
                "trained shape"
            )
        hs.append(ht)
    return hs


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class YesBounds:
    """YES bounds of one check: YES-0, YES-1..YES-(L-1), every J(sigma), and the best paths.

    `yes[k-1]` is YES-k, already the minimum with YES-(k-1). `best_subsets[k]` is the anchor
    subset whose network reaches YES-k (it may hold fewer than k anchors). With `max_anchors` = c
    below L-1, YES-k for k > c repeats YES-c.
    """

    yes0: float  # YES-0: every layer projected onto Y
    yes: list[float]  # YES-1..YES-(L-1), non-increasing
    losses: dict[Subset, float]  # J(sigma) of every evaluated subset; () is the YES-0 path
    best_subsets: list[Subset]  # best_subsets[k] reaches YES-k, k = 0..L-1
    max_anchors: int  # the largest subset size evaluated
    # subsets, factorizations, projections, the count of each path (gram, qr, eig, svd)
    stats: dict[str, int]
    bias: bool = True
    # X, Y and the hidden outputs, float64 on the device the walk ran on
    _data: tuple[Tensor, Tensor, list[Tensor]] = dataclasses.field(
        default=(torch.empty(0, 0), torch.empty(0, 0), []), repr=False, compare=False
    )

    @property
    def n_layers(self) -> int:
        """L, the number of Linear layers of the net."""
        return len(self.yes) + 1

    @property
    def best_subset(self) -> Subset:
        """The anchor subset of the network that reaches YES-(L-1), the smallest bound."""
        return self.best_subsets[-1]

    def rows(self) -> list[dict[str, Any]]:
        """A tidy table, one row per evaluated subset: subset, k, loss and loss in dB."""
        return [
            {"subset": list(s), "k": len(s), "loss": v, "loss_db": to_db(v)}
            for s, v in sorted(self.losses.items(), key=lambda kv: (len(kv[0]), kv[0]))
        ]

    def reference_mlp(self, subset: Sequence[int] | None = None) -> MLP:
        """The float64 `MLP` whose weights are the least-squares solutions of one path.

        Its training MSE on (X, Y) is J(subset); by default the path of `best_subset`.
        Inputs to the returned net are rows: `net(X.T)` gives the predictions (N, m).
        """
        x, y, hidden = self._data
        sub = self.best_subset if subset is None else tuple(int(s) for s in subset)
        n_layers = self.n_layers
        if list(sub) != sorted(set(sub)) or any(not 1 <= s < n_layers for s in sub):
            raise YesInputError(f"subset must be increasing layer indices in 1..{n_layers - 1}")
        targets = [*hidden, y]
        net = MLP(MLPConfig(n_in=x.shape[0], width=y.shape[0], n_layers=n_layers, bias=self.bias))
        net = net.to(device=x.device, dtype=torch.float64)
        h = x
        with torch.no_grad():
            for layer in range(1, n_layers + 1):
                t = targets[min([s for s in sub if s >= layer], default=n_layers) - 1]
                basis = Basis(tilde(h, self.bias))
                w = basis.weights(t)  # (m, d + bias)
                lin = net.layers[layer - 1]
                assert isinstance(lin, torch.nn.Linear)
                lin.weight.copy_(w[:, : h.shape[0]])
                if self.bias:
                    lin.bias.copy_(w[:, -1])
                h = basis.project(t).clamp_(min=0.0)
        return net.eval()


# ----------------------------------------------------------------------------- the bounds


def _bounds(walk: AnchorWalk, hidden: list[Tensor], max_anchors: int | None) -> YesBounds:
    """Run the walk with the cap `max_anchors` and read YES-0..YES-(L-1) off its losses."""
    n_layers = walk.n_layers
    cap = n_layers - 1 if max_anchors is None else min(max_anchors, n_layers - 1)
    losses, stats = walk.run(hidden, cap)
    yes: list[float] = [walk.yes0]
    best: list[Subset] = [()]
    by_size: dict[int, list[tuple[float, Subset]]] = {}
    for sub, value in losses.items():
        by_size.setdefault(len(sub), []).append((value, sub))
    for k in range(1, n_layers):
        value, sub = min(by_size.get(k, [(math.inf, ())]))
        best.append(sub if value < yes[-1] else best[-1])
        yes.append(min(value, yes[-1]))
    return YesBounds(
        yes0=walk.yes0,
        yes=yes[1:],
        losses=losses,
        best_subsets=best,
        max_anchors=cap,
        stats=stats,
        bias=walk.bias,
        _data=(walk.x, walk.y, list(hidden)),
    )


def yes_bounds(X: Any, Y: Any, hidden: Sequence[Any], *, bias: bool = True) -> YesBounds:
    """YES-0 and YES-1..YES-(L-1) of one check, by full enumeration of the anchor subsets.

    X (n, N) and Y (m, N) hold samples as columns; `hidden` is the trained net's L-1 post-ReLU
    hidden outputs, each (m, N) (for `MLP.hidden(x)` outputs, pass `[h.T for h in ...]`).
    Torch tensors or numpy arrays, computed in float64 on the device of the hidden outputs (the
    first one given as a tensor; else X's or Y's, else the CPU): on CUDA when they are there.
    Raises `YesInputError` (a `ValueError`) for unusable input and warns when N < m + 1.
    """
    listed = _hidden_list(hidden)
    device = _device(*listed, X, Y)
    x, y = _check_xy(X, Y, device)
    hs = _check_hidden(listed, y.shape[0], y.shape[1], device)
    return _bounds(AnchorWalk(x, y, len(hs) + 1, bias), hs, None)


# ----------------------------------------------------------------------------- over training


@dataclasses.dataclass(frozen=True)
class YesCheck:
    """One check over training: the loss, this check's bounds, the running minima, the verdict."""

    epoch: int  # the check's index (the epoch in the demos)
    train_loss: float  # the trained net's training MSE at this check
    yes0: float  # YES-0 of this check
    yes: list[float]  # YES-1..YES-(L-1) of this check
    yes0_min: float  # running minimum of YES-0
    yes_min: list[float]  # running minima of YES-1..YES-(L-1): the thresholds of the verdict
    verdict: str  # red / yellow / green
    best_subset: Subset  # anchors of the best path of this check

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready row (one line of metrics.jsonl)."""
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "train_loss_db": to_db(self.train_loss),
            "yes0": self.yes0,
            "yes": list(self.yes),
            "yes0_min": self.yes0_min,
            "yes_min": list(self.yes_min),
            "verdict": self.verdict,
            "best_subset": list(self.best_subset),
        }


class YesTracker:
    """Running minimum of the YES bounds over checks, the training loss, and the verdict.

    Holds the training data (X (n, N), Y (m, N)), so that the X factorization and YES-0 are
    computed once, at the first check. `max_anchors` caps the subset size for deep nets (docs/yes.md
    says what the cap costs): YES-k for k above the cap repeats YES-cap, which can only make the
    green threshold higher (looser); every value stays an achievable bound.
    """

    def __init__(
        self, X: Any, Y: Any, *, bias: bool = True, max_anchors: int | None = None
    ) -> None:
        if max_anchors is not None and (
            not isinstance(max_anchors, int) or isinstance(max_anchors, bool) or max_anchors < 0
        ):
            raise YesInputError(f"max_anchors must be None or an integer >= 0, got {max_anchors!r}")
        self.x, self.y = _check_xy(X, Y, _device(X, Y))
        self.bias, self.max_anchors = bias, max_anchors
        self._walk: AnchorWalk | None = None
        self.history: list[YesCheck] = []

    def bounds(self, hidden: Sequence[Any]) -> YesBounds:
        """YES bounds of one check: `yes_bounds` with this tracker's cap and cached YES-0."""
        listed = _hidden_list(hidden)
        # The walk runs on the device of the first check's hidden outputs.
        device = self._walk.device if self._walk is not None else _device(*listed, self.x)
        hs = _check_hidden(listed, self.y.shape[0], self.y.shape[1], device)
        if self._walk is None:
            x, y = self.x.to(device), self.y.to(device)
            self._walk = AnchorWalk(x, y, len(hs) + 1, self.bias)
        elif len(hs) + 1 != self._walk.n_layers:
            raise YesInputError(
                f"expected {self._walk.n_layers - 1} hidden outputs as before, got {len(hs)}"
            )
        return _bounds(self._walk, hs, self.max_anchors)

    def check(self, hidden: Sequence[Any], train_loss: float, epoch: int | None = None) -> YesCheck:
        """Compute this check's bounds, fold them into the running minima, return the row."""
        return self.update(self.bounds(hidden), train_loss, epoch)

    def update(self, bounds: YesBounds, train_loss: float, epoch: int | None = None) -> YesCheck:
        """Fold already computed bounds and the training loss into the running minima."""
        loss = float(train_loss)
        if not math.isfinite(loss) or loss < 0:
            raise YesInputError(f"train_loss must be a finite MSE >= 0, got {train_loss!r}")
        prev = self.history[-1] if self.history else None
        if prev is not None and len(prev.yes) != len(bounds.yes):
            raise YesInputError(
                f"bounds are for {bounds.n_layers} layers, earlier checks for {len(prev.yes) + 1}"
            )
        yes0_min = bounds.yes0 if prev is None else min(prev.yes0_min, bounds.yes0)
        yes_min = list(bounds.yes) if prev is None else list(map(min, prev.yes_min, bounds.yes))
        row = YesCheck(
            epoch=len(self.history) if epoch is None else int(epoch),
            train_loss=loss,
            yes0=bounds.yes0,
            yes=list(bounds.yes),
            yes0_min=yes0_min,
            yes_min=yes_min,
            verdict=verdict(loss, yes0_min, yes_min[-1]),
            best_subset=bounds.best_subset,
        )
        self.history.append(row)
        return row

    @property
    def latest(self) -> YesCheck | None:
        """The last check, or None before the first."""
        return self.history[-1] if self.history else None
