"""Percentiles of a list of durations (seconds in, milliseconds out)."""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """count, p50/p90/p99/p99.9 and max, in milliseconds."""
    ordered = sorted(seconds)
    summary = {"count": float(len(ordered))}
    for pct in PERCENTILES:
        summary[f"p{pct:g}"] = percentile(ordered, pct) * 1000.0
    summary["max"] = (ordered[-1] * 1000.0) if ordered else math.nan
    return summary
