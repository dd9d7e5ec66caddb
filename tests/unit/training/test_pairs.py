"""Pair selection rules with ties, unparsable scores, margins and lengths, by hand."""

from __future__ import annotations

import collections
import dataclasses
import random

import pytest

from srl.core.hashing import derive_seed
from srl.data.records import Candidate, Judgement
from srl.training.pairs import RULES, PairSettings, select_pairs


def cands(prompt_id: str, n: int, lengths: list[int] | None = None) -> list[Candidate]:
    lengths = lengths or [5] * n
    return [Candidate(prompt_id, k, f"prompt {prompt_id}", f"reply {prompt_id}-{k}", lengths[k], True) for k in range(n)]


def judged(prompt_id: str, scores: list[float | None]) -> list[Judgement]:
    return [Judgement(prompt_id, k, ("t",), (s,), s) for k, s in enumerate(scores)]


def picked(pairs) -> dict[str, tuple[int, int, float, float]]:
    return {c.prompt_id: (c.candidate, r.candidate, cs, rs) for c, r, cs, rs in pairs}


# --- max_min (paper Sec. 3.2) ------------------------------------------------------------------


def test_highest_vs_lowest_with_none_and_ties():
    candidates = cands("a", 4) + cands("b", 4) + cands("c", 4) + cands("d", 3)
    judgements = (
        judged("a", [3.0, 4.5, None, 1.0])       # chosen 1 (4.5), rejected 3 (1.0)
        + judged("b", [2.0, 2.0, 2.0, None])     # all scored replies tie -> dropped
        + judged("c", [None, None, 5.0, None])   # one scored reply -> dropped
        + judged("d", [4.0, 1.0, 4.0])           # top tie: lowest index (0) chosen
    )
    pairs, counts = select_pairs(candidates, judgements)
    assert picked(pairs) == {"a": (1, 3, 4.5, 1.0), "d": (0, 1, 4.0, 1.0)}
    assert counts["dropped/all_tied"] == 1 and counts["dropped/fewer_than_two_scored"] == 1
    assert counts["kept"] == 2 and counts["prompts"] == 4


def test_ties_go_to_lowest_index_whatever_the_input_order():
    candidates = list(reversed(cands("a", 4)))
    judgements = list(reversed(judged("a", [1.0, 5.0, 1.0, 5.0])))
    pairs, _ = select_pairs(candidates, judgements)
    assert picked(pairs) == {"a": (1, 0, 5.0, 1.0)}


def test_missing_judgement_counts_as_unscored():
    pairs, counts = select_pairs(cands("a", 3), judged("a", [4.0]))
    assert pairs == [] and counts["dropped/fewer_than_two_scored"] == 1


def test_token_means_of_kept_pairs():
    candidates = cands("a", 3, [10, 20, 30]) + cands("b", 2, [7, 3]) + cands("c", 2, [100, 100])
    judgements = judged("a", [5.0, 1.0, 3.0]) + judged("b", [0.0, 2.0]) + judged("c", [3.0, 3.0])
    pairs, counts = select_pairs(candidates, judgements)
    # a: chosen 0 (10 tokens), rejected 1 (20); b: chosen 1 (3), rejected 0 (7); c tied, dropped.
    assert picked(pairs) == {"a": (0, 1, 5.0, 1.0), "b": (1, 0, 2.0, 0.0)}
    assert counts["chosen_tokens_mean"] == (10 + 3) / 2
    assert counts["rejected_tokens_mean"] == (20 + 7) / 2
    _, counts = select_pairs(cands("c", 2), judged("c", [3.0, 3.0]))
    assert counts["chosen_tokens_mean"] == counts["rejected_tokens_mean"] == 0.0


# --- min_margin, every rule -----------------------------------------------------------------------


