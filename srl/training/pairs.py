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

Truncated replies (``Candidate.finished`` False: cut at max_new_tokens) follow
``PairSettings.truncated``, in every rule:

- ``not_chosen`` (the default): a truncated reply may be rejected but is never chosen, so DPO never
  teaches a reply that stops mid-sentence. The rule's chosen side (the top score, the top tier and
  its range end ``hi``) is computed over finished replies only, its rejected side over all.
- ``exclude``: truncated replies never enter pair selection, on either side.
- ``allow``: truncated replies are treated like finished ones (the behaviour before the setting).

Common to all rules: replies whose score is ``None`` (no judge sample parsed, or no judgement) are
left out; a prompt needs two scored replies with different scores, the truncation policy must leave
a chosen reply scored strictly above a rejected one (else ``dropped/truncated``), and the kept pair
needs chosen score - rejected score >= ``min_margin`` (checked on the pair the rule picked). Every
remaining tie (equal scores, equal lengths) goes to the lowest candidate index, and the random draw
runs over replies sorted by index, so the selection never depends on the order of the input.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from typing import Sequence

from srl.core.hashing import derive_seed
from srl.data.preference_sets import PreferenceSetSettings
from srl.data.records import Candidate, Judgement

RULES = ("max_min", "max_random", "length_controlled")


TRUNCATED = ("not_chosen", "exclude", "allow")


DROP_REASONS = ("fewer_than_two_scored", "all_tied", "truncated", "margin_below_min")


Scored = list[tuple[float, Candidate]]  # (mean score, reply), sorted by candidate index


@dataclasses.dataclass
class PairSettings:
    """How a prompt's judged replies become one (chosen, rejected) pair (``conf/pairs``).

    ``rule``: one of ``RULES``; ``min_margin``: smallest score gap of a kept pair, in judge points;
    ``length_tier``: rho of ``length_controlled``, a fraction of the prompt's score range in
    [0, 0.5) so the tiers never overlap; ``seed``: run seed for ``max_random``; ``truncated``: one
    of ``TRUNCATED``, how replies cut at max_new_tokens take part (module docstring).
    """

    rule: str = "max_min"
    min_margin: float = 0.0
    length_tier: float = 0.25
    seed: int = 0
    truncated: str = "not_chosen"
    # Given preference pairs (TRL's prompt/chosen/rejected, as eval.preference_sets reads them) added to
    # every iteration's self-made pairs; a tie row is left out (it prefers neither reply). () : none.
    extra: Sequence[PreferenceSetSettings] = ()

    def __post_init__(self) -> None:
        self.extra = [e if isinstance(e, PreferenceSetSettings) else PreferenceSetSettings(**dict(e)) for e in self.extra]
        names = [e.name for e in self.extra]
        if len(set(names)) != len(names):
            raise ValueError(f"pairs.extra: names must differ, got {names}")
        if {"self", "judge"} & set(names):
            raise ValueError(f"pairs.extra: 'self' and 'judge' name the iteration's own pairs and Meta-Rewarding's judge pairs; rename {names}")
        if self.rule not in RULES:
            raise ValueError(f"pairs.rule={self.rule!r} is not a pair rule; choose one of {list(RULES)}")
        if not 0.0 <= self.length_tier < 0.5:
            raise ValueError(f"pairs.length_tier={self.length_tier} must be in [0, 0.5) (a fraction of the score range per tier)")
        if self.min_margin < 0:
            raise ValueError(f"pairs.min_margin={self.min_margin} must be >= 0 (a score gap in judge points)")
        if self.truncated not in TRUNCATED:
            raise ValueError(f"pairs.truncated={self.truncated!r} is not a truncation policy; choose one of {list(TRUNCATED)}")


def sides(scored: Scored, policy: str) -> tuple[list[int], list[int]]:
    """Indices into ``scored`` that may be chosen and that may be rejected under ``policy``."""
    finished = [i for i, (_, c) in enumerate(scored) if c.finished]
    everyone = list(range(len(scored)))
    if policy == "allow":
        return everyone, everyone
    return finished, finished if policy == "exclude" else everyone


