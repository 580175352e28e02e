"""The YES-cloud figure: training loss in dB over epochs on red / yellow / green bound bands."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerpeel.io import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Band colours and their meaning, in words for the legend (the YES bounds, docs/yes.md).
BANDS = {
    "red": ("#f4a6a6", "red: loss > YES-0 (ineffective training)"),
    "yellow": ("#f7e08a", "yellow: YES-{L} < loss <= YES-0 (caution, the YES cloud)"),
    "green": ("#a8dba8", "green: loss <= YES-{L} (effective training)"),
}


def _db(value: float) -> float:
    return 10.0 * math.log10(max(value, 1e-30))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file; a torn last line (a killed run) is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def plot_yes_cloud(
    rows: Sequence[Mapping[str, Any]], out_stem: str | Path, *, title: str = ""
) -> list[Path]:
    """Draw the YES cloud from metrics rows and save `out_stem`.png and .svg; return the paths.

    Each row needs `epoch`, `train_loss`, `yes0_min` and `yes_min` (the running minima of
    YES-1..YES-(L-1)), as `YesCheck.to_dict()` writes them. The bands are bounded by YES-0 and
    the running YES-(L-1); thin dashed lines are the running YES-k in between.
    """
    if not rows:
        raise ValueError("no metrics rows to plot")
    final = rows[-1].get("verdict")
    fig = yes_cloud_figure(
        [int(r["epoch"]) for r in rows],
        [_db(float(r["train_loss"])) for r in rows],
        [_db(float(r["yes0_min"])) for r in rows],
        [[_db(float(v)) for v in r["yes_min"]] for r in rows],
        title=title or (f"final: {final}" if final else "YES cloud"),
    )
    return save_figure(fig, out_stem)


def yes_cloud_figure(
    x: Sequence[float],
    loss_db: Sequence[float],
    yes0_db: Sequence[float],
    ladder_db: Sequence[Sequence[float]],
    *,
    title: str = "YES cloud",
    xlabel: str = "epoch",
    ylabel: str = "training MSE (dB)",
    loss_label: str = "training loss",
    bound_note: str = " (running min)",
) -> Figure:
    """The YES cloud of values already in dB: loss over `x` on the bands YES-0 / YES-(L-1) make.

    `ladder_db[i]` holds YES-1..YES-(L-1) at `x[i]` (an empty list means YES-0 is the only
    bound); `bound_note` follows the YES-k labels in the legend.
    """
    from matplotlib.figure import Figure

    ladder = [list(lad) if len(lad) else [y0] for lad, y0 in zip(ladder_db, yes0_db, strict=True)]
    top = [lad[-1] for lad in ladder]
    n_hidden = len(ladder[0])
    low = min(min(loss_db), min(top))
    high = max(max(loss_db), max(yes0_db))
    pad = max(0.08 * (high - low), 0.5)
    y_lo, y_hi = low - pad, high + pad

    fig = Figure(figsize=(7.5, 4.4), dpi=100)
    ax = fig.add_subplot()
    colours = {k: c for k, (c, _) in BANDS.items()}
    labels = {k: text.format(L=n_hidden) for k, (_, text) in BANDS.items()}
    ax.fill_between(x, yes0_db, y_hi, color=colours["red"], label=labels["red"], lw=0)
    ax.fill_between(x, top, yes0_db, color=colours["yellow"], label=labels["yellow"], lw=0)
    ax.fill_between(x, y_lo, top, color=colours["green"], label=labels["green"], lw=0)
    ax.plot(x, yes0_db, color="#b22222", lw=1.2, label="YES-0")
    for k in range(n_hidden - 1):
        ax.plot(
            x,
            [lad[k] for lad in ladder],
            color="#7a6a20",
            lw=0.7,
            ls="--",
            label=f"YES-1..YES-{n_hidden - 1}{bound_note}" if k == 0 else None,
        )
    ax.plot(x, top, color="#1f6f1f", lw=1.2, label=f"YES-{n_hidden}{bound_note}")
    ax.plot(
        x, loss_db, color="black", lw=1.6, label=loss_label, marker="o" if len(x) < 40 else None
    )
    ax.set_xlim(min(x), max(x) if len(x) > 1 else min(x) + 1)
    ax.set_ylim(y_lo, y_hi)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=7, framealpha=0.9)
    ax.grid(alpha=0.3, lw=0.5)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, out_stem: str | Path) -> list[Path]:
    """Save `fig` as `out_stem`.png and .svg, each written atomically; return the paths."""
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fmt = path.suffix[1:]
        atomic_write(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt))  # type: ignore[misc]
    return paths
