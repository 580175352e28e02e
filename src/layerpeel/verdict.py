"""`Verdict`: the colour of a result, shared by both products (YES bounds and peeling)."""

from __future__ import annotations

import enum


class Verdict(enum.StrEnum):
    """Red, yellow or green; a str, so it is written to JSON and compared as "red" etc."""

    GREEN = "green"
    YELLOW = "yellow"
    RED = "red"

    @property
    def rank(self) -> int:
        """0 for green, 1 for yellow, 2 for red: sort by it to put the most worrying last."""
        return list(Verdict).index(self)