def pick_max_min(scored: Scored, up: list[int], down: list[int]) -> tuple[int, int]:
    """The first highest score against the first lowest (paper Sec. 3.2)."""
    top = max(scored[i][0] for i in up)
    bottom = min(scored[i][0] for i in down)
    return next(i for i in up if scored[i][0] == top), next(i for i in down if scored[i][0] == bottom)


def pick_max_random(scored: Scored, up: list[int], down: list[int], rng: random.Random) -> tuple[int, int]:
    """The first highest score, against a uniform draw among the replies scored strictly lower."""
    top = max(scored[i][0] for i in up)
    chosen = next(i for i in up if scored[i][0] == top)
    lower = [i for i in down if scored[i][0] < top]
    return chosen, rng.choice(lower)


def pick_length_controlled(scored: Scored, up: list[int], down: list[int], rho: float) -> tuple[int, int]:
    """Shortest reply of the top tier against the longest of the bottom tier (Meta-Rewarding).

    hi is the best score of ``up``, lo the worst of ``down``. Top tier: score >= hi - rho*(hi - lo);
    bottom tier: score <= lo + rho*(hi - lo). Length ties go to the lowest candidate index. A 1e-9
    slack keeps a score on a tier edge inside the tier despite float rounding (mean scores such as 13/3).
    """
    hi = max(scored[i][0] for i in up)
    lo = min(scored[i][0] for i in down)
    width = rho * (hi - lo)
    top = [i for i in up if scored[i][0] >= hi - width - 1e-9]
    bottom = [i for i in down if scored[i][0] <= lo + width + 1e-9]
    chosen = min(top, key=lambda i: (scored[i][1].num_tokens, i))
    rejected = min(bottom, key=lambda i: (-scored[i][1].num_tokens, i))
    return chosen, rejected


def select_pairs(
    candidates: Sequence[Candidate], judgements: Sequence[Judgement], settings: PairSettings | None = None, iteration: int = 0
) -> tuple[list[tuple[Candidate, Candidate, float, float]], dict[str, float]]:
    """(chosen, rejected, chosen score, rejected score) per kept prompt, in first-seen prompt order.

    ``iteration`` only seeds ``max_random``. Counts: ``dropped/<reason>`` for each of
    ``DROP_REASONS`` (``dropped/truncated``: prompts that had two differently scored replies but no
    pair under ``settings.truncated``), ``kept``, ``prompts``, ``truncated_candidates`` (replies cut
    at max_new_tokens, of all candidates), ``chosen_truncated`` / ``rejected_truncated`` (kept pairs
    whose chosen / rejected reply is truncated), and ``chosen_tokens_mean`` / ``rejected_tokens_mean``
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
        up, down = sides(scored, settings.truncated)
        if not up or not down or max(scored[i][0] for i in up) <= min(scored[i][0] for i in down):
            counts["dropped/truncated"] += 1
            continue
        if settings.rule == "max_min":
            i, j = pick_max_min(scored, up, down)
        elif settings.rule == "max_random":
            i, j = pick_max_random(scored, up, down, random.Random(derive_seed(settings.seed, iteration, "pairs", prompt_id)))
        else:
            i, j = pick_length_controlled(scored, up, down, settings.length_tier)
        (cs, chosen), (rs, rejected) = scored[i], scored[j]
        if cs - rs < settings.min_margin:
            counts["dropped/margin_below_min"] += 1
            continue
        pairs.append((chosen, rejected, cs, rs))
    counts["kept"] = len(pairs)
    counts["prompts"] = len(by_prompt)
    counts.update(truncation_counts(candidates, pairs))
    counts["chosen_tokens_mean"] = sum(c.num_tokens for c, _, _, _ in pairs) / len(pairs) if pairs else 0.0
    counts["rejected_tokens_mean"] = sum(r.num_tokens for _, r, _, _ in pairs) / len(pairs) if pairs else 0.0
    return pairs, counts


def truncation_counts(candidates: Sequence[Candidate], pairs: Sequence[tuple[Candidate, Candidate, float, float]]) -> dict[str, int]:
    """Replies cut at max_new_tokens among ``candidates``, and kept pairs with a truncated side."""
    return {
        "truncated_candidates": sum(1 for c in candidates if not c.finished),
        "chosen_truncated": sum(1 for c, _, _, _ in pairs if not c.finished),
        "rejected_truncated": sum(1 for _, r, _, _ in pairs if not r.finished),
    }