def test_min_margin():
    candidates = cands("a", 2) + cands("b", 2)
    judgements = judged("a", [3.0, 2.5]) + judged("b", [5.0, 1.0])
    pairs, counts = select_pairs(candidates, judgements, PairSettings(min_margin=1.0))
    assert [(c.prompt_id, cs - rs) for c, _, cs, rs in pairs] == [("b", 4.0)]
    assert counts["dropped/margin_below_min"] == 1
    # Margin exactly at the threshold is kept.
    pairs, _ = select_pairs(candidates, judgements, PairSettings(min_margin=0.5))
    assert len(pairs) == 2


@pytest.mark.parametrize("rule", RULES)
def test_min_margin_applies_to_every_rule(rule):
    # Two replies, gap 0.5: every rule must pick (0, 1); min_margin 0.6 drops it, 0.5 keeps it.
    candidates, judgements = cands("a", 2, [4, 9]), judged("a", [3.0, 2.5])
    pairs, counts = select_pairs(candidates, judgements, PairSettings(rule=rule, min_margin=0.6))
    assert pairs == [] and counts["dropped/margin_below_min"] == 1 and counts["kept"] == 0
    pairs, _ = select_pairs(candidates, judgements, PairSettings(rule=rule, min_margin=0.5))
    assert picked(pairs) == {"a": (0, 1, 3.0, 2.5)}


def test_margin_is_checked_on_the_pair_the_rule_picked():
    # length_controlled, rho 0.25 on scores [5, 4.5, 1, 1.5]: range 4, top tier >= 4.0 -> {0, 1},
    # bottom tier <= 2.0 -> {2, 3}; lengths [30, 12, 8, 40]: chosen 1 (4.5), rejected 3 (1.5):
    # margin 3.0, though max - min is 4.0.
    candidates, judgements = cands("a", 4, [30, 12, 8, 40]), judged("a", [5.0, 4.5, 1.0, 1.5])
    settings = PairSettings(rule="length_controlled", length_tier=0.25, min_margin=3.5)
    pairs, counts = select_pairs(candidates, judgements, settings)
    assert pairs == [] and counts["dropped/margin_below_min"] == 1
    pairs, _ = select_pairs(candidates, judgements, PairSettings(rule="max_min", min_margin=3.5))
    assert picked(pairs) == {"a": (0, 2, 5.0, 1.0)}


# --- max_random -------------------------------------------------------------------------------


def test_max_random_draw_is_seeded_by_seed_iteration_and_prompt():
    # Scores [4, None, 1, 2, 4]: chosen 0 (first top), the draw runs over indices 2 and 3 (strictly
    # lower, scored). The documented seed: Random(derive_seed(seed, iteration, "pairs", prompt_id)).
    candidates, judgements = cands("p7", 5), judged("p7", [4.0, None, 1.0, 2.0, 4.0])
    pairs, _ = select_pairs(candidates, judgements, PairSettings(rule="max_random", seed=3), iteration=2)
    rejected = random.Random(derive_seed(3, 2, "pairs", "p7")).choice([2, 3])
    assert picked(pairs) == {"p7": (0, rejected, 4.0, {2: 1.0, 3: 2.0}[rejected])}


def test_max_random_single_lower_reply_is_forced():
    # Scores [3, 5, 5]: the one reply below the top tie is 0; chosen is the first top, 1.
    pairs, _ = select_pairs(cands("a", 3), judged("a", [3.0, 5.0, 5.0]), PairSettings(rule="max_random"))
    assert picked(pairs) == {"a": (1, 0, 5.0, 3.0)}


def many_prompts(n: int, scores: list[float]):
    ids = [f"q{i}" for i in range(n)]
    candidates = [c for i in ids for c in cands(i, len(scores))]
    judgements = [j for i in ids for j in judged(i, scores)]
    return candidates, judgements


