"""Views of results that were computed elsewhere: figures and reports read rows, never compute."""

from layerpeel.report.yes_figure import plot_yes_cloud, read_metrics

__all__ = ["plot_yes_cloud", "read_metrics"]
