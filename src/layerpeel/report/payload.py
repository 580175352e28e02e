"""The page's data: `RunResults` arranged as one compact JSON object for the report and dashboard.

The same script draws both from it. Only reads and arranges; no bound is computed here.
"""

from __future__ import annotations

import math
from typing import Any

from layerpeel.report.reader import Analysis, finite
from layerpeel.report.results import RunResults

# Every colour on the page comes with a symbol and a word (the legend the script shows).
WHOLE_MODEL = {  # the YES verdict of the whole model (docs/yes.md)
    "red": {"symbol": "✖", "word": "ineffective training", "colour": "#d73027"},
    "yellow": {"symbol": "▲", "word": "caution", "colour": "#f2c14e"},
    "green": {"symbol": "✔", "word": "effective training", "colour": "#1a9850"},
    "unknown": {"symbol": "?", "word": "no verdict", "colour": "#9e9e9e"},
}
LAYER = {  # the P1 verdict of one block or sub-block (thresholds in the report's settings)
    "red": {"symbol": "✖", "word": "under-optimized", "colour": "#d73027"},
    "yellow": {"symbol": "▲", "word": "small gap", "colour": "#f2c14e"},
    "green": {"symbol": "✔", "word": "no clear gap", "colour": "#1a9850"},
    "unknown": {"symbol": "?", "word": "no verdict", "colour": "#9e9e9e"},
}
SEVERITY = {"unknown": 0, "green": 1, "yellow": 2, "red": 3}
VERDICT_CODE = {"red": "r", "yellow": "y", "green": "g", "unknown": "?"}  # heatmap cells
PART_ORDER = {"block": 0, "attn": 1, "mlp": 2}
MAX_CURVE_POINTS = 2000  # the training-loss context curve keeps every k-th logged step above this

PROVENANCE = [
    (
        "paper",
        "YES bounds: YES-0 and YES-k from least-squares layer projections, each the training loss "
        "of a real network of the same architecture; the red / yellow / green colour code with the "
        "bounds as thresholds",
        "Data-Aware Training Quality Monitoring and Certification for Reliable Deep Learning, "
        "arXiv 2410.10984",
    ),
    (
        "paper",
        "Peeling transformers: each layer optimized locally against intermediate representations "
        "of the trained model, projected onto several intermediate outputs, giving an achievable "
        "per-layer baseline, for decoder-only models under binarization and quantization",
        "Trust, but Verify: Peeling Low-Bit Transformer Networks for Training Monitoring, "
        "arXiv 2605.02853 (abstract only; it gives no equations)",
    ),
    (
        "paper",
        "One-bit weights with one global scale, lambda * sign(W), trained with a straight-through "
        "estimator",
        "Physics-Inspired Binary Neural Networks (PIBiNN), arXiv 2502.01908",
    ),
    (
        "design",
        "P1 layer gap (target propagation with a closed-form peel, or local Adam), its bootstrap "
        "interval over held-out sequences and the gap thresholds of the layer verdicts",
        "layerpeel",
    ),
    (
        "design",
        "P2 projection ladder CE(l -> j), P3 YES cascade on the residual stream with the "
        "head-preimage final target, the fit / held-out split of the monitoring set, and the "
        "optimization / quantization split of a quantized layer's gap",
        "layerpeel",
    ),
    (
        "design",
        "This page: which results are merged (analysis files over monitor events for the same "
        "step), the YES-cloud axis (nats per token for a language model, dB = 10 log10 of the MSE "
        "for the YES paper's MLPs, as the paper plots them), colours, symbols",
        "layerpeel",
    ),
]