def test_max_random_repeatable_order_free_and_seed_dependent():
    candidates, judgements = many_prompts(300, [5.0, 3.0, 2.0, 1.0])
    run = lambda seed, it=0, c=candidates: picked(select_pairs(c, judgements, PairSettings(rule="max_random", seed=seed), it)[0])
    first = run(0)
    assert run(0) == first
    assert run(0, c=list(reversed(candidates))) == first  # independent of prompt and reply order
    assert run(1) != first and run(0, it=1) != first
    # The rejected reply is uniform over {1, 2, 3}: about 100 draws each out of 300.
    freq = collections.Counter(r for _, r, _, _ in first.values())
    assert set(freq) == {1, 2, 3} and all(60 <= v <= 140 for v in freq.values())
    assert all(c == 0 for c, _, _, _ in first.values())


def test_max_random_never_rejects_a_reply_tied_with_the_top():
    candidates, judgements = many_prompts(200, [5.0, 5.0, 3.0, 1.0, 5.0])
    pairs, counts = select_pairs(candidates, judgements, PairSettings(rule="max_random", seed=11))
    assert counts["kept"] == 200
    assert {(c.candidate, r.candidate) for c, r, _, _ in pairs} == {(0, 2), (0, 3)}


# --- length_controlled (Meta-Rewarding) -------------------------------------------------------


def test_length_controlled_by_hand():
    # Scores [5, 4.5, 1, 1.5], rho 0.25: range 5 - 1 = 4, width 1.0; top tier >= 4.0 -> {0, 1},
    # bottom tier <= 2.0 -> {2, 3}. Lengths [30, 12, 8, 40]: shortest of the top is 1 (12 tokens),
    # longest of the bottom is 3 (40 tokens). max_min would pair 0 (30 tokens) with 2 (8 tokens).
    candidates, judgements = cands("a", 4, [30, 12, 8, 40]), judged("a", [5.0, 4.5, 1.0, 1.5])
    pairs, counts = select_pairs(candidates, judgements, PairSettings(rule="length_controlled", length_tier=0.25))
    assert picked(pairs) == {"a": (1, 3, 4.5, 1.5)}
    assert (counts["chosen_tokens_mean"], counts["rejected_tokens_mean"]) == (12.0, 40.0)
    pairs, counts = select_pairs(candidates, judgements, PairSettings(rule="max_min"))
    assert picked(pairs) == {"a": (0, 2, 5.0, 1.0)}
    assert (counts["chosen_tokens_mean"], counts["rejected_tokens_mean"]) == (30.0, 8.0)


def test_length_controlled_tier_edges_none_and_length_ties():
    # Scores [4, None, 13/3, 1, 2, 10/3, 1], rho 0.2: range 13/3 - 1 = 10/3, width 2/3;
    # top tier >= 13/3 - 2/3 = 11/3 -> {0 (4), 2 (13/3)} (10/3 is out); bottom tier <= 5/3 -> {3, 6}
    # (2 is out). Lengths [9, 1, 9, 20, 50, 2, 20]: top tier tie at 9 -> lowest index 0; bottom tier
    # tie at 20 -> lowest index 3. The unscored reply 1 is the shortest of all and never counts.
    scores = [4.0, None, 13 / 3, 1.0, 2.0, 10 / 3, 1.0]
    candidates, judgements = cands("a", 7, [9, 1, 9, 20, 50, 2, 20]), judged("a", scores)
    pairs, _ = select_pairs(candidates, judgements, PairSettings(rule="length_controlled", length_tier=0.2))
    assert picked(pairs) == {"a": (0, 3, 4.0, 1.0)}


def test_length_controlled_score_on_the_tier_edge_is_inside():
    # Scores [3, 2.5, 1] (means of judge samples), rho 0.25: width 0.5, top tier >= 2.5 holds reply 1
    # exactly on the edge; it is the shortest (5 tokens) so it is chosen.
    candidates, judgements = cands("a", 3, [50, 5, 10]), judged("a", [3.0, 2.5, 1.0])
    pairs, _ = select_pairs(candidates, judgements, PairSettings(rule="length_controlled", length_tier=0.25))
    assert picked(pairs) == {"a": (1, 2, 2.5, 1.0)}


