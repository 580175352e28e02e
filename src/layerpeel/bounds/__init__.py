"""Achievable bounds: P1 layer gaps, P2 projection ladder, P3 YES cascade, and their scoring."""

from layerpeel.bounds.yes import YesBounds, YesCheck, YesInputError, YesTracker, yes_bounds

__all__ = ["YesBounds", "YesCheck", "YesInputError", "YesTracker", "yes_bounds"]