def _round(value: float | None, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def build_payload(res: RunResults, *, live: bool = False) -> dict[str, Any]:
    """The page's data for one run (see the module docstring)."""
    from layerpeel import __version__

    kind = "transformer" if res.analyses else ("mlp" if res.yes else "empty")
    table = _table(res.analyses)
    return {
        "run": str(res.path),
        "name": res.path.name or str(res.path),
        "kind": kind,
        "live": live,
        "layerpeel": __version__,
        "legend": {"whole": WHOLE_MODEL, "layer": LAYER},
        "headline": _headline(res, table),
        "cloud": _cloud(res),
        "heatmap": _heatmap(res.analyses),
        "table": table,
        "ladder": _ladder(res.analyses),
        "settings": _settings(res),
        "monitor": {"errors": res.errors, "disabled": res.disabled, "analyses": res.monitor[-50:]},
        "progress": _progress(res),
        "skipped": res.notes,
        "provenance": [{"kind": k, "what": w, "source": s} for k, w, s in PROVENANCE],
    }


def _progress(res: RunResults) -> dict[str, Any]:
    steps = [r["step"] for r in res.metrics if isinstance(r.get("step"), int)]
    return {"metrics_lines": len(res.metrics), "last_step": max(steps) if steps else None}


def _latest_cascade(analyses: list[Analysis]) -> Analysis | None:
    return next((a for a in reversed(analyses) if a.cascade is not None), None)


def _headline(res: RunResults, table: list[dict[str, Any]]) -> dict[str, Any]:
    if res.yes:
        last = res.yes[-1]
        k = len(last["yes_db"])
        v = last["verdict"]
        rel = {
            "red": f"is above YES-0 = {last['yes0_db']:.2f} dB",
            "yellow": f"lies between YES-{k} = {last['yes_db'][-1]:.2f} dB and YES-0 = "
            f"{last['yes0_db']:.2f} dB",
            "green": f"is at or below YES-{k} = {last['yes_db'][-1]:.2f} dB",
        }.get(v, "has no recorded verdict")
        sentence = (
            f"{res.yes_axis.capitalize()} {last['step']}: {WHOLE_MODEL[v]['word']} -- the training "
            f"loss {last['loss_db']:.2f} dB {rel}."
        )
        return {"verdict": v, "scale": "whole", "step": last["step"], "sentence": sentence}
    if not res.analyses:
        return {
            "verdict": "unknown",
            "scale": "none",
            "step": None,
            "sentence": "No analysis yet: nothing in analysis/step-*.json or in monitor.jsonl "
            "analysis events. Run `layerpeel analyze` on a checkpoint, or train with the monitor.",
        }
    step = max(r["step"] for r in table) if table else res.analyses[-1].step
    judged = next((a for a in reversed(res.analyses) if a.whole is not None), None)
    if judged is not None and judged.whole is not None:
        # the whole-model verdict the analysis recorded: the same as the CLI's and the monitor's
        w = judged.whole
        return {
            "verdict": w["colour"],
            "scale": "whole",
            "step": judged.step,
            "question": w["question"],
            "sentence": f"Step {judged.step}: {w['sentence']}",
        }
    parts: list[str] = []
    verdict = "unknown"
    whole = _latest_cascade(res.analyses)
    if whole is not None and whole.cascade is not None:
        c = whole.cascade
        k = len(c["yes"])
        last = c["yes"][-1] if c["yes"] else c["yes0"]
        v = c["verdict"]
        rel = {
            "red": f"is above YES-0 = {c['yes0']:.3f}",
            "yellow": f"lies between YES-{k} = {last:.3f} and YES-0 = {c['yes0']:.3f}",
            "green": f"is at or below YES-{k} = {last:.3f}",
        }.get(v, "has no recorded verdict")
        parts.append(
            f"step {whole.step}: {WHOLE_MODEL[v]['word']} -- the trained model's held-out "
            f"cross-entropy {c['ce_trained']:.3f} nats {rel}"
        )
        verdict = v
    if table:
        # idle blocks first (their gap is near zero), then the largest gaps
        reds = sorted(
            (r for r in table if r["verdict"] == "red"),
            key=lambda r: (not r.get("idle"), -r["gap"]),
        )
        yellows = [r for r in table if r["verdict"] == "yellow"]
        if reds:
            named = ", ".join(_red_reason(r) for r in reds[:3])
            more = f" and {len(reds) - 3} more" if len(reds) > 3 else ""
            parts.append(f"{len(reds)} of {len(table)} layer parts under-optimized: {named}{more}")
        elif yellows:
            parts.append(
                f"no layer part clearly under-optimized; {len(yellows)} of {len(table)} show a "
                "small gap"
            )
        else:
            parts.append(f"no layer part of {len(table)} shows a clear gap")
        worst = max((r["verdict"] for r in table), key=SEVERITY.__getitem__)
        verdict = max(verdict, worst, key=SEVERITY.__getitem__)
    sentence = "; ".join(parts)
    return {
        "verdict": verdict,
        "scale": "worst",
        "step": step,
        "sentence": sentence[:1].upper() + sentence[1:] + ".",
    }


def _label(row: dict[str, Any]) -> str:
    return f"block {row['block']}" + ("" if row["part"] == "block" else f" {row['part']}")


def _red_reason(row: dict[str, Any]) -> str:
    """Why a row is red: its gap, or, for an idle block, the little its removal costs."""
    if row.get("idle") and row.get("work") is not None:
        return f"{_label(row)} (idle: removing it costs {row['work']:.3f} nats)"
    return f"{_label(row)} (gap {row['gap']:.3f} nats)"


def _cloud(res: RunResults) -> dict[str, Any] | None:
    if res.yes:
        rows = res.yes
        return {
            "x_label": res.yes_axis,
            "y_label": "training loss (dB, 10 log10 MSE)",
            "unit": "dB",
            "steps": [r["step"] for r in rows],
            "trained": [_round(r["loss_db"]) for r in rows],
            "yes0": [_round(r["yes0_db"]) for r in rows],
            "yes": [[_round(v) for v in r["yes_db"]] for r in rows],
            "verdict": [r["verdict"] for r in rows],
            "train_curve": None,
        }
    with_cascade = [a for a in res.analyses if a.cascade is not None]
    if not with_cascade:
        return None
    cs = [a.cascade for a in with_cascade if a.cascade is not None]
    curve = []
    for r in res.metrics:  # training lines: {"step", "train_loss"} (or "loss"), no val_loss
        loss = finite(r.get("train_loss", r.get("loss")))
        if isinstance(r.get("step"), int) and loss is not None and "val_loss" not in r:
            curve.append((r["step"], loss))
    stride = max(1, math.ceil(len(curve) / MAX_CURVE_POINTS))
    curve = curve[::stride]
    # a language model's loss is a cross-entropy: plotted in nats per token as it is reported
    return {
        "x_label": "training step",
        "y_label": "held-out cross-entropy (nats/token)",
        "unit": "nats",
        "steps": [a.step for a in with_cascade],
        "trained": [_round(c["ce_trained"]) for c in cs],
        "yes0": [_round(c["yes0"]) for c in cs],
        "yes": [[_round(v) for v in c["yes"]] for c in cs],
        "verdict": [c["verdict"] for c in cs],
        "train_curve": {
            "steps": [s for s, _ in curve],
            "loss": [_round(v, 5) for _, v in curve],
            "stride": stride,
        }
        if curve
        else None,
    }


def _heatmap(analyses: list[Analysis]) -> dict[str, Any] | None:
    rows = [r for a in analyses for r in a.layers]
    if not rows:
        return None
    n_blocks = max(r["block"] for r in rows) + 1
    parts = sorted({r["part"] for r in rows}, key=lambda p: (PART_ORDER.get(p, 9), p))
    gaps = {p: [[None] * len(analyses) for _ in range(n_blocks)] for p in parts}
    codes = {p: [["."] * len(analyses) for _ in range(n_blocks)] for p in parts}
    for col, a in enumerate(analyses):
        for r in a.layers:
            gaps[r["part"]][r["block"]][col] = _round(r["gap"], 4)
            codes[r["part"]][r["block"]][col] = VERDICT_CODE[r["verdict"]]
    return {
        "steps": [a.step for a in analyses],
        "blocks": n_blocks,
        "parts": parts,
        "gap": gaps,
        "verdict": {p: ["".join(c) for c in codes[p]] for p in parts},
    }


def _table(analyses: list[Analysis]) -> list[dict[str, Any]]:
    """One row per block and part: the most recent analysis that has it."""
    latest: dict[tuple[int, str], dict[str, Any]] = {}
    for a in analyses:
        for r in a.layers:
            latest[(r["block"], r["part"])] = {**r, "step": a.step}
    out = []
    for key in sorted(latest, key=lambda k: (k[0], PART_ORDER.get(k[1], 9), k[1])):
        r = latest[key]
        out.append({k: _round(v) if isinstance(v, float) else v for k, v in r.items()})
    return out


def _ladder(analyses: list[Analysis]) -> dict[str, Any] | None:
    a = next((a for a in reversed(analyses) if a.ladder), None)
    if a is None:
        return None
    n = max(max(r["from_block"], r["to_block"]) for r in a.ladder) + 1
    cells: list[list[float | None]] = [[None] * n for _ in range(n)]
    for r in a.ladder:
        cells[r["from_block"]][r["to_block"]] = _round(r["ce"])
    trained = next((r["ce_trained"] for r in a.ladder if r["ce_trained"] is not None), None)
    return {"step": a.step, "n": n, "ce": cells, "ce_trained": _round(trained)}


def _settings(res: RunResults) -> dict[str, Any]:
    latest = res.analyses[-1] if res.analyses else None
    meta = latest.meta if latest is not None else {}
    config = {k: v for k, v in res.config.items() if k not in ("kind", "version")}
    return {
        "analysis_step": latest.step if latest is not None else None,
        "analysis_source": latest.source if latest is not None else None,
        "peel_config": meta.get("config", {}),
        "monitoring": meta.get("monitoring", {}),
        "model": meta.get("model", {}),
        "timings": {
            k: round(v, 1) if isinstance(v, int | float) else v
            for k, v in meta.get("timings", {}).items()
        },
        "analysis_layerpeel": meta.get("layerpeel", ""),
        "monitoring_hashes": sorted(
            {
                str(a.meta.get("monitoring", {}).get("sha256"))
                for a in res.analyses
                if isinstance(a.meta.get("monitoring"), dict) and a.meta["monitoring"].get("sha256")
            }
        ),
        "run_config": config,
    }
