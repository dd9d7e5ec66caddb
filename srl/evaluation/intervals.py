"""Percentile-bootstrap intervals over evaluation units (prompts): a statistic of the whole set,
recomputed on sets drawn with replacement from its units.

Units are prompts, not pairs: pairs of one prompt share its text and its replies, so resampling
pairs would treat them as independent and give intervals that are too narrow.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence, TypeVar

U = TypeVar("U")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def bootstrap_interval(
    units: Sequence[U], statistic: Callable[[Sequence[U]], float | None], samples: int, seed: int, level: float = 95.0,
) -> tuple[float | None, float | None]:
    """(low, high) of ``statistic`` over ``samples`` resamples of ``units`` (with replacement).

    Resamples where the statistic is undefined (``None``: no scored pair drawn) are left out; with
    no unit, or no defined resample, the interval is ``(None, None)``.
    """
    if not units:
        return None, None
    rng = random.Random(seed)
    n = len(units)
    values = []
    for _ in range(samples):
        value = statistic([units[rng.randrange(n)] for _ in range(n)])
        if value is not None:
            values.append(value)
    if not values:
        return None, None
    tail = (100.0 - level) / 2
    return percentile(values, tail), percentile(values, 100.0 - tail)


def with_interval(
    name: str, units: Sequence[U], statistic: Callable[[Sequence[U]], float | None], samples: int, seed: int,
) -> dict[str, float | None]:
    """``{name: statistic(units), name_ci_low: ..., name_ci_high: ...}`` (the table's cell and its interval)."""
    low, high = bootstrap_interval(units, statistic, samples, seed)
    return {name: statistic(units), f"{name}_ci_low": low, f"{name}_ci_high": high}
