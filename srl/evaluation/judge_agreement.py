"""Judge-vs-human agreement on ranked sibling replies (paper Sec. 4, Table 4 "reward modeling ability").

For one prompt of the held-out Open Assistant ranked groups we get two parallel sequences:

- ``scores[i]``: the judge's mean score for reply ``i`` (float), or ``None`` when no judge sample
  parsed. Higher is better.
- ``ranks[i]``: the human rank of reply ``i`` (int, 0 = best, distinct within a prompt). Lower is
  better. After unusable replies are dropped the best rank present need not be 0.

Definitions, per prompt (data-set numbers are formed by the caller, as said for each):

- **Pairwise accuracy** (:func:`pair_counts`): every unordered pair ``{i, j}`` with
  ``ranks[i] != ranks[j]`` is counted once, as ``unscored`` if either score is ``None``, else
  ``tie`` if the scores are equal, else ``agree`` if the better-ranked reply (lower rank) has the
  higher score, else ``disagree``. Accuracy = agree / (agree + disagree + tie): a tie is a wrong
  answer, an unscored pair is left out. Sum the :class:`PairCounts` over prompts (``+`` or
  ``sum``) and take ``.accuracy`` of the total (a micro average over pairs).
- **5-best %** (:func:`best_hits`): of the replies whose score equals ``max_score`` exactly
  (a perfect 5 under the 0-5 rubric), how many are the human best, i.e. carry the lowest rank
  present among all the prompt's replies. Data set: sum(hits) / sum(total).
- **Exact match %** (:func:`exact_match`): the prompt counts when every score parsed, no two
  scores are equal, and ordering the replies by score (highest first) gives the human order
  (lowest rank first). Stated pairwise: for every pair with different ranks the better-ranked
  reply has the strictly higher score, and no two scores tie. ``None`` when a score is ``None``.
  Data set: matches / prompts where it is not ``None``.
- **Spearman** (:func:`spearman`) and **Kendall tau** (:func:`kendall_tau`): correlation between
  ``scores`` and ``-ranks`` (negated, so +1 = perfect agreement), after dropping replies whose
  score is ``None``. ``None`` when fewer than two replies remain or either side is constant
  (the correlation is undefined; scipy gives nan there). Spearman is the Pearson correlation of
  average ranks (tied values share the mean of the 1-based positions they occupy). Kendall is
  tau-b: with C concordant and D discordant pairs (pairs tied on either side are neither),
  n0 = n(n-1)/2, n1 = sum t(t-1)/2 over groups of tied scores, n2 likewise over tied ranks,
  tau_b = (C - D) / sqrt((n0 - n1)(n0 - n2)). Both equal ``scipy.stats.spearmanr`` and
  ``scipy.stats.kendalltau`` (variant 'b'). Data set: :func:`mean_defined` of the per-prompt
  values, reporting how many prompts were undefined.
- **Score histogram** (``srl.judging.parsing.score_histogram``): counts of the nearest integer to each parsed
  score, rounding halves up (``floor(x + 0.5)``, not Python's banker's ``round``, which sends
  2.5 to 2), with every bucket from ``min_score`` to ``max_score`` present.

Pure Python and ``math`` only.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Iterable, Sequence

Score = float | None


def _check(scores: Sequence[Score], ranks: Sequence[int]) -> None:
    if len(scores) != len(ranks):
        raise ValueError(f"scores and ranks differ in length: {len(scores)} scores, {len(ranks)} ranks")


@dataclasses.dataclass(frozen=True)
class PairCounts:
    """Pair outcomes for pairwise accuracy; ``+`` (and ``sum``) add them up over prompts."""

    agree: int = 0
    disagree: int = 0
    tie: int = 0
    unscored: int = 0

    @property
    def scored(self) -> int:
        """Pairs where both scores parsed: the denominator of accuracy and tie rate."""
        return self.agree + self.disagree + self.tie

    @property
    def accuracy(self) -> float | None:
        """agree / (agree + disagree + tie); ties count as wrong. ``None`` with no scored pair."""
        return self.agree / self.scored if self.scored else None

    @property
    def tie_rate(self) -> float | None:
        """tie / (agree + disagree + tie). ``None`` with no scored pair."""
        return self.tie / self.scored if self.scored else None

    def __add__(self, other: PairCounts) -> PairCounts:
        if not isinstance(other, PairCounts):
            return NotImplemented
        return PairCounts(
            self.agree + other.agree,
            self.disagree + other.disagree,
            self.tie + other.tie,
            self.unscored + other.unscored,
        )

    def __radd__(self, other: object) -> PairCounts:
        # sum() starts from the int 0.
        if other == 0:
            return self
        return NotImplemented


def pair_counts(scores: Sequence[Score], ranks: Sequence[int]) -> PairCounts:
    """Outcome counts over all unordered pairs of replies with different human ranks."""
    _check(scores, ranks)
    agree = disagree = tie = unscored = 0
    for i, j in itertools.combinations(range(len(scores)), 2):
        if ranks[i] == ranks[j]:
            continue
        si, sj = scores[i], scores[j]
        if si is None or sj is None:
            unscored += 1
            continue
        better, worse = (si, sj) if ranks[i] < ranks[j] else (sj, si)
        if better == worse:
            tie += 1
        elif better > worse:
            agree += 1
        else:
            disagree += 1
    return PairCounts(agree, disagree, tie, unscored)


def best_hits(scores: Sequence[Score], ranks: Sequence[int], max_score: float) -> tuple[int, int]:
    """(max-scored replies that are the human best, max-scored replies).

    The human best is the reply with the lowest rank present among all ``ranks`` (scored or not).
    Scores are compared to ``max_score`` with exact equality; ``None`` scores are ignored.
    """
    _check(scores, ranks)
    if not ranks:
        return 0, 0
    best = min(ranks)
    at_max = [r for s, r in zip(scores, ranks) if s is not None and s == max_score]
    return sum(1 for r in at_max if r == best), len(at_max)


def exact_match(scores: Sequence[Score], ranks: Sequence[int]) -> bool | None:
    """Whether sorting by score (highest first) gives the human order, with no tied scores.

    ``None`` if any score is ``None``. A prompt with one reply matches trivially.
    """
    _check(scores, ranks)
    if any(s is None for s in scores):
        return None
    for i, j in itertools.combinations(range(len(scores)), 2):
        if scores[i] == scores[j]:
            return False
        if ranks[i] != ranks[j] and (scores[i] > scores[j]) != (ranks[i] < ranks[j]):
            return False
    return True


def _scored_pairs(scores: Sequence[Score], ranks: Sequence[int]) -> tuple[list[float], list[float]] | None:
    """(scores, negated ranks) of replies with a score; ``None`` if correlation is undefined."""
    _check(scores, ranks)
    xs = [float(s) for s in scores if s is not None]
    ys = [-float(r) for s, r in zip(scores, ranks) if s is not None]
    if len(xs) < 2 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return xs, ys


def _average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ascending; a group of tied values all get the mean of their positions."""
    order = sorted(range(len(values)), key=lambda k: values[k])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        mean_position = (start + end) / 2 + 1  # positions start..end, 1-based
        for k in order[start : end + 1]:
            out[k] = mean_position
        start = end + 1
    return out


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def spearman(scores: Sequence[Score], ranks: Sequence[int]) -> float | None:
    """Spearman correlation of scores with negated ranks (+1 = judge agrees with humans).

    ``None`` scores are dropped first; ``None`` if fewer than 2 remain or either side is constant.
    """
    pairs = _scored_pairs(scores, ranks)
    if pairs is None:
        return None
    xs, ys = pairs
    return _pearson(_average_ranks(xs), _average_ranks(ys))


