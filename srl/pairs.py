"""Preference pairs from judged candidates: which reply is chosen and which rejected, per prompt.

Rules (``PairSettings.rule``, ``conf/pairs``):

- ``max_min`` (paper Sec. 3.2, the default): the highest against the lowest mean score.
- ``max_random``: a top-scoring reply against one drawn uniformly from the replies scored strictly
  lower, so the rejected side covers the whole range of failures, not only the worst one. The draw
  is seeded by (seed, iteration, "pairs", prompt_id): repeatable, and independent of prompt order.
- ``length_controlled`` (Meta-Rewarding, Wu et al. 2024, arXiv 2407.19594, length-control
  mechanism): with tier width rho (``length_tier``) and the prompt's score range [lo, hi], the top
  tier is the replies scored >= hi - rho*(hi - lo), the bottom tier those scored
  <= lo + rho*(hi - lo); chosen is the SHORTEST reply of the top tier, rejected the LONGEST of the
  bottom tier (``Candidate.num_tokens``). Among replies the judge scores about equally, DPO is then
  pushed toward the shorter one, against a judge's (and DPO's) drift toward longer replies.
  rho = 0 is ``max_min`` with length as the tie-break.

Common to all rules: replies whose score is ``None`` (no judge sample parsed, or no judgement) are
left out; a prompt needs two scored replies with different scores, and the kept pair needs
chosen score - rejected score >= ``min_margin`` (checked on the pair the rule picked). Every
remaining tie (equal scores, equal lengths) goes to the lowest candidate index, and the random draw
runs over replies sorted by index, so the selection never depends on the order of the input.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from typing import Sequence

from srl.oasst import derive_seed
from srl.records import Candidate, Judgement

RULES = ("max_min", "max_random", "length_controlled")
DROP_REASONS = ("fewer_than_two_scored", "all_tied", "margin_below_min")

Scored = list[tuple[float, Candidate]]  # (mean score, reply), sorted by candidate index


@dataclasses.dataclass
class PairSettings:
    """How a prompt's judged replies become one (chosen, rejected) pair (``conf/pairs``).

    ``rule``: one of ``RULES``; ``min_margin``: smallest score gap of a kept pair, in judge points;
    ``length_tier``: rho of ``length_controlled``, a fraction of the prompt's score range in
    [0, 0.5) so the tiers never overlap; ``seed``: run seed for ``max_random``.
    """

    rule: str = "max_min"
    min_margin: float = 0.0
    length_tier: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"pairs.rule={self.rule!r} is not a pair rule; choose one of {list(RULES)}")
        if not 0.0 <= self.length_tier < 0.5:
            raise ValueError(f"pairs.length_tier={self.length_tier} must be in [0, 0.5) (a fraction of the score range per tier)")
        if self.min_margin < 0:
            raise ValueError(f"pairs.min_margin={self.min_margin} must be >= 0 (a score gap in judge points)")


def pick_max_min(scored: Scored) -> tuple[int, int]:
    """Indices into ``scored`` of the first highest and the first lowest score (paper Sec. 3.2)."""
    top = max(s for s, _ in scored)
    bottom = min(s for s, _ in scored)
    return next(i for i, (s, _) in enumerate(scored) if s == top), next(i for i, (s, _) in enumerate(scored) if s == bottom)


def pick_max_random(scored: Scored, rng: random.Random) -> tuple[int, int]:
    """The first highest score, against a uniform draw among the replies scored strictly lower."""
    top = max(s for s, _ in scored)
    chosen = next(i for i, (s, _) in enumerate(scored) if s == top)
    lower = [i for i, (s, _) in enumerate(scored) if s < top]
    return chosen, rng.choice(lower)


def pick_length_controlled(scored: Scored, rho: float) -> tuple[int, int]:
    """Shortest reply of the top tier against the longest of the bottom tier (Meta-Rewarding).

    Top tier: score >= hi - rho*(hi - lo); bottom tier: score <= lo + rho*(hi - lo). Length ties go
    to the lowest candidate index. A 1e-9 slack keeps a score on a tier edge inside the tier
    despite float rounding (mean scores such as 13/3).
    """
    hi = max(s for s, _ in scored)
    lo = min(s for s, _ in scored)
    width = rho * (hi - lo)
    top = [i for i, (s, _) in enumerate(scored) if s >= hi - width - 1e-9]
    bottom = [i for i, (s, _) in enumerate(scored) if s <= lo + width + 1e-9]
    chosen = min(top, key=lambda i: (scored[i][1].num_tokens, i))
    rejected = min(bottom, key=lambda i: (-scored[i][1].num_tokens, i))
    return chosen, rejected


def select_pairs(
    candidates: Sequence[Candidate], judgements: Sequence[Judgement], settings: PairSettings | None = None, iteration: int = 0
) -> tuple[list[tuple[Candidate, Candidate, float, float]], dict[str, float]]:
    """(chosen, rejected, chosen score, rejected score) per kept prompt, in first-seen prompt order.

    ``iteration`` only seeds ``max_random``. Counts: ``dropped/<reason>`` for each of
    ``DROP_REASONS``, ``kept``, ``prompts``, and ``chosen_tokens_mean`` / ``rejected_tokens_mean``
    (mean ``num_tokens`` of the kept replies, 0.0 when none is kept) to show each rule's length bias.
    """
    settings = PairSettings() if settings is None else settings
    if not isinstance(settings, PairSettings):
        raise TypeError(f"select_pairs takes PairSettings (conf/pairs) as its third argument, got {settings!r}")
    scores = {(j.prompt_id, j.candidate): j.score for j in judgements}
    by_prompt: dict[str, list[Candidate]] = collections.defaultdict(list)
    for c in candidates:
        by_prompt[c.prompt_id].append(c)
    counts: dict[str, float] = {f"dropped/{r}": 0 for r in DROP_REASONS}
    pairs = []
    for prompt_id, group in by_prompt.items():
        ranked = sorted(group, key=lambda c: c.candidate)
        scored = [(s, c) for c in ranked if (s := scores.get((c.prompt_id, c.candidate))) is not None]
        if len(scored) < 2:
            counts["dropped/fewer_than_two_scored"] += 1
            continue
        if len({s for s, _ in scored}) == 1:
            counts["dropped/all_tied"] += 1
            continue
        if settings.rule == "max_min":
            i, j = pick_max_min(scored)
        elif settings.rule == "max_random":
            i, j = pick_max_random(scored, random.Random(derive_seed(settings.seed, iteration, "pairs", prompt_id)))
        else:
            i, j = pick_length_controlled(scored, settings.length_tier)
        (cs, chosen), (rs, rejected) = scored[i], scored[j]
        if cs - rs < settings.min_margin:
            counts["dropped/margin_below_min"] += 1
            continue
        pairs.append((chosen, rejected, cs, rs))
    counts["kept"] = len(pairs)
    counts["prompts"] = len(by_prompt)
    counts["chosen_tokens_mean"] = sum(c.num_tokens for c, _, _, _ in pairs) / len(pairs) if pairs else 0.0
    counts["rejected_tokens_mean"] = sum(r.num_tokens for _, r, _, _ in pairs) / len(pairs) if pairs else 0.0
    return pairs, counts
