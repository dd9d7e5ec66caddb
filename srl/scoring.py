"""Parsing the judge's score (``Score: N``, ``Rating: [[N]]``) or verdict (``Winner: A``) from its text.

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
    return _last_number(SCORE_RE, text, min_score, max_score)


def _last_number(pattern: re.Pattern, text: str | None, min_score: float, max_score: float) -> float | None:
    """The value of ``pattern``'s last match (its first non-empty group; the last group is an
    optional denominator, which must equal ``max_score``), if in [min_score, max_score]."""
    if not text:
        return None
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    groups = matches[-1].groups()
    value_text, denominator = next(g for g in groups[:-1] if g is not None), groups[-1]
    if denominator is not None and float(denominator) != float(max_score):
        return None
    value = float(value_text)
    if not math.isfinite(value) or value < min_score or value > max_score:
        return None
    return value


# MT-Bench-style ratings: "Rating: [[7]]"; also "[[7]]" alone, "Rating: 7" and "Rating: 7/10". After
# "Rating:" any number of brackets is formatting ("Rating: [[[7]" still means 7), as is emphasis.
RATING_RE = re.compile(
    r"\[\[\s*" + _NUMBER + r"\s*\]\]|rating\W{0,3}?(?:\s*(?:is|of|=|:|-(?=\s))\s*)+[\[*_`\s]*" + _NUMBER
    + r"(?:\s*(?:/|out\s+of)\s*" + _NUMBER + r")?",
    re.IGNORECASE,
)


def parse_rating(text: str | None, min_score: float = 1, max_score: float = 10) -> float | None:
    """The last stated rating (``[[N]]`` or ``Rating: N``) in [min_score, max_score], else ``None``."""
    return _last_number(RATING_RE, text, min_score, max_score)


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
