"""`layerpeel report RUN`: one self-contained HTML file of a run's results (and, optionally, figures)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report",
        help="write a run's results as one self-contained HTML file",
        description=(
            "Write the run's verdict, YES cloud, layer-by-checkpoint gap heatmap, per-layer table, "
            "projection ladder and settings as one HTML file that opens offline. Reads "
            "analysis/step-*.json, monitor.jsonl and metrics.jsonl; computes nothing."
        ),
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder")
    p.add_argument(
        "-o", "--out", type=Path, default=None, help="HTML file (default RUN/report.html)"
    )
    p.add_argument(
        "--figures",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write the plots as PNG and SVG into DIR",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from layerpeel.io import check_output_dir, check_output_file
    from layerpeel.report.figures import write_figures
    from layerpeel.report.html import write_report
    from layerpeel.report.payload import build_payload
    from layerpeel.report.results import check_run_folder

    check_run_folder(args.run)
    check_output_file(args.out or args.run / "report.html", "--out" if args.out else "the report")
    if args.figures is not None:
        check_output_dir(args.figures, "--figures")
    path, results = write_report(args.run, args.out)
    for text in results.notes:
        print(f"skipped: {text}")
    if results.empty:
        print("no analysis in this run yet; the report says so")
    if args.figures is not None:
        for fig in write_figures(build_payload(results), args.figures):
            print(f"wrote {fig}")
    print(f"\nreport: {path}")
    print(f"open it in a browser: {path.resolve().as_uri()}")
    print(f"or follow the run live: layerpeel serve {args.run}")
    return 0
