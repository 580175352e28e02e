"""Schedules: callables from a training step to bool, saying when an analysis is wanted."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from layerpeel.errors import ConfigError

Schedule = Callable[[int], bool]


def every(n: int, start: int = 0) -> Schedule:
    """Steps start, start + n, start + 2n, ... (n >= 1)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"every(n) needs a positive integer n, got {n!r}")

    def due(step: int) -> bool:
        return step >= start and (step - start) % n == 0

    return due


def log_spaced(per_decade: int = 4, start: int = 1) -> Schedule:
    """About `per_decade` steps per factor of ten, from `start`: 1, 2, 4, 6, 10, 18, 32, 57, 100, ..."""
    if not isinstance(per_decade, int) or per_decade < 1 or start < 1:
        raise ConfigError("log_spaced needs per_decade >= 1 and start >= 1")

    def due(step: int) -> bool:
        if step < start:
            return False
        # due when step is the first integer at or after a point 10^(k / per_decade): take the
        # largest such point at or below step and check that it lies above step - 1
        k = math.floor(per_decade * math.log10(step) + 1e-9)
        return 10 ** (k / per_decade) > step - 1 + 1e-9

    return due


def at(steps: Iterable[int]) -> Schedule:
    """Exactly the given steps."""
    wanted = frozenset(int(s) for s in steps)

    def due(step: int) -> bool:
        return step in wanted

    return due


def always(step: int) -> bool:
    """Every step: the budget alone decides how often the monitor analyses."""
    return True


def any_of(*schedules: Schedule) -> Schedule:
    """Due when any of the schedules is due."""

    def due(step: int) -> bool:
        return any(s(step) for s in schedules)

    return due
