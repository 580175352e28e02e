"""The report's plots as PNG and SVG files, for papers and slides (`layerpeel report --figures`).

Drawn with matplotlib from the same page data as the HTML report, so both always agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerpeel.report.yes_figure import save_figure, yes_cloud_figure

MAX_SYMBOL_COLUMNS = 60  # above this many checkpoints the heatmap cells are too small for symbols


def write_figures(payload: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write yes_cloud, heatmap_<part> and ladder as .png and .svg into `out_dir`; return paths.

    A figure whose data the run does not have (no cascade, no layer rows, no ladder) is not written.
    """
    out = Path(out_dir)
    paths: list[Path] = []
    cloud = payload.get("cloud")
    if cloud:
        paths += save_figure(_cloud_figure(cloud, payload), out / "yes_cloud")
    heat = payload.get("heatmap")
    if heat:
        for part in heat["parts"]:
            paths += save_figure(
                _heatmap_figure(heat, part, payload["legend"]["layer"]), out / f"heatmap_{part}"
            )
    ladder = payload.get("ladder")
    if ladder:
        paths += save_figure(_ladder_figure(ladder), out / "ladder")
    return paths


def _cloud_figure(cloud: dict[str, Any], payload: dict[str, Any]) -> Any:
    keep = [
        i for i, v in enumerate(cloud["trained"]) if v is not None and cloud["yes0"][i] is not None
    ]
    mlp = payload["kind"] == "mlp"
    verdict = cloud["verdict"][keep[-1]] if keep else "unknown"
    return yes_cloud_figure(
        [cloud["steps"][i] for i in keep],
        [cloud["trained"][i] for i in keep],
        [cloud["yes0"][i] for i in keep],
        [cloud["yes"][i] for i in keep],
        title=f"{payload['name']}: last check {verdict}",
        xlabel=cloud["x_label"],
        ylabel=cloud["y_label"],
        loss_label="training loss" if mlp else "trained model, held-out CE",
        bound_note="" if not mlp else " (as recorded)",
    )


def _heatmap_figure(heat: dict[str, Any], part: str, legend: dict[str, Any]) -> Any:
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    order = ["missing", "unknown", "green", "yellow", "red"]
    code_index = {".": 0, "?": 1, "g": 2, "y": 3, "r": 4}
    colours = ["#f0f0f0"] + [legend[v]["colour"] for v in order[1:]]
    steps, n_blocks = heat["steps"], heat["blocks"]
    grid = np.array([[code_index[c] for c in line] for line in heat["verdict"][part]])  # (L, S)
    width = min(16.0, max(7.0, 2.5 + 0.35 * len(steps)))
    fig = Figure(figsize=(width, 1.2 + 0.32 * n_blocks), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(
        grid,
        cmap=ListedColormap(colours),
        vmin=-0.5,
        vmax=4.5,
        aspect="auto",
        interpolation="nearest",
    )
    symbols = {i: legend[v]["symbol"] for i, v in enumerate(order) if v in legend}
    if len(steps) <= MAX_SYMBOL_COLUMNS:
        for b in range(n_blocks):
            for s in range(len(steps)):
                code = int(grid[b, s])
                if code in symbols:
                    ax.text(
                        s,
                        b,
                        symbols[code],
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="black" if order[code] == "yellow" else "white",
                    )
    every = max(1, len(steps) // 20)
    ax.set_xticks(
        range(0, len(steps), every),
        [str(steps[i]) for i in range(0, len(steps), every)],
        rotation=45 if len(steps) > 10 else 0,
        fontsize=8,
    )
    ax.set_yticks(range(n_blocks), [f"block {b}" for b in range(n_blocks)], fontsize=8)
    ax.set_xlabel("training step")
    ax.set_title(
        f"P1 gap verdict per {'block' if part == 'block' else part + ' sub-block'}", fontsize=10
    )
    drawn = {order[int(i)] for i in np.unique(grid)}  # the legend names only what is drawn
    handles = [
        Patch(color=legend[v]["colour"], label=f"{legend[v]['symbol']} {v}: {legend[v]['word']}")
        for v in ("red", "yellow", "green", "unknown")
        if v in drawn
    ] + ([Patch(color="#f0f0f0", label="not analysed")] if "missing" in drawn else [])
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def _ladder_figure(ladder: dict[str, Any]) -> Any:
    import numpy as np
    from matplotlib.figure import Figure

    n, trained = ladder["n"], ladder["ce_trained"]
    ce = np.array([[np.nan if v is None else v for v in row] for row in ladder["ce"]], dtype=float)
    base = trained if trained is not None else float(np.nanmin(ce))
    delta = ce - base
    span = float(np.nanmax(np.abs(delta))) or 1.0
    fig = Figure(figsize=(max(5.5, 1.6 + 1.1 * n), max(3.5, 1.2 + 0.8 * n)), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(delta, cmap="RdYlGn_r", vmin=-span, vmax=span)
    for i in range(n):
        for j in range(n):
            if not np.isnan(ce[i, j]):
                mark = "▼ " if delta[i, j] <= 0 else ""
                ax.text(j, i, f"{mark}{ce[i, j]:.3f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(n), [f"to {j}" for j in range(n)], fontsize=8)
    ax.set_yticks(range(n), [f"from {i}" for i in range(n)], fontsize=8)
    note = f"trained CE {trained:.3f}" if trained is not None else "trained CE unknown"
    ax.set_title(
        f"projection ladder CE(l -> j), step {ladder['step']} ({note}; ▼ at or below it)",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, label="CE - trained CE (nats)", shrink=0.8)
    fig.tight_layout()
    return fig
