"""Summaries of samples and counts (pure): what the results table shows for each measure."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: a value that was observed, never an interpolation between two."""
    if not samples:
        raise ValueError("no samples")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    ordered = sorted(samples)
    return ordered[max(math.ceil(fraction * len(ordered)), 1) - 1]


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """Count, median (p50), p95, min and max of ``samples`` (seconds), and the samples themselves."""
    if not samples:
        return {"n": 0}
    return {"n": len(samples), "p50": percentile(samples, 0.5), "p95": percentile(samples, 0.95),
            "min": min(samples), "max": max(samples), "samples": [round(s, 4) for s in samples]}


def ratio(value: float, floor: float) -> float | None:
    """``value`` as a multiple of its floor; None when the floor is zero (no ratio to speak of)."""
    return value / floor if floor > 0 else None


def densest(times: Iterable[float], width: float) -> int:
    """The most ``times`` that fall within any one stretch of length ``width`` (a burst's size)."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best
