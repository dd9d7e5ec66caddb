"""Parsing the judge's score (``Score: N``, ``Rating: [[N]]``) or verdict (``Winner: A``) from its text.

A judge reply ends with ``Score: N`` (templates.py). The parser is lenient about case, spacing,
markdown emphasis and a ``/max`` suffix, and strict about meaning: a reply without a readable
score, with a score outside the template's range, or with a denominator other than the template's
maximum gives ``None`` (DESIGN.md rule 3: never an exception, never a made-up score).

Which statement counts: the answer line. An answer statement starts a line (or a sentence, after
``.``, ``!`` or ``?``), after whitespace, list or quote marks and markdown emphasis (``**``, ``#``),
with the marker (``Score``, ``Rating``, ``Winner``; optionally ``Final``/``Total``/``Overall``
before it) and a separator (``:``, ``=``, ``is``, ``-``). The last such statement counts, and its
value is the number right after the marker: "Score: 3. A score of 5 would need expert depth." is
3, and a later note with other numbers does not change it. A value followed by arithmetic on the
same line ("Score: 5 - 1 = 4", "Score: 2 + 1") is ambiguous and gives ``None``. Only a reply
without any answer statement is read leniently: the last marker anywhere in the text ("I would
give it a score of 2"), with the same arithmetic check.
"""

from __future__ import annotations

import math
import re
from typing import Iterable


def score_histogram(scores: Iterable[float | None], min_score: int, max_score: int) -> dict[int, int]:
    """Counts of each parsed score rounded half up (``floor(x + 0.5)``), buckets min..max all present.

    Python's ``round`` rounds halves to even (2.5 -> 2), which would bias the histogram, hence
    ``floor(x + 0.5)``. ``None`` scores are skipped; a rounded score outside the range is an error.
    """
    hist = {k: 0 for k in range(min_score, max_score + 1)}
    for s in scores:
        if s is None:
            continue
        bucket = math.floor(s + 0.5)
        if bucket not in hist:
            raise ValueError(f"score {s} rounds to {bucket}, outside the histogram range {min_score}..{max_score}")
        hist[bucket] += 1
    return hist

_NUMBER = r"(-?\d+(?:\.\d+)?)"  # the sign is read so that a negative score is out of range, not positive


_SEPARATOR = r"\W{0,3}?(?:\s*(?:is|of|=|:|-(?=\s))\s*)+"


SCORE_RE = re.compile(
    r"score" + _SEPARATOR + r"[*_`\s]*" + _NUMBER + r"(?:\s*(?:/|out\s+of)\s*" + _NUMBER + r")?",
    re.IGNORECASE,
)


# Where an answer statement starts: a line start, or a sentence start after . ! ? and a space; then
# indentation, list and quote marks and markdown emphasis, and an optional qualifier word.
_STATEMENT = r"(?:^|(?<=[.!?]\s))[ \t>#*_`-]*(?:(?:final|total|overall)\s+)?"


# After the value (and its denominator), on the same line: an operator and another number.
_ARITHMETIC = re.compile(r"[ \t*_`\])]*[-+*/=×÷][ \t]*[(\[]?-?\d")


def _statements(marker: str) -> re.Pattern:
    """Positions where an answer statement with ``marker`` (a regex) begins."""
    return re.compile(_STATEMENT + r"(?=" + marker + r"\W{0,3}?\s*(?:is\b|=|:|-(?=\s)))", re.IGNORECASE | re.MULTILINE)


SCORE_LINE = _statements("score")


def parse_score(text: str | None, min_score: float = 0, max_score: float = 5) -> float | None:
    """The score of the last answer line (module docstring) in [min_score, max_score], else ``None``."""
    return _number(SCORE_LINE, SCORE_RE, text, min_score, max_score)


def _answer_match(lines: re.Pattern, pattern: re.Pattern, text: str) -> re.Match | None:
    """``pattern`` matched right at the last answer statement; without any, its last match anywhere."""
    starts = list(lines.finditer(text))
    if starts:
        return pattern.match(text, starts[-1].end())  # None: the last answer line states no value
    matches = list(pattern.finditer(text))
    return matches[-1] if matches else None


def _number(lines: re.Pattern, pattern: re.Pattern, text: str | None, min_score: float, max_score: float) -> float | None:
    """The value of ``pattern``'s counted match (its first non-empty group; the last group is an
    optional denominator, which must equal ``max_score``), if in [min_score, max_score] and not
    followed by arithmetic."""
    if not text:
        return None
    match = _answer_match(lines, pattern, text)
    if match is None or _ARITHMETIC.match(text, match.end()):
        return None
    groups = match.groups()
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
    r"\[\[\s*" + _NUMBER + r"\s*\]\]|rating" + _SEPARATOR + r"[\[*_`\s]*" + _NUMBER
    + r"(?:\s*(?:/|out\s+of)\s*" + _NUMBER + r")?",
    re.IGNORECASE,
)


RATING_LINE = _statements("rating")


def parse_rating(text: str | None, min_score: float = 1, max_score: float = 10) -> float | None:
    """The rating of the last ``Rating:`` answer line, else of the last ``[[N]]`` or ``Rating: N``
    anywhere, in [min_score, max_score]; else ``None``."""
    return _number(RATING_LINE, RATING_RE, text, min_score, max_score)


# Head-to-head verdicts: "Winner: A" (our template), also "Winner: Response B", "[[A]]" and "[[C]]"
# (MT-Bench's pairwise format, C = tie) for user templates.
VERDICT_RE = re.compile(
    r"winner\W{0,3}?\s*(?:is|:|-|=)?\s*[*_`\s]*(?:(?:response|assistant|output)\s+)?(a|b|tie)\b|\[\[(a|b|c|tie)\]\]",
    re.IGNORECASE,
)


VERDICT_LINE = _statements("winner")


def parse_verdict(text: str | None) -> str | None:
    """``"A"``, ``"B"`` or ``"tie"`` from the last ``Winner:`` answer statement, else from the last
    verdict anywhere in ``text``; else ``None``."""
    if not text:
        return None
    match = _answer_match(VERDICT_LINE, VERDICT_RE, text)
    if match is None:
        return None
    value = (match.group(1) or match.group(2)).lower()
    return {"a": "A", "b": "B", "c": "tie", "tie": "tie"}[value]
