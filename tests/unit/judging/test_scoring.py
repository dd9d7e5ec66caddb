"""parse_score over realistic judge outputs; every expected value is read off the text by hand."""

from __future__ import annotations

import pytest

from srl.judging.parsing import parse_score

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


# --- which statement counts: the answer line (issue 14) -----------------------------------------

ANSWER_LINE_CASES = [
    # A later mention of another number in prose is not the answer: the line starting "Score:" is.
    ("Score: 3. A score of 5 would need expert depth.", 3.0),
    ("The reply is fine.\nScore: 3. A score of 5 would need expert depth.", 3.0),
    # Arithmetic after the value: which number is meant is unclear -> None, never a made-up 5 or 4.
    ("Score: 5 - 1 = 4", None),
    ("Score: 2 + 1", None),
    ("Score: 2 * 2", None),
    ("**Score:** 3 + 1", None),
    ("I would give it a score of 5 - 1 = 4.", None),  # the lenient in-text reading checks it too
    # A note after the score line that holds another number does not change the score.
    ("Score: 4\nNote: with 2 more examples it would deserve a score of 5.", 4.0),
    ("Score: 4 (a 5 needs an expert answer)", 4.0),
    # Two answer lines: the last one.
    ("Score: 2\nOn reflection it is complete.\nScore: 4", 4.0),
    ("Score: 4\nScore: 2", 2.0),
    # Markdown and list marks before the marker; the value right after it.
    ("**Score:** 4", 4.0),
    ("**Score:** 4\nA score of 1 would be unfair.", 4.0),
    ("## Score: 2", 2.0),
    ("- Score: 3/5", 3.0),
    ("Final score: 1\nA score of 5 needs expert depth.", 1.0),
    # A bulleted list after the score line is not arithmetic on it.
    ("Score: 3\n- 1 point: relevant\n- 1 point: useful", 3.0),
    # The last answer line has no number: no score (the earlier mention in prose is not it).
    ("It could earn a score of 4.\nScore: N/A", None),
    # No answer line at all: the lenient in-text reading, last mention.
    ("I'd say a score of 2, maybe a score of 3.", 3.0),
]


@pytest.mark.parametrize("text, expected", ANSWER_LINE_CASES, ids=[f"line{i}" for i in range(len(ANSWER_LINE_CASES))])
def test_the_answer_line_counts(text, expected):
    assert parse_score(text) == expected


def test_rating_and_verdict_answer_lines():
    from srl.judging.parsing import parse_rating, parse_verdict

    assert parse_rating("Rating: [[6]]. A rating of [[9]] needs more depth.", 1, 10) == 6.0
    assert parse_rating("Rating: [[7]] - 2 = 5", 1, 10) is None
    assert parse_rating("Rating: [[7]]\nRating: [[8]]", 1, 10) == 8.0
    assert parse_verdict("Winner: A\nIf it were shorter, the winner would be B.") == "A"
    assert parse_verdict("**Winner:** B. Response A would win with sources, the winner is A then.") == "B"
