"""Judge formats (conf/judge): each template's parser, answer line, score range and EFT targets, by hand."""

from __future__ import annotations

import pytest

from srl.data.oasst import rank_score
from srl.data.records import RankedPrompt
from srl.judging.builtin_templates import TEN_POINT
from srl.judging.eft import eft_ranked
from srl.judging.parsing import parse_rating, parse_verdict
from srl.judging.builtin_templates import BUCKETS_5
from srl.judging.templates import JudgeTemplate, load_judge_template, load_pairwise_template

FORMATS = {"additive5": (0, 5, "Score: "), "buckets": (1, 5, "Score: "), "ten_point": (1, 10, "Rating: [[")}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_builtin_formats_declare_range_and_parse_their_own_target(name):
    low, high, line = FORMATS[name]
    t = load_judge_template(name)
    assert (t.min_score, t.max_score) == (low, high) and t.kind == "pointwise"
    assert "{prompt}" in t.text and "{response}" in t.text and line.strip() in t.text
    for score in range(low, high + 1):
        text = t.target("Because.", score)
        assert text.splitlines()[-1].startswith(line) and t.parse(text) == float(score)
    assert t.parse(t.target("x", high).replace(str(high), str(high + 1))) is None  # out of range
    assert t.parse("no verdict here") is None and t.parse(None) is None


def test_each_format_reads_only_its_own_answer_line():
    additive, ten = load_judge_template("additive5"), load_judge_template("ten_point")
    assert additive.parse("Rating: [[4]]") is None
    assert ten.parse("Score: 4") is None
    assert ten.parse("Clear and correct.\nRating: [[8]]") == 8.0
    assert load_judge_template("buckets").parse("Description 4 fits.\nScore: 0") is None  # buckets start at 1


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Rating: [[7]]", 7.0),
        ("rating: [[ 10 ]]", 10.0),
        ("[[3]]", 3.0),
        ("Rating: 6", 6.0),
        ("Rating: 9/10", 9.0),
        ("Rating: [[[[10]", 10.0),      # brackets after "Rating:" are formatting, however many
        ("Rating: [6]]]", 6.0),
        ("**Rating:** [[4]]", 4.0),
        ("Rating: 9/5", None),          # a denominator other than the maximum is not a 1-10 rating
        ("I'd say [[2]]. On reflection, Rating: [[5]]", 5.0),  # the last one counts
        ("Rating: [[0]]", None),        # below the scale's 1
        ("Rating: [[11]]", None),
        ("Rating: [[-3]]", None),
        ("Score: 7", None),
        ("", None),
    ],
)
def test_parse_rating(text, expected):
    assert parse_rating(text, 1, 10) == expected


def test_loader_refuses_a_range_that_contradicts_a_builtin():
    with pytest.raises(ValueError, match="ten_point.*max_score"):
        load_judge_template("ten_point", max_score=5)
    assert load_judge_template("ten_point", min_score=1, max_score=10).max_score == 10  # restating it is fine


def test_user_file_declares_range_answer_and_rubric(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("Rate {response} for {prompt} from 1 to 10; end with Rating: [[N]].")
    t = load_judge_template(path=str(f), min_score=1, max_score=10, answer="rating", rubric="scale")
    assert t.parse("ok\nRating: [[9]]") == 9.0 and t.lead == "Rating: [[" and t.value_prefix == ""
    with pytest.raises(ValueError, match="answer must be one of"):
        load_judge_template(path=str(f), answer="stars")
    with pytest.raises(ValueError, match="min_score .* must be below"):
        JudgeTemplate("{prompt}{response}", min_score=3, max_score=3)


@pytest.mark.parametrize(
    "name, n, expected",
    [
        # additive: 1 + 4 (n-1-i)/(n-1), rounded half to even: n=4 -> 5, 3.67, 2.33, 1
        ("additive5", 4, [5, 4, 2, 1]),
        ("additive5", 2, [5, 1]),
        ("buckets", 3, [5, 3, 1]),
        # 1 + 9 (n-1-i)/(n-1): n=4 -> 10, 7, 4, 1; n=3 -> 10, 5.5 (half to even: 6), 1
        ("ten_point", 4, [10, 7, 4, 1]),
        ("ten_point", 3, [10, 6, 1]),
    ],
)
def test_ranked_scores_spread_human_ranks_over_each_scale(name, n, expected):
    t = load_judge_template(name)
    assert [t.ranked_score(i, n) for i in range(n)] == expected
    if name == "additive5":
        assert expected == [rank_score(i, n) for i in range(n)]  # unchanged from the paper-format builder


def test_justifications_in_each_format():
    assert load_judge_template("buckets").justification(2) == (
        "Description 2 fits best: it covers most of the request but does not answer it directly."
    )
    ten = load_judge_template("ten_point")
    # (score - 1) / 9 * 10: 1 -> 0 poor; 4 -> 3.3 weak; 6 -> 5.6 adequate; 8 -> 7.8 good; 10 -> excellent
    assert [ten.justification(s).split()[-4] for s in (1, 4, 6, 8, 10)] == ["poor", "weak", "adequate", "good", "excellent"]
    with pytest.raises(ValueError):
        ten.justification(11)


def test_builtin_texts_ask_for_their_answer_lines():
    assert '"Score: <1-5>"' in BUCKETS_5 and "1:" in BUCKETS_5 and "5:" in BUCKETS_5
    assert '"Rating: [[<1-10>]]"' in TEN_POINT


GROUP = RankedPrompt(prompt="Name a colour.", replies=("Blue.", "Red is one.", "Colours?"), ranks=(0, 1, 2), tree_id="t", message_id="m")


def test_eft_ranked_in_the_bucket_and_ten_point_formats():
    buckets = eft_ranked([GROUP], load_judge_template("buckets"))
    assert [ex.score for ex in buckets] == [5, 3, 1]
    assert buckets[1].target == "Description 3 fits best: it answers the basic asks but does not read like an assistant's answer.\nScore: 3"
    ten = eft_ranked([GROUP], load_judge_template("ten_point"))
    assert [ex.score for ex in ten] == [10, 6, 1]
    assert ten[0].target == "Overall the response is excellent for this request.\nRating: [[10]]"
    assert ten[2].judge_prompt == load_judge_template("ten_point").render(GROUP.prompt, "Colours?")


def test_eft_pairwise_both_orders_of_every_ranked_pair():
    t = load_pairwise_template()
    examples = eft_ranked([GROUP], t)
    # 3 replies: 3 * 2 ordered pairs; A wins when its human rank is better (lower)
    got = [(ex.response, ex.target.splitlines()[-1]) for ex in examples]
    assert got == [
        ("Blue.", "Winner: A"), ("Blue.", "Winner: A"),
        ("Red is one.", "Winner: B"), ("Red is one.", "Winner: A"),
        ("Colours?", "Winner: B"), ("Colours?", "Winner: B"),
    ]
    assert [ex.score for ex in examples] == [1, 1, 0, 1, 0, 0]
    assert examples[2].judge_prompt == t.render(GROUP.prompt, "Red is one.", "Blue.")
    assert all(parse_verdict(ex.target) in ("A", "B") for ex in examples)
    tied = RankedPrompt(prompt="p", replies=("x", "y"), ranks=(0, 0), tree_id="t", message_id="m2")
    assert eft_ranked([tied], t) == []  # equal human ranks say nothing about which is better


def test_pairwise_template_declares_win_fraction_range():
    t = load_pairwise_template()
    assert (t.min_score, t.max_score, t.kind) == (0, 1, "pairwise")
    assert t.parse(t.target("B is better.", "B")) == "B"
