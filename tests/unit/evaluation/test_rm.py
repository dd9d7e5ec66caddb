"""Judge metrics with the "longer reply wins" baseline and bootstrap intervals, computed by hand;
the pointwise head-to-head; the tables."""

from __future__ import annotations

import pytest

from srl.data.preference_sets import PreferencePair
from srl.data.records import Candidate, Judgement, RankedPrompt
from srl.evaluation.head_to_head import pointwise_metrics, score_outcome
from srl.evaluation.intervals import bootstrap_interval
from srl.evaluation.model_eval import pairs_as_groups
from srl.evaluation.report import write_table
from srl.evaluation.rm import rm_metrics
from srl.judging.templates import load_judge_template

T = load_judge_template()


def j(pid: str, i: int, score: float | None) -> Judgement:
    return Judgement(pid, i, ("x",), (score,), score)


# g1: replies of 1, 3 and 2 words, ranks 0 (best), 1, 2. g2: 4 words (rank 1) vs 1 word (rank 0).
GROUPS = [
    RankedPrompt("p", ("one", "one two three", "one two"), (0, 1, 2), "t1", "g1"),
    RankedPrompt("q", ("a b c d", "e"), (1, 0), "t2", "g2"),
]


def test_length_baseline_on_the_same_pairs_by_hand():
    # Judge: g1 scores 5, 3, None (reply 2 unparsed); g2 scores 2 (worse), 4 (better).
    judgements = [j("g1", 0, 5), j("g1", 1, 3), j("g1", 2, None), j("g2", 0, 2), j("g2", 1, 4)]
    out = rm_metrics(GROUPS, judgements, T, samples=200, seed=0)
    # Judge scored pairs: g1 (0,1) agree; g2 (1 better, 0 worse) agree -> 2 pairs, acc 1.
    assert out["pairs"] == 2 and out["pairs_unscored"] == 2 and out["pairwise_acc"] == 1.0
    # Longer wins on the same two pairs: g1 reply 1 (3 words) beats reply 0 (1 word): wrong;
    # g2 reply 0 (4 words, worse) beats reply 1: wrong -> 0.
    assert out["length_pairwise_acc"] == 0.0
    # On every pair: g1 (0,1) wrong, (0,2) wrong (2 words > 1), (1,2) right (3 > 2); g2 wrong -> 1/4.
    assert out["length_pairwise_acc_all"] == pytest.approx(1 / 4)
    assert out["vs_length"] == "above"  # the interval [1, 1] lies above 0
    assert out["pairwise_acc_ci_low"] == out["pairwise_acc_ci_high"] == 1.0


def test_intervals_are_a_bootstrap_over_prompts():
    judgements = [j("g1", 0, 1), j("g1", 1, 3), j("g1", 2, 2), j("g2", 0, 2), j("g2", 1, 4)]
    out = rm_metrics(GROUPS, judgements, T, samples=500, seed=3)
    # g1: (0,1) wrong, (0,2) wrong, (1,2) right -> 1/3; g2 right -> overall 2/4.
    assert out["pairwise_acc"] == pytest.approx(0.5)
    # Resampling prompts: only g1 -> 1/3, only g2 -> 1; the interval spans those extremes.
    assert out["pairwise_acc_ci_low"] == pytest.approx(1 / 3) and out["pairwise_acc_ci_high"] == pytest.approx(1.0)
    # Longer wins: g1 (0,1) wrong, (0,2) wrong, (1,2) right; g2's better reply is the shorter: 1/4,
    # below the judge's whole interval.
    assert out["length_pairwise_acc"] == pytest.approx(1 / 4) and out["vs_length"] == "above"
    # Spearman per prompt: g1 scores (1,3,2) vs -ranks (0,-1,-2) -> -0.5; g2 -> +1; mean 0.25.
    assert out["spearman"] == pytest.approx(0.25)
    assert out["spearman_ci_low"] == pytest.approx(-0.5) and out["spearman_ci_high"] == pytest.approx(1.0)


def test_a_judge_below_the_length_baseline_is_marked_below():
    groups = [RankedPrompt(f"p{k}", ("long reply here", "short"), (0, 1), f"t{k}", f"g{k}") for k in range(6)]
    judgements = [x for k in range(6) for x in (j(f"g{k}", 0, 1), j(f"g{k}", 1, 4))]  # always prefers the worse, shorter one
    out = rm_metrics(groups, judgements, T, samples=100, seed=0)
    assert out["pairwise_acc"] == 0.0 and out["length_pairwise_acc"] == 1.0 and out["vs_length"] == "below"


