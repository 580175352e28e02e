"""The self-contained HTML page: stylesheet, script and data inline, nothing fetched from anywhere.

The report is this page with the run's data embedded; the dashboard serves the same page and
lets its script poll the server for newer data.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

from layerpeel.errors import LayerpeelError
from layerpeel.io import atomic_write_text
from layerpeel.report.payload import build_payload
from layerpeel.report.results import RunResults, read_results

# The report may load nothing; the dashboard may only poll the server that served it.
CSP_REPORT = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
)
CSP_LIVE = CSP_REPORT + "; connect-src 'self'"


def _asset(name: str) -> str:
    return resources.files("layerpeel.report").joinpath("assets", name).read_text("utf-8")


def data_json(payload: dict[str, Any]) -> str:
    """JSON safe to embed in a <script> element: no '<' can end the element early."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")


def render_html(payload: dict[str, Any]) -> str:
    """The whole page for one payload (see `layerpeel.report.payload.build_payload`)."""
    csp = CSP_LIVE if payload.get("live") else CSP_REPORT
    title = html.escape(f"layerpeel — {payload.get('name', '')}")
    live = '<span id="live-status">connecting…</span>' if payload.get("live") else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>\n{_asset('page.css')}</style>\n</head>\n<body>\n"
        '<header class="top"><h1>layerpeel</h1>'
        f'<span class="run" id="run-path">{html.escape(str(payload.get("run", "")))}</span>{live}'
        "</header>\n"
        '<main id="app"><noscript>This page draws its views with JavaScript; enable it to see '
        "them.</noscript></main>\n"
        '<div id="tooltip" role="tooltip"></div>\n'
        f'<script id="layerpeel-data" type="application/json">{data_json(payload)}</script>\n'
        f"<script>\n{_asset('page.js')}</script>\n</body>\n</html>\n"
    )


def write_report(run: str | Path, out: str | Path | None = None) -> tuple[Path, RunResults]:
    """Write the report of run folder `run` to `out` (default RUN/report.html); return both."""
    run = Path(run)
    if not run.is_dir():
        raise LayerpeelError(f"run folder not found: {run}")
    results = read_results(run)
    path = Path(out) if out is not None else run / "report.html"
    if path.is_dir():
        raise LayerpeelError(f"report output is a folder, give a file name: {path}")
    atomic_write_text(path, render_html(build_payload(results)))
    return path, results
