"""Seeded subsets of evaluation items (held-out prompts, preference pairs)."""

from __future__ import annotations

import random
from typing import Any, Sequence


def subset(items: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    """A seeded subset of ``limit`` items in their original order (all of them when ``limit`` is None)."""
    if limit is None or len(items) <= limit:
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), limit))]