def test_length_controlled_rho_zero_is_max_min_with_length_tie_break():
    # Scores [5, 5, 1, 1], lengths [40, 10, 3, 30]: top {0, 1} -> shorter 1; bottom {2, 3} -> longer 3.
    candidates, judgements = cands("a", 4, [40, 10, 3, 30]), judged("a", [5.0, 5.0, 1.0, 1.0])
    pairs, _ = select_pairs(candidates, judgements, PairSettings(rule="length_controlled", length_tier=0.0))
    assert picked(pairs) == {"a": (1, 3, 5.0, 1.0)}


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_drops_ties_and_unscored(rule):
    candidates = cands("a", 3) + cands("b", 3)
    judgements = judged("a", [2.0, 2.0, None]) + judged("b", [None, 4.0, None])
    pairs, counts = select_pairs(candidates, judgements, PairSettings(rule=rule))
    assert pairs == []
    assert (counts["dropped/all_tied"], counts["dropped/fewer_than_two_scored"], counts["kept"], counts["prompts"]) == (1, 1, 0, 2)


# --- truncated replies (pairs.truncated) --------------------------------------------------------


def truncated_case():
    """a: scores [5 cut, 4, 3, 1 cut]; b: [5 cut, 2]; c: [2, 1], all finished. 3 truncated replies."""
    candidates = cands("a", 4) + cands("b", 2) + cands("c", 2)
    cut = {("a", 0), ("a", 3), ("b", 0)}
    candidates = [dataclasses.replace(c, finished=(c.prompt_id, c.candidate) not in cut) for c in candidates]
    judgements = judged("a", [5.0, 4.0, 3.0, 1.0]) + judged("b", [5.0, 2.0]) + judged("c", [2.0, 1.0])
    return candidates, judgements


# By hand, per policy. not_chosen: a's top (0, cut) cannot be chosen -> the next best 1 (4.0), against
# the lowest of all, 3 (1.0, cut); b's only finished reply (2.0) has nothing scored below it -> dropped.
# exclude: a is 1 (4.0) vs 2 (3.0) among finished replies only; b dropped. allow: the pairs as if finished.
TRUNCATED_EXPECTED = {
    "not_chosen": ({"a": (1, 3, 4.0, 1.0), "c": (0, 1, 2.0, 1.0)}, {"chosen_truncated": 0, "rejected_truncated": 1, "dropped/truncated": 1}),
    "exclude": ({"a": (1, 2, 4.0, 3.0), "c": (0, 1, 2.0, 1.0)}, {"chosen_truncated": 0, "rejected_truncated": 0, "dropped/truncated": 1}),
    "allow": ({"a": (0, 3, 5.0, 1.0), "b": (0, 1, 5.0, 2.0), "c": (0, 1, 2.0, 1.0)},
              {"chosen_truncated": 2, "rejected_truncated": 1, "dropped/truncated": 0}),
}


@pytest.mark.parametrize("rule", ["max_min", "length_controlled"])
@pytest.mark.parametrize("policy", sorted(TRUNCATED_EXPECTED))
def test_truncated_policy_by_hand(rule, policy):
    # length_controlled (rho 0.25) gives max_min's pairs here; not_chosen: hi 4 (finished), lo 1,
    # top tier >= 3.25 -> {1}, bottom <= 1.75 -> {3}; exclude: hi 4, lo 3 -> {1} vs {2}; allow: top
    # tier >= 4 -> {0, 1}, equal lengths -> 0, bottom <= 2 -> {3}.
    candidates, judgements = truncated_case()
    pairs, counts = select_pairs(candidates, judgements, PairSettings(rule=rule, truncated=policy))
    expected_pairs, expected_counts = TRUNCATED_EXPECTED[policy]
    assert picked(pairs) == expected_pairs
    assert {k: counts[k] for k in expected_counts} == expected_counts
    assert counts["truncated_candidates"] == 3 and counts["kept"] == len(expected_pairs) and counts["prompts"] == 3


