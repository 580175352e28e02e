"""Views of results that were computed elsewhere: figures and reports read rows, never compute."""

from layerpeel.report.figures import write_figures
from layerpeel.report.html import render_html, write_report
from layerpeel.report.payload import build_payload
from layerpeel.report.results import RunReader, RunResults, read_results
from layerpeel.report.server import Dashboard
from layerpeel.report.yes_figure import plot_yes_cloud, read_metrics

__all__ = [
    "Dashboard",
    "RunReader",
    "RunResults",
    "build_payload",
    "plot_yes_cloud",
    "read_metrics",
    "read_results",
    "render_html",
    "write_figures",
    "write_report",
]
