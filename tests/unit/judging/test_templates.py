"""Judge templates: rendering, placeholder validation, loading, targets and rubric justifications."""

from __future__ import annotations

import pytest

from srl.data.records import RecordError
from srl.judging.builtin_templates import CRITERIA_MET, CRITERIA_UNMET, rubric_justification
from srl.judging.parsing import parse_score
from srl.judging.templates import (
    ADDITIVE_5POINT,
    JudgeTemplate,
    load_judge_template,
    load_pairwise_template,
    render_judge_target,
    validate_placeholders,
)

# --------------------------------------------------------------------------- render


def test_render_inserts_stripped_prompt_and_response():
    t = JudgeTemplate("Q: {prompt}\nA: {response}\nEnd {{n}}.", name="mini")
    # prompt "  What is 2+2? \n" strips to "What is 2+2?", response "\t4 \n\n" to "4";
    # "{{n}}" is a literal and renders as "{n}"
    assert t.render("  What is 2+2? \n", "\t4 \n\n") == "Q: What is 2+2?\nA: 4\nEnd {n}."


def test_render_does_not_reinterpret_braces_in_inputs():
    t = JudgeTemplate("[{prompt}]({response})")
    # braces inside the inserted text are copied as they are
    assert t.render("f(x) = {x}", "{prompt}") == "[f(x) = {x}]({prompt})"


def test_render_order_independent_placeholders():
    t = JudgeTemplate("R={response};P={prompt};P again={prompt}")
    assert t.render("p", "r") == "R=r;P=p;P again=p"


# --------------------------------------------------------------------------- built-in template


def test_builtin_template_has_rubric_and_score_line():
    t = load_judge_template()
    assert t.name == "additive5" and (t.min_score, t.max_score) == (0, 5)
    assert t.text == ADDITIVE_5POINT
    # the five additive criteria, one point each
    for marker in ("Award 1 point", "Award a 2nd point", "Award a 3rd point", "Award a 4th point", "Award a 5th point"):
        assert t.text.count(marker) == 1, marker
    assert "0 to 5" in t.text
    assert "Score:" in t.text
    rendered = t.render("How do I boil an egg?", "Put it in boiling water for 8 minutes.")
    assert "How do I boil an egg?" in rendered and "Put it in boiling water for 8 minutes." in rendered
    # the response sits inside the <response> markers
    assert "<response>\nPut it in boiling water for 8 minutes.\n</response>" in rendered
    # prompt comes before the response
    assert rendered.index("How do I boil an egg?") < rendered.index("Put it in boiling")


# --------------------------------------------------------------------------- placeholder validation


@pytest.mark.parametrize(
    "text, needle",
    [
        ("Only {prompt} here", "response"),  # missing {response}
        ("Only {response} here", "prompt"),  # missing {prompt}
        ("{prompt} {response} {answer}", "answer"),  # unknown placeholder
        ("{prompt} {response} {}", "unknown"),  # positional placeholder is unknown too
        ("{prompt} {response} {", "braces"),  # unbalanced opening brace
        ("{prompt} {response} }", "braces"),  # unbalanced closing brace
        ("{prompt} {response} {0}", "unknown"),
    ],
)
def test_validate_placeholders_rejects(text, needle):
    with pytest.raises(ValueError) as exc:
        validate_placeholders(text, where="my template")
    assert "my template" in str(exc.value) and needle in str(exc.value)


def test_validate_placeholders_accepts_literal_braces():
    validate_placeholders('Return JSON like {{"score": 3}} for {prompt} / {response}', where="x")
    validate_placeholders("{{literal}} {prompt} {response} }}{{", where="x")


def test_judge_template_constructor_validates():
    with pytest.raises(ValueError):
        JudgeTemplate("no placeholders at all")


# --------------------------------------------------------------------------- loading