def test_truncated_default_is_not_chosen():
    pairs, counts = select_pairs(*truncated_case())  # the truncated top reply of a is not chosen
    assert picked(pairs) == TRUNCATED_EXPECTED["not_chosen"][0] and counts["dropped/truncated"] == 1
    assert PairSettings().truncated == "not_chosen"


@pytest.mark.parametrize("policy", sorted(TRUNCATED_EXPECTED))
def test_truncated_policy_max_random(policy):
    # a under not_chosen: chosen 1 (4.0, the best finished), the draw over the replies scored below
    # 4.0 -> {2, 3} (3 is cut: it may be rejected); exclude: {2} only; allow: chosen 0, draw over {1, 2, 3}.
    candidates, judgements = truncated_case()
    pairs, counts = select_pairs(candidates, judgements, PairSettings(rule="max_random", seed=5, truncated=policy), iteration=1)
    rng = random.Random(derive_seed(5, 1, "pairs", "a"))
    scores = [5.0, 4.0, 3.0, 1.0]
    chosen, lower = {"not_chosen": (1, [2, 3]), "exclude": (1, [2]), "allow": (0, [1, 2, 3])}[policy]
    rejected = rng.choice(lower)
    assert picked(pairs)["a"] == (chosen, rejected, scores[chosen], scores[rejected])
    assert ("b" in picked(pairs)) == (policy == "allow")
    assert counts["dropped/truncated"] == (0 if policy == "allow" else 1)
    assert counts["rejected_truncated"] == sum(1 for _, r, _, _ in pairs if not r.finished)


def test_truncated_policy_drops_only_prompts_it_empties():
    # Only cut replies scored, or one finished reply at the bottom: no pair under exclude or not_chosen.
    candidates = [dataclasses.replace(c, finished=c.candidate == 2) for c in cands("a", 3)]
    judgements = judged("a", [4.0, 3.0, 1.0])
    for policy, kept in (("not_chosen", 0), ("exclude", 0), ("allow", 1)):
        pairs, counts = select_pairs(candidates, judgements, PairSettings(truncated=policy))
        assert (len(pairs), counts["dropped/truncated"], counts["truncated_candidates"]) == (kept, 1 - kept, 2)


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rule": "best_worst"}, "pairs.rule='best_worst' is not a pair rule; choose one of ['max_min', 'max_random', 'length_controlled']"),
        ({"length_tier": 0.5}, "pairs.length_tier=0.5 must be in [0, 0.5)"),
        ({"length_tier": -0.1}, "pairs.length_tier=-0.1 must be in [0, 0.5)"),
        ({"min_margin": -1.0}, "pairs.min_margin=-1.0 must be >= 0"),
        ({"truncated": "drop"}, "pairs.truncated='drop' is not a truncation policy; choose one of ['not_chosen', 'exclude', 'allow']"),
    ],
)
def test_settings_validation(kwargs, message):
    with pytest.raises(ValueError) as err:
        PairSettings(**kwargs)
    assert message in str(err.value)


def test_a_bare_margin_is_refused():
    # The old signature took min_margin third; it now goes inside PairSettings.
    with pytest.raises(TypeError, match=r"select_pairs takes PairSettings \(conf/pairs\) as its third argument, got 1.0"):
        select_pairs(cands("a", 2), judged("a", [2.0, 1.0]), 1.0)


@pytest.mark.parametrize("name, rule", [("max_min", "max_min"), ("max_random", "max_random"), ("length_controlled", "length_controlled")])
def test_conf_pairs_group_instantiates(name, rule):
    from conftest import compose
    from hydra.utils import instantiate

    # The group joins the root defaults as `pairs: max_min`; before that it is added with `+pairs=`.
    prefix = "" if "pairs" in compose() else "+"
    settings = instantiate(compose([f"{prefix}pairs={name}", "seed=7"]).pairs)
    assert settings == PairSettings(rule=rule, min_margin=0.0, length_tier=0.25, seed=7)
