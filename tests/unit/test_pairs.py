"""Pair selection with ties, unparsable scores and margins, by hand."""

from __future__ import annotations

from srl.pairs import select_pairs
from srl.records import Candidate, Judgement


def cands(prompt_id: str, n: int) -> list[Candidate]:
    return [Candidate(prompt_id, k, f"prompt {prompt_id}", f"reply {prompt_id}-{k}", 5, True) for k in range(n)]


def judged(prompt_id: str, scores: list[float | None]) -> list[Judgement]:
    return [Judgement(prompt_id, k, ("t",), (s,), s) for k, s in enumerate(scores)]


def test_highest_vs_lowest_with_none_and_ties():
    candidates = cands("a", 4) + cands("b", 4) + cands("c", 4) + cands("d", 3)
    judgements = (
        judged("a", [3.0, 4.5, None, 1.0])       # chosen 1 (4.5), rejected 3 (1.0)
        + judged("b", [2.0, 2.0, 2.0, None])     # all scored replies tie -> dropped
        + judged("c", [None, None, 5.0, None])   # one scored reply -> dropped
        + judged("d", [4.0, 1.0, 4.0])           # top tie: lowest index (0) chosen
    )
    pairs, counts = select_pairs(candidates, judgements)
    got = {c.prompt_id: (c.candidate, r.candidate, cs, rs) for c, r, cs, rs in pairs}
    assert got == {"a": (1, 3, 4.5, 1.0), "d": (0, 1, 4.0, 1.0)}
    assert counts["dropped/all_tied"] == 1 and counts["dropped/fewer_than_two_scored"] == 1
    assert counts["kept"] == 2 and counts["prompts"] == 4


def test_min_margin():
    candidates = cands("a", 2) + cands("b", 2)
    judgements = judged("a", [3.0, 2.5]) + judged("b", [5.0, 1.0])
    pairs, counts = select_pairs(candidates, judgements, min_margin=1.0)
    assert [(c.prompt_id, cs - rs) for c, _, cs, rs in pairs] == [("b", 4.0)]
    assert counts["dropped/margin_below_min"] == 1
    # Margin exactly at the threshold is kept.
    pairs, _ = select_pairs(candidates, judgements, min_margin=0.5)
    assert len(pairs) == 2


def test_missing_judgement_counts_as_unscored():
    pairs, counts = select_pairs(cands("a", 3), judged("a", [4.0]))
    assert pairs == [] and counts["dropped/fewer_than_two_scored"] == 1