def _tied_pairs(values: Sequence[float]) -> int:
    """Sum of t(t-1)/2 over groups of t equal values."""
    counts: dict[float, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return sum(t * (t - 1) // 2 for t in counts.values())


def kendall_tau(scores: Sequence[Score], ranks: Sequence[int]) -> float | None:
    """Kendall tau-b of scores with negated ranks (+1 = judge agrees with humans).

    ``None`` scores are dropped first; ``None`` if fewer than 2 remain or either side is constant.
    """
    pairs = _scored_pairs(scores, ranks)
    if pairs is None:
        return None
    xs, ys = pairs
    n = len(xs)
    concordant = discordant = 0
    for i, j in itertools.combinations(range(n), 2):
        sign = (xs[i] - xs[j]) * (ys[i] - ys[j])
        if sign > 0:
            concordant += 1
        elif sign < 0:
            discordant += 1
    n0 = n * (n - 1) // 2
    n1, n2 = _tied_pairs(xs), _tied_pairs(ys)
    tau = (concordant - discordant) / math.sqrt((n0 - n1) * (n0 - n2))
    return max(-1.0, min(1.0, tau))


def mean_defined(values: Iterable[float | None]) -> tuple[float | None, int]:
    """(mean of the non-``None`` values or ``None`` if there are none, number of ``None`` values)."""
    defined: list[float] = []
    undefined = 0
    for v in values:
        if v is None:
            undefined += 1
        else:
            defined.append(v)
    return (sum(defined) / len(defined) if defined else None), undefined


