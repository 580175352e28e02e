"""The overhead budget: time spent training versus time spent in the monitor, and when to analyse."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Budget:
    """Accounts wall time between the monitor's calls (training) and inside them (monitoring).

    An analysis is allowed when the monitor's time so far plus the analysis's expected cost stays
    within `max_overhead` times the training time so far; `None` means no budget. The expected cost
    of a kind of analysis is the longest of its last three measured runs (before the first, the
    longest cost measured for any kind, else zero).
    """

    max_overhead: float | None = 0.05  # allowed monitor time / training time; None = unlimited
    train_s: float = 0.0  # wall time of the user's steps, as seen between the monitor's calls
    monitor_s: float = 0.0  # wall time spent inside the monitor
    costs: dict[str, list[float]] = field(default_factory=dict)  # measured seconds per kind
    clock: Callable[[], float] = time.perf_counter  # seconds; tests pass a fake clock
    _last_exit: float | None = None  # clock when the monitor last returned

    def enter(self) -> float:
        """Called as the monitor starts work; books the time since its last return as training."""
        now = self.clock()
        if self._last_exit is not None:
            self.train_s += now - self._last_exit
        return now

    def leave(self, entered: float) -> None:
        """Called as the monitor returns; books the time since `enter` as monitoring."""
        now = self.clock()
        self.monitor_s += now - entered
        self._last_exit = now

    def pause(self) -> None:
        """Forget the open training interval (the loop stopped; a resumed loop starts afresh)."""
        self._last_exit = None

    @property
    def overhead(self) -> float:
        """Measured monitor time / training time so far (0 before any training time)."""
        return self.monitor_s / self.train_s if self.train_s > 0 else 0.0

    def expected(self, kind: str) -> float:
        seen = self.costs.get(kind)
        if seen:
            return max(seen[-3:])
        return max((max(v) for v in self.costs.values() if v), default=0.0)

    def allows(self, kind: str) -> bool:
        if self.max_overhead is None:
            return True
        return self.monitor_s + self.expected(kind) <= self.max_overhead * self.train_s

    def record(self, kind: str, seconds: float) -> None:
        self.costs.setdefault(kind, []).append(seconds)
        del self.costs[kind][:-3]

    def state_dict(self) -> dict[str, Any]:
        return {"train_s": self.train_s, "monitor_s": self.monitor_s, "costs": self.costs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train_s = float(state.get("train_s", 0.0))
        self.monitor_s = float(state.get("monitor_s", 0.0))
        self.costs = {k: [float(x) for x in v] for k, v in state.get("costs", {}).items()}
        self._last_exit = None