def test_human_ties_are_counted_apart_and_left_out_of_accuracy():
    pairs = [PreferencePair("s:1", "p", "good answer", "bad", False), PreferencePair("s:2", "q", "x y", "z w", True)]
    groups = pairs_as_groups(pairs)
    assert [g.ranks for g in groups] == [(0, 1), (0, 0)] and groups[1].message_id == "s:2"
    out = rm_metrics(groups, [j("s:1", 0, 4), j("s:1", 1, 2), j("s:2", 0, 3), j("s:2", 1, 3)], T, samples=50, seed=0)
    assert out["pairs"] == 1 and out["pairwise_acc"] == 1.0
    assert (out["tie_label_pairs"], out["tie_label_judge_ties"]) == (1, 1)


def test_bootstrap_interval_of_no_unit_is_undefined():
    assert bootstrap_interval([], lambda us: 1.0, 10, 0) == (None, None)
    assert bootstrap_interval([1, 2], lambda us: None, 10, 0) == (None, None)


def c(pid: str, text: str) -> Candidate:
    return Candidate(pid, 0, "prompt", text, len(text.split()), True)


def test_pointwise_head_to_head_by_hand():
    assert score_outcome(4, 3, 0.0) == "win" and score_outcome(3, 3.4, 0.5) == "tie" and score_outcome(1, 3, 0.5) == "loss"
    assert score_outcome(None, 3, 0.0) is None
    mine = {p: c(p, "a b") for p in ("p1", "p2", "p3", "p4")}
    theirs = {p: c(p, "a b c d") for p in mine}
    judged = [j("p1", 0, 4), j("p1", 1, 2), j("p2", 0, 3), j("p2", 1, 3), j("p3", 0, 1), j("p3", 1, 5), j("p4", 0, None), j("p4", 1, 2)]
    out = pointwise_metrics(judged, mine, theirs, 0.0, 200, 0)
    assert out["protocol"] == "pointwise" and out["prompts"] == 4 and out["prompts_scored"] == 3 and out["prompts_unscored"] == 1
    assert (out["win_rate"], out["tie_rate"], out["loss_rate"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert out["score_model"] == pytest.approx((4 + 3 + 1) / 3) and out["score_baseline"] == pytest.approx((2 + 3 + 5 + 2) / 4)
    assert out["score_parse_fail_rate"] == pytest.approx(1 / 8)
    assert out["len_words_model"] == 2 and out["len_words_baseline"] == 4
    assert 0 <= out["win_rate_ci_low"] <= 1 / 3 <= out["win_rate_ci_high"] <= 1


def test_tables_show_the_baseline_interval_pair_count_and_preference_sets(tmp_path):
    judgements = [j("g1", 0, 5), j("g1", 1, 3), j("g1", 2, None), j("g2", 0, 2), j("g2", 1, 4)]
    rm = {f"rm/{k}": v for k, v in rm_metrics(GROUPS, judgements, T, samples=50, seed=0).items()}
    pref = {f"pref/mine/rm/{k}": v for k, v in rm_metrics(GROUPS[:1], judgements, T, samples=50, seed=0).items()}
    row = {**rm, **pref, "implicit/accuracy": 0.25, "implicit/accuracy_ci_low": 0.0, "implicit/accuracy_ci_high": 0.5, "implicit/pairs": 4,
           "h2h/protocol": "pointwise", "h2h/judge": "M1", "h2h/win_rate": 0.5}
    tables = write_table(tmp_path / "t.md", "T", [("M1", row)])
    assert [k for k, _, _ in tables] == ["eval/table", "eval/models_table", "eval/pref/mine/table"]
    judge = dict(zip(tables[0][1], tables[0][2][0]))
    assert judge["pairs"] == "2" and judge["pairwise acc"] == "1.000 [1.00, 1.00]" and judge["longer wins"].startswith("0.000")
    assert judge["vs longer"] == "above"
    models = dict(zip(tables[1][1], tables[1][2][0]))
    assert models["implicit acc"] == "0.250 [0.00, 0.50]" and models["protocol"] == "pointwise" and models["judge"] == "M1"
    assert dict(zip(tables[2][1], tables[2][2][0]))["pairs"] == "1"
    text = (tmp_path / "t.md").read_text()
    assert "## Judge quality" in text and "## Preference set mine" in text and "longer wins" in text
