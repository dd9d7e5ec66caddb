"""Parsing the judge's score from its text.

A judge reply ends with ``Score: N`` (templates.py). The parser is lenient about case, spacing,
markdown emphasis and a ``/max`` suffix, and strict about meaning: a reply without a readable
score, with a score outside the template's range, or with a denominator other than the template's
maximum gives ``None`` (DESIGN.md rule 3: never an exception, never a made-up score). When a reply
states several scores the last one counts, since the template asks for the total last.
"""

from __future__ import annotations

import math
import re

_NUMBER = r"(-?\d+(?:\.\d+)?)"  # the sign is read so that a negative score is out of range, not positive
SCORE_RE = re.compile(
    r"score\W{0,3}?(?:\s*(?:is|of|=|:|-(?=\s))\s*)+[*_`\s]*" + _NUMBER + r"(?:\s*(?:/|out\s+of)\s*" + _NUMBER + r")?",
    re.IGNORECASE,
)


def parse_score(text: str | None, min_score: float = 0, max_score: float = 5) -> float | None:
    """The last stated score in ``text`` as a float in [min_score, max_score], else ``None``."""
    if not text:
        return None
    matches = list(SCORE_RE.finditer(text))
    if not matches:
        return None
    value_text, denominator = matches[-1].group(1), matches[-1].group(2)
    if denominator is not None and float(denominator) != float(max_score):
        return None
    value = float(value_text)
    if not math.isfinite(value) or value < min_score or value > max_score:
        return None
    return value


# Head-to-head verdicts: "Winner: A" (our template), also "Winner: Response B", "[[A]]" and "[[C]]"
# (MT-Bench's pairwise format, C = tie) for user templates. The last stated verdict counts.
VERDICT_RE = re.compile(
    r"winner\W{0,3}?\s*(?:is|:|-|=)?\s*[*_`\s]*(?:(?:response|assistant|output)\s+)?(a|b|tie)\b|\[\[(a|b|c|tie)\]\]",
    re.IGNORECASE,
)


def parse_verdict(text: str | None) -> str | None:
    """``"A"``, ``"B"`` or ``"tie"`` from the last verdict stated in ``text``, else ``None``."""
    if not text:
        return None
    matches = list(VERDICT_RE.finditer(text))
    if not matches:
        return None
    value = (matches[-1].group(1) or matches[-1].group(2)).lower()
    return {"a": "A", "b": "B", "c": "tie", "tie": "tie"}[value]
