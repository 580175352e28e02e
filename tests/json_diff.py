"""Differences between two JSON-like values, floats compared to 1e-6, some keys ignored."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any


def differences(a: Any, b: Any, ignore: Collection[str] = (), path: str = "") -> list[str]:
    """Where `a` and `b` differ (empty when equal): dict keys in `ignore` are skipped at any depth."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [
            d for k in a if k not in ignore for d in differences(a[k], b[k], ignore, f"{path}.{k}")
        ]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} != {len(b)}"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, ignore, f"{path}[{i}]")
        ]
    if isinstance(a, float) and isinstance(b, float):
        ok = (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6
        return [] if ok else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]
