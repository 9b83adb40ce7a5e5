"""The one statistic every report uses: a per-seed paired difference, its mean and 95 % Student t interval, and the
verdict the interval allows ("better" / "worse" only when the whole interval is on one side of 0)."""

from __future__ import annotations

import math
import statistics
from typing import Any

# Two-sided 95 % Student t quantiles by degrees of freedom (seeds - 1); the reports never have more than a few seeds.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def interval(diffs: list[float], lower_is_better: bool = True) -> dict[str, Any]:
    """Mean, 95 % t interval (infinite for one seed) and verdict of paired differences (method minus control)."""
    mean = statistics.fmean(diffs)
    half = T95[len(diffs) - 1] * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
    low, high = mean - half, mean + half
    below, above = high < 0, low > 0
    if lower_is_better:
        verdict = "better" if below else "worse" if above else "not resolved"
    else:
        verdict = "better" if above else "worse" if below else "not resolved"
    return {"n": len(diffs), "diffs": diffs, "mean": mean, "low": low, "high": high, "verdict": verdict}
