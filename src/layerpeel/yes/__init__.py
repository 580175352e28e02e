"""YES training bounds for MLPs: the bounds and their tracker over training, the walk, the basis."""

from layerpeel.yes.bounds import YesBounds, YesCheck, YesInputError, YesTracker, yes_bounds

__all__ = ["YesBounds", "YesCheck", "YesInputError", "YesTracker", "yes_bounds"]