def test_load_judge_template_from_user_file(tmp_path):
    f = tmp_path / "judge.txt"
    f.write_text("Rate {response} for {prompt} from 1 to 10.\nScore:", encoding="utf-8")
    t = load_judge_template(path=str(f), min_score=1, max_score=10)
    assert t.text == "Rate {response} for {prompt} from 1 to 10.\nScore:"
    assert (t.min_score, t.max_score) == (1, 10)
    assert t.name == str(f)
    assert t.render(" hi ", " ok ") == "Rate ok for hi from 1 to 10.\nScore:"


def test_load_user_file_with_bad_placeholders(tmp_path):
    f = tmp_path / "judge.txt"
    f.write_text("Rate {reply} for {prompt}", encoding="utf-8")
    with pytest.raises(ValueError, match="reply"):
        load_judge_template(path=str(f))


def test_unknown_name_and_missing_file():
    with pytest.raises(ValueError, match="no_such_template"):
        load_judge_template("no_such_template")
    with pytest.raises(FileNotFoundError):
        load_judge_template(path="/nonexistent/dir/judge.txt")


# --------------------------------------------------------------------------- judge target


def test_render_judge_target():
    assert render_judge_target("Fine.", 4) == "Fine.\nScore: 4"
    # an integral float is shown without ".0"; a fractional one keeps its decimal
    assert render_judge_target("Fine.", 4.0) == "Fine.\nScore: 4"
    assert render_judge_target("Fine.", 3.5) == "Fine.\nScore: 3.5"
    # justification is stripped
    assert render_judge_target("  Fine.\n\n", 0) == "Fine.\nScore: 0"


@pytest.mark.parametrize("score", [0, 1, 2, 3, 4, 5])
def test_render_judge_target_parses_back(score):
    # the target the judge learns must be readable by the score parser
    assert parse_score(render_judge_target("Some words.\nMore words.", score)) == float(score)


# --------------------------------------------------------------------------- rubric justifications


def _named(text: str) -> int:
    return sum(phrase in text for phrase in CRITERIA_MET)


def test_rubric_justification_zero():
    # 0 points: the first criterion is missed, nothing is met.
    assert rubric_justification(0) == "The response is not relevant to the request."
    assert _named(rubric_justification(0)) == 0


def test_rubric_justification_one():
    # 1 point: criterion 1 met, criterion 2 the first missed.
    assert rubric_justification(1) == "The response is relevant to the request, but it does not cover a substantial part of it."


def test_rubric_justification_three():
    # Criteria 1..3 met, 4 missed.
    assert rubric_justification(3) == (
        "The response is relevant to the request, covers a substantial part of it and answers its essentials usefully, "
        "but it is not a clear, direct, well-organised answer."
    )


def test_rubric_justification_five():
    # All five met, nothing missed.
    text = rubric_justification(5)
    assert text == (
        "The response is relevant to the request, covers a substantial part of it, answers its essentials usefully, "
        "is a clear, direct, well-organised answer and is expert and precisely tailored."
    )
    assert not any(u in text for u in CRITERIA_UNMET)


@pytest.mark.parametrize("score", [0, 1, 2, 3, 4, 5])
def test_rubric_justification_names_met_criteria_and_first_miss(score):
    text = rubric_justification(score)
    assert _named(text) == score
    assert ("but it" in text) == (0 < score < 5)
    if score < 5:
        assert CRITERIA_UNMET[score] in text


@pytest.mark.parametrize("score", [-1, 6, 100])
def test_rubric_justification_out_of_range(score):
    with pytest.raises(ValueError):
        rubric_justification(score)


def test_user_template_not_utf8_names_file_and_line(tmp_path):
    f = tmp_path / "judge.txt"
    f.write_bytes("Rate {response}\nfor {prompt}.\nCaf\xe9 rules.\n".encode("cp1252"))
    with pytest.raises(RecordError) as exc:
        load_judge_template(path=str(f))
    assert str(exc.value).startswith(f"{f}:3: not UTF-8") and "0xe9" in str(exc.value)
    with pytest.raises(RecordError, match=rf"{f}:3: not UTF-8"):
        load_pairwise_template(path=str(f))
