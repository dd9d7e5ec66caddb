"""Head-to-head: verdict parsing, both-order outcomes, bootstrap intervals and metrics, by hand."""

from __future__ import annotations

import random

import numpy as np
import pytest

from srl.data.records import Candidate
from srl.evaluation.head_to_head import Comparison, bootstrap_intervals, h2h_metrics, outcome, percentile, side_of
from srl.judging.builtin_templates import PAIRWISE
from srl.judging.parsing import parse_verdict
from srl.judging.templates import PairwiseTemplate, load_pairwise_template


@pytest.mark.parametrize("text, expected", [
    ("The first is clearer.\nWinner: A", "A"),
    ("winner: b.", "B"),
    ("**Winner:** tie", "tie"),
    ("Winner: Response B", "B"),
    ("The winner is A", "A"),
    ("[[A]]", "A"),
    ("[[C]]", "tie"),  # MT-Bench pairwise: C means tie
    ("Winner: B at first glance... Winner: A", "A"),  # the last verdict counts
    ("A is better than B.", None),
    ("Winner: Both", None),
    ("Winner: Answer", None),
    ("", None),
    (None, None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_side_of_maps_positions_to_sides():
    assert side_of("A", "ab") == "model" and side_of("B", "ab") == "baseline"
    assert side_of("A", "ba") == "baseline" and side_of("B", "ba") == "model"
    assert side_of("tie", "ba") == "tie" and side_of(None, "ab") is None


@pytest.mark.parametrize("first, second, expected", [
    ("model", "model", "win"),
    ("baseline", "baseline", "loss"),
    ("tie", "tie", "tie"),
    ("model", "baseline", "tie"),  # a judge that always picks position A: the orders disagree
    ("model", "tie", "tie"),
    (None, "model", None),
    ("baseline", None, None),
])
def test_outcome_disagreement_is_a_tie(first, second, expected):
    assert outcome(first, second) == expected


def test_percentile_matches_numpy():
    rng = random.Random(3)
    for n in (1, 2, 5, 50):
        values = [rng.random() for _ in range(n)]
        for q in (0, 2.5, 50, 97.5, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_bootstrap_intervals():
    # All wins: every resample has win rate 1.
    assert bootstrap_intervals(["win"] * 7, 200, 0) == {"win": (1.0, 1.0), "tie": (0.0, 0.0), "loss": (0.0, 0.0)}
    outcomes = ["win"] * 30 + ["tie"] * 10 + ["loss"] * 20
    a = bootstrap_intervals(outcomes, 2000, 5)
    assert a == bootstrap_intervals(outcomes, 2000, 5)  # seeded
    for k, rate in (("win", 0.5), ("tie", 1 / 6), ("loss", 1 / 3)):
        low, high = a[k]
        assert low < rate < high
        # Normal approximation of the binomial interval: rate +- 1.96 sqrt(p(1-p)/n), within sampling noise.
        half = 1.96 * (rate * (1 - rate) / len(outcomes)) ** 0.5
        assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    # Four times the prompts: about half the width.
    b = bootstrap_intervals(outcomes * 4, 2000, 5)
    assert (b["win"][1] - b["win"][0]) == pytest.approx((a["win"][1] - a["win"][0]) / 2, rel=0.2)


def _reply(pid: str, text: str) -> Candidate:
    return Candidate(pid, 0, "q " + pid, text, len(text.split()), True)


def test_h2h_metrics_by_hand():
    # p1: both orders pick the model (win); p2: model as A wins, as B loses -> position bias, tie;
    # p3: baseline twice (loss); p4: one verdict unparsable -> unscored.
    comparisons = [
        Comparison("p1", "ab", "Winner: A", "model"), Comparison("p1", "ba", "Winner: B", "model"),
        Comparison("p2", "ab", "Winner: A", "model"), Comparison("p2", "ba", "Winner: A", "baseline"),
        Comparison("p3", "ab", "Winner: B", "baseline"), Comparison("p3", "ba", "Winner: A", "baseline"),
        Comparison("p4", "ab", "???", None), Comparison("p4", "ba", "Winner: tie", "tie"),
    ]
    mine = {p: _reply(p, w) for p, w in (("p1", "one two three"), ("p2", "a b"), ("p3", "x"), ("p4", "1 2 3 4 5 6"))}
    theirs = {p: _reply(p, "w w") for p in mine}
    out = h2h_metrics(comparisons, mine, theirs, 500, 0)
    assert out["prompts"] == 4 and out["prompts_scored"] == 3 and out["prompts_unscored"] == 1
    assert out["win_rate"] == pytest.approx(1 / 3) and out["tie_rate"] == pytest.approx(1 / 3) and out["loss_rate"] == pytest.approx(1 / 3)
    assert out["verdict_parse_fail_rate"] == pytest.approx(1 / 8)
    assert out["order_agreement"] == pytest.approx(2 / 3)  # p1 and p3 agree, p2 does not
    # Verdicts naming a side: 6; those naming position A: p1ab, p2ab, p2ba, p3ba = 4.
    assert out["first_position_rate"] == pytest.approx(4 / 6)
    assert out["len_words_model"] == pytest.approx((3 + 2 + 1 + 6) / 4) and out["len_words_baseline"] == 2
    assert out["win_rate_ci_low"] <= out["win_rate"] <= out["win_rate_ci_high"]
    assert 0.0 == out["loss_rate_ci_low"] and out["loss_rate_ci_high"] == pytest.approx(1.0)


def test_h2h_metrics_nothing_scored():
    out = h2h_metrics([Comparison("p", "ab", "?", None), Comparison("p", "ba", "?", None)], {"p": _reply("p", "a")}, {"p": _reply("p", "b")}, 10, 0)
    assert out["prompts_scored"] == 0 and out["win_rate"] is None and out["win_rate_ci_low"] is None
    assert out["verdict_parse_fail_rate"] == 1.0


def test_pairwise_template_renders_both_replies_and_checks_placeholders(tmp_path):
    text = load_pairwise_template().render(" Q? ", "first", "second")
    assert "Q?" in text and text.index("first") < text.index("second") and "Winner: A" in text
    assert load_pairwise_template().text == PAIRWISE
    with pytest.raises(ValueError, match="response_b"):
        PairwiseTemplate("{prompt} {response_a}")
    bad = tmp_path / "t.txt"
    bad.write_text("{prompt} {response}")
    with pytest.raises(ValueError, match="placeholders"):
        load_pairwise_template(path=str(bad))
    with pytest.raises(ValueError, match="unknown built-in"):
        load_pairwise_template("nope")
