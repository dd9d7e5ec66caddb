"""Preference pairs from judged candidates (paper Sec. 3.2): highest vs lowest mean score per prompt.

Replies whose score is ``None`` (no judge sample parsed) are left out; a prompt needs two scored
replies with different scores, and at least ``min_margin`` between them. Among equal top (or
bottom) scores the lowest candidate index is taken, so the choice is deterministic.
"""

from __future__ import annotations

import collections
from typing import Sequence

from srl.records import Candidate, Judgement

DROP_REASONS = ("fewer_than_two_scored", "all_tied", "margin_below_min")


def select_pairs(
    candidates: Sequence[Candidate], judgements: Sequence[Judgement], min_margin: float = 0.0
) -> tuple[list[tuple[Candidate, Candidate, float, float]], dict[str, int]]:
    """(chosen, rejected, chosen score, rejected score) per kept prompt, and counts by reason."""
    scores = {(j.prompt_id, j.candidate): j.score for j in judgements}
    by_prompt: dict[str, list[Candidate]] = collections.defaultdict(list)
    for c in candidates:
        by_prompt[c.prompt_id].append(c)
    counts = collections.Counter({f"dropped/{r}": 0 for r in DROP_REASONS})
    pairs = []
    for prompt_id, group in by_prompt.items():
        scored = sorted(((scores.get((c.prompt_id, c.candidate)), c) for c in group), key=lambda sc: sc[1].candidate)
        scored = [(s, c) for s, c in scored if s is not None]
        if len(scored) < 2:
            counts["dropped/fewer_than_two_scored"] += 1
            continue
        top = max(s for s, _ in scored)
        bottom = min(s for s, _ in scored)
        if top == bottom:
            counts["dropped/all_tied"] += 1
            continue
        if top - bottom < min_margin:
            counts["dropped/margin_below_min"] += 1
            continue
        chosen = next(c for s, c in scored if s == top)
        rejected = next(c for s, c in scored if s == bottom)
        pairs.append((chosen, rejected, top, bottom))
    counts["kept"] = len(pairs)
    counts["prompts"] = len(by_prompt)
    return pairs, dict(counts)
