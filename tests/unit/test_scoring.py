"""parse_score over realistic judge outputs; every expected value is read off the text by hand."""

from __future__ import annotations

import pytest

from srl.scoring import parse_score

WELL_FORMED = (
    "The response is on topic and addresses the main question about boiling eggs.\n"
    "It gives a direct answer with timings, though it could mention altitude.\n"
    "It is clear and written as an assistant would write it.\n"
    "Score: 4"
)

CASES = [
    # (judge output, expected score in the default 0..5 range)
    (WELL_FORMED, 4.0),
    ("score: 4", 4.0),  # lower case
    ("SCORE:4", 4.0),  # upper case, no space
    ("Score: 4/5", 4.0),  # denominator equal to the maximum
    ("Score: 4 / 5", 4.0),
    ("Score: 3.5", 3.5),  # decimal kept
    ("Score: 4 out of 5", 4.0),
    ("**Score:** 5", 5.0),  # markdown bold around the label
    ("Score: **4**", 4.0),  # markdown bold around the number
    ("Score = 2", 2.0),
    ("The score is 3", 3.0),
    ("Overall I would give it a score of 2.", 2.0),
    ("Final score: 1", 1.0),
    ("Score:\n4", 4.0),  # number on the next line
    ("Score: 7", None),  # out of range 0..5
    ("Score: 10", None),
    ("Score: 8/10", None),  # denominator differs from the maximum 5
    ("Score: 4 out of 10", None),
    ("First pass: Score: 2.\nOn reflection the answer is complete.\nScore: 4", 4.0),  # several -> last
    ("Score: 5\nWait, it misses a step.\nScore: 3/5", 3.0),
    ("The answer is helpful and well organised.", None),  # no score at all
    ("Score: five", None),  # number in words is not read
    ("", None),
    (None, None),
    ("Score: 4\n\nI hope this helps!", 4.0),  # trailing text after the score line
    ("Score: 0", 0.0),  # zero is in range and is not "missing"
    ("Score: 5/5 (excellent)", 5.0),
]


@pytest.mark.parametrize("text, expected", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_parse_score(text, expected):
    got = parse_score(text)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected) and isinstance(got, float)


@pytest.mark.parametrize("text", ["Score: -1", "Score: -3/5"])
def test_negative_score_is_out_of_range(text):
    # -1 < min_score 0, so the only correct answer is "no score"
    assert parse_score(text) is None


def test_dash_separator_still_reads_positive_score():
    # "Score - 3" (dash used as a separator) is a legitimate way to state 3
    assert parse_score("Score - 3") == 3.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Score: 8", 8.0),
        ("Score: 8/10", 8.0),  # denominator now equals the maximum
        ("Score: 10", 10.0),  # upper bound inclusive
        ("Score: 1", 1.0),  # lower bound inclusive
        ("Score: 0", None),  # below min 1
        ("Score: 11", None),
        ("Score: 4/5", None),  # denominator 5 != max 10
    ],
)
def test_parse_score_custom_range(text, expected):
    got = parse_score(text, min_score=1, max_score=10)
    assert got == expected


def test_parse_score_never_raises_on_odd_input():
    for text in ["Score:", "Score: /5", "score score score", "Score: 1e9", "\x00Score: \x00", "Score: " + "9" * 400]:
        got = parse_score(text)
        assert got is None or 0 <= got <= 5
