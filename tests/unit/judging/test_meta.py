"""The meta-judge, by hand: its prompt and verdicts, ranking judgements from verdicts in both
orders (ties, unparsable, position bias), and judge-pair selection with the length limit."""

from __future__ import annotations

import math

import pytest

from srl.judging.meta import (
    MetaTemplate,
    MetaVerdict,
    first_shown_win_rate,
    judge_pair,
    load_meta_template,
    orders,
    position_weights,
    rank_judgements,
)


def v(first, second, verdict):
    return MetaVerdict("p", 0, first, second, "", verdict)


def test_the_prompt_holds_every_part_and_the_verdict_parses(tmp_path):
    t = load_meta_template()
    text = t.render(" Add 2+2. ", "4", "Award points for correctness.", "Correct.\nScore: 5", "Wrong.\nScore: 1")
    for part in ("Add 2+2.", "<reply>\n4\n</reply>", "Award points for correctness.", "<evaluation_a>\nCorrect.\nScore: 5\n</evaluation_a>",
                 "<evaluation_b>\nWrong.\nScore: 1\n</evaluation_b>"):
        assert part in text
    assert t.parse("A is vaguer.\nWinner: B") == "B" and t.parse("Winner: tie") == "tie" and t.parse("no verdict here") is None
    with pytest.raises(ValueError, match=r"needs exactly the placeholders .*missing \['rubric'\]"):
        MetaTemplate("{prompt} {response} {judgement_a} {judgement_b}")
    mine = tmp_path / "meta.txt"
    mine.write_text("{rubric}|{prompt}|{response}|{judgement_a}|{judgement_b}")
    assert load_meta_template(str(mine)).render("p", "r", "x", "a", "b") == "x|p|r|a|b"
    assert orders(3) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]


VERDICTS = [v(0, 1, "A"), v(1, 0, "B"),  # 0 beats 1 in both orders
            v(0, 2, "tie"), v(2, 0, "B"),  # a tie, then 0 beats 2 shown second
            v(1, 2, "B"), v(2, 1, "A"),  # 2 beats 1 in both orders
            v(1, 2, None)]  # unparsable: counts for nobody


def test_win_counts_by_hand():
    assert rank_judgements(VERDICTS, 3, "wins") == [1 + 1 + 0.5 + 1, 0.0, 0.5 + 1 + 1]
    assert VERDICTS[1].winner == 0 and VERDICTS[2].winner is None and VERDICTS[6].winner is None
    # first-shown wins: (0,1)A, (2,1)A = 2; second-shown: (1,0)B, (2,0)B, (1,2)B = 3
    assert first_shown_win_rate(VERDICTS) == pytest.approx(2 / 5)
    assert position_weights(VERDICTS) == (pytest.approx(3 / 5), pytest.approx(2 / 5))


def test_elo_by_hand_for_two_judgements_and_the_order_it_gives_three():
    # k=2: the Bradley-Terry fit has p0/p1 = w01/w10; 0 won both orders (weights 1/2 each), plus the prior's 0.05 each way.
    ratings = rank_judgements([v(0, 1, "A"), v(1, 0, "B")], 2, "elo", prior=0.1)
    assert ratings[0] - ratings[1] == pytest.approx(400 * math.log10((0.5 + 0.5 + 0.05) / 0.05), rel=1e-6)
    assert ratings[0] == pytest.approx(-ratings[1])
    three = rank_judgements(VERDICTS, 3, "elo")
    assert three[0] > three[2] > three[1]


def test_a_judge_that_always_prefers_the_first_shown_gains_nothing_under_elo():
    always_a = [v(a, b, "A") for a, b in orders(3)]
    assert position_weights(always_a) == (0.0, 1.0)
    assert rank_judgements(always_a, 3, "elo") == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    assert rank_judgements(always_a, 3, "wins") == [2.0, 2.0, 2.0]  # win counts: each won its two A showings
    assert first_shown_win_rate(always_a) == 1.0 and first_shown_win_rate([v(0, 1, None)]) is None
    with pytest.raises(ValueError, match="one of"):
        rank_judgements(always_a, 3, "borda")


def test_judge_pairs_take_the_best_within_the_length_limit_and_the_worst():
    judgements = ["Short and right.", "A much longer judgement that goes on and on about the reply.", "Wrong."]
    assert judge_pair(judgements, [2.0, 3.0, 0.0], max_chosen_words=3) == (0, 2)  # the best (1) is too long
    assert judge_pair(judgements, [2.0, 3.0, 0.0], max_chosen_words=None) == (1, 2)
    assert judge_pair(judgements, [1.0, 1.0, 1.0], max_chosen_words=None) is None  # no preference
    assert judge_pair(judgements, [0.0, 3.0, 1.0], max_chosen_words=3) == (2, 0)
    assert judge_pair(judgements, [3.0, 1.0, 0.0], max_chosen_words=1) is None  # nothing fits the limit
    assert judge_pair(judgements[:2], [0.0, 0.0, 5.0][:2], None) is None
    with pytest.raises(ValueError, match="2 judgements but 3 scores"):
        judge_pair(judgements[:2], [1.0, 2.0, 3.0], None)
