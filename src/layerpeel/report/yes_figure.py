"""The YES-cloud figure: training loss in dB over epochs on red / yellow / green bound bands."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from layerpeel.io import atomic_write

# Band colours and their meaning, in words for the legend (METHOD.md section 1).
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
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("no metrics rows to plot")
    epochs = [int(r["epoch"]) for r in rows]
    loss = [_db(float(r["train_loss"])) for r in rows]
    yes0 = [_db(float(r["yes0_min"])) for r in rows]
    ladder = [[_db(float(v)) for v in r["yes_min"]] for r in rows]  # per row: YES-1..YES-(L-1)
    top = [lad[-1] for lad in ladder]
    n_hidden = len(ladder[0])
    low = min(min(loss), min(top))
    high = max(max(loss), max(yes0))
    pad = max(0.08 * (high - low), 0.5)
    y_lo, y_hi = low - pad, high + pad

    fig = Figure(figsize=(7.5, 4.4), dpi=100)
    ax = fig.add_subplot()
    colours = {k: c for k, (c, _) in BANDS.items()}
    labels = {k: text.format(L=n_hidden) for k, (_, text) in BANDS.items()}
    ax.fill_between(epochs, yes0, y_hi, color=colours["red"], label=labels["red"], lw=0)
    ax.fill_between(epochs, top, yes0, color=colours["yellow"], label=labels["yellow"], lw=0)
    ax.fill_between(epochs, y_lo, top, color=colours["green"], label=labels["green"], lw=0)
    ax.plot(epochs, yes0, color="#b22222", lw=1.2, label="YES-0")
    for k in range(n_hidden - 1):
        ax.plot(
            epochs,
            [lad[k] for lad in ladder],
            color="#7a6a20",
            lw=0.7,
            ls="--",
            label=f"YES-1..YES-{n_hidden - 1} (running min)" if k == 0 else None,
        )
    ax.plot(epochs, top, color="#1f6f1f", lw=1.2, label=f"YES-{n_hidden} (running min)")
    ax.plot(epochs, loss, color="black", lw=1.6, label="training loss")
    ax.set_xlim(min(epochs), max(epochs) if len(epochs) > 1 else min(epochs) + 1)
    ax.set_ylim(y_lo, y_hi)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training MSE (dB)")
    final = rows[-1].get("verdict")
    ax.set_title(title or (f"final: {final}" if final else "YES cloud"), fontsize=10)
    ax.legend(loc="upper right", fontsize=7, framealpha=0.9)
    ax.grid(alpha=0.3, lw=0.5)
    fig.tight_layout()
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fmt = path.suffix[1:]
        atomic_write(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt))  # type: ignore[misc]
    return paths
