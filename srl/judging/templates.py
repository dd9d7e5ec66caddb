"""Prompt templates: the LLM-as-a-Judge formats and the judge's target texts.

Judge formats (the ``judge`` config group), each with its score range, answer line and parser:

- ``additive5`` (default): the paper's additive 5-point rubric (Yuan et al., 2024, Fig. 2), in our
  own words: one point each for relevance, for covering a substantial part of the question, for
  usefully answering its basic elements, for a clear and well-organised assistant-style answer, and
  for an expert, tailored answer; a short justification, then ``Score: N`` (0..5).
- ``buckets``: a multiple-choice prompt of five quality descriptions in the style of Li et al.
  (2023, instruction backtranslation), the alternative the paper compared against; ``Score: N`` (1..5).
- ``ten_point``: a holistic 1..10 scale in the style of MT-Bench single-answer grading,
  ``Rating: [[N]]``.
- ``pairwise`` (``PairwiseTemplate``): A vs B with ``Winner: A|B|tie``, for head-to-head evaluation
  and for judging candidates as a round robin (``srl/judging/pointwise.py``); its score is a win fraction, 0..1.

A user may point the config at their own template file (for instance the paper's verbatim text);
it must contain the placeholders ``{prompt}`` and ``{response}`` and no others (write literal
braces as ``{{`` and ``}}``), and declares its score range and answer line in the config.
"""

from __future__ import annotations

import dataclasses
import string
from pathlib import Path

from srl.data.records import read_text
from srl.judging.builtin_templates import (
    ADDITIVE_5POINT,
    ANSWERS,
    BUCKET_PHRASES,
    BUILTIN_PAIRWISE_TEMPLATES,
    BUILTIN_TEMPLATES,
    RUBRICS,
    SCALE_PHRASES,
    rubric_justification,
)
from srl.judging.parsing import parse_rating, parse_score, parse_verdict

PLACEHOLDERS = frozenset({"prompt", "response"})


PAIRWISE_PLACEHOLDERS = frozenset({"prompt", "response_a", "response_b"})






@dataclasses.dataclass(frozen=True)
class JudgeTemplate:
    """A pointwise judge prompt with its score range and answer line.

    ``render`` fills ``{prompt}`` and ``{response}``; ``parse`` reads the score from a judge reply
    (``None`` when there is none in range); ``target`` writes the reply EFT trains on; ``lead`` is
    the answer line's opening, which score-first judging (``srl/judging/score_first.py``) puts in the judge's mouth.
    """

    text: str
    name: str = "additive5"
    min_score: int = 0
    max_score: int = 5
    answer: str = "score"  # "score": last line "Score: N"; "rating": "Rating: [[N]]"
    rubric: str = "additive"  # EFT "ranked" justifications: additive criteria | bucket descriptions | scale words

    kind = "pointwise"

    def __post_init__(self) -> None:
        validate_placeholders(self.text, where=f"judge template '{self.name}'")
        if self.answer not in ANSWERS:
            raise ValueError(f"judge template '{self.name}': answer must be one of {ANSWERS}, got {self.answer!r}")
        if self.rubric not in RUBRICS:
            raise ValueError(f"judge template '{self.name}': rubric must be one of {RUBRICS}, got {self.rubric!r}")
        if not self.min_score < self.max_score:
            raise ValueError(f"judge template '{self.name}': min_score ({self.min_score}) must be below max_score ({self.max_score})")

    def render(self, prompt: str, response: str) -> str:
        return self.text.format(prompt=prompt.strip(), response=response.strip())

    def parse(self, text: str | None) -> float | None:
        if self.answer == "rating":
            return parse_rating(text, self.min_score, self.max_score)
        return parse_score(text, self.min_score, self.max_score)

    @property
    def lead(self) -> str:
        """The answer line up to the number (score-first judging appends the score token)."""
        return "Rating: [[" if self.answer == "rating" else "Score:"

    @property
    def value_prefix(self) -> str:
        """What comes between ``lead`` and the number: "Score: 3", "Rating: [[3"."""
        return "" if self.answer == "rating" else " "

    def target(self, justification: str, score: int | float) -> str:
        """The judge's answer: the justification, then the score alone on the last line."""
        shown = int(score) if float(score).is_integer() else score
        line = f"Rating: [[{shown}]]" if self.answer == "rating" else f"Score: {shown}"
        return f"{justification.strip()}\n{line}"

    def ranked_score(self, position: int, n: int) -> int:
        """Score of the reply at human-rank ``position`` (0 = best) of ``n``, spread linearly over the scale.

        The additive rubric starts at 1 (a ranked oasst1 reply is on topic): 1..5 as in
        ``oasst.rank_score``; buckets 1..5; the 10-point scale 1..10.
        """
        if n < 2 or not 0 <= position < n:
            raise ValueError(f"need n >= 2 and 0 <= position < n, got position={position}, n={n}")
        low = self.min_score + 1 if self.rubric == "additive" else self.min_score
        return int(round(low + (self.max_score - low) * (n - 1 - position) / (n - 1)))  # as oasst.rank_score (half to even)

    def justification(self, score: int) -> str:
        """A one-sentence justification for an integer ``score`` in this template's words."""
        if self.rubric == "additive":
            if (self.min_score, self.max_score) != (0, 5):
                raise ValueError(f"judge template '{self.name}': additive justifications need the range 0..5")
            return rubric_justification(score)
        if not self.min_score <= score <= self.max_score:
            raise ValueError(f"score {score} outside {self.min_score}..{self.max_score}")
        if self.rubric == "buckets":
            if (self.min_score, self.max_score) != (1, 5):
                raise ValueError(f"judge template '{self.name}': bucket justifications need the range 1..5")
            return f"Description {score} fits best: {BUCKET_PHRASES[score - 1]}."
        frac = (score - self.min_score) / (self.max_score - self.min_score)
        word = next(w for top, w in SCALE_PHRASES if 10 * frac <= top)
        return f"Overall the response is {word} for this request."


@dataclasses.dataclass(frozen=True)
class PairwiseTemplate:
    """A head-to-head judge prompt; ``render`` fills ``{prompt}``, ``{response_a}``, ``{response_b}``."""

    text: str
    name: str = "pairwise"

    kind = "pairwise"
    # As a loop judge, a reply's score is its win fraction in a round robin against its siblings.
    min_score = 0
    max_score = 1

    def __post_init__(self) -> None:
        validate_placeholders(self.text, where=f"pairwise template '{self.name}'", required=PAIRWISE_PLACEHOLDERS)

    def render(self, prompt: str, response_a: str, response_b: str) -> str:
        return self.text.format(prompt=prompt.strip(), response_a=response_a.strip(), response_b=response_b.strip())

    def parse(self, text: str | None) -> str | None:
        """``"A"``, ``"B"``, ``"tie"`` or ``None``."""
        return parse_verdict(text)

    def target(self, justification: str, winner: str) -> str:
        return f"{justification.strip()}\nWinner: {winner}"


def load_pairwise_template(name: str = "pairwise", path: str | None = None) -> PairwiseTemplate:
    """The built-in pairwise template ``name``, or the user's file at ``path`` (validated)."""
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"pairwise template file not found: {file}")
        return PairwiseTemplate(read_text(file), name=str(file))
    if name not in BUILTIN_PAIRWISE_TEMPLATES:
        raise ValueError(f"unknown built-in pairwise template '{name}'; choose one of {sorted(BUILTIN_PAIRWISE_TEMPLATES)} or set a path")
    return PairwiseTemplate(BUILTIN_PAIRWISE_TEMPLATES[name], name=name)


def validate_placeholders(text: str, where: str, required: frozenset[str] = PLACEHOLDERS) -> None:
    """Raise ``ValueError`` unless ``text`` uses exactly the ``required`` placeholders."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:
        raise ValueError(f"{where}: cannot parse placeholders ({exc}); write literal braces as '{{{{' and '}}}}'") from None
    missing = sorted(required - fields)
    extra = sorted(fields - required)
    if missing or extra:
        wanted = ", ".join("{" + name + "}" for name in sorted(required))
        raise ValueError(
            f"{where}: needs exactly the placeholders {wanted}; "
            f"missing {missing}, unknown {extra} (write literal braces as '{{{{' and '}}}}')"
        )


def load_judge_template(
    name: str = "additive5", path: str | None = None, min_score: int | None = None, max_score: int | None = None,
    answer: str | None = None, rubric: str | None = None,
) -> JudgeTemplate:
    """The built-in template ``name``, or the user's template file at ``path`` (validated).

    A built-in template fixes its range and answer line: a config that states another range is an
    error rather than a silently rescaled judge. A user file takes the stated values (default 0..5,
    ``Score: N``, additive justifications).
    """
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"judge template file not found: {file}")
        return JudgeTemplate(
            read_text(file), name=str(file), min_score=0 if min_score is None else min_score,
            max_score=5 if max_score is None else max_score, answer=answer or "score", rubric=rubric or "additive",
        )
    if name not in BUILTIN_TEMPLATES:
        raise ValueError(f"unknown built-in judge template '{name}'; choose one of {sorted(BUILTIN_TEMPLATES)} or set a path")
    b = BUILTIN_TEMPLATES[name]
    stated = {"min_score": min_score, "max_score": max_score, "answer": answer, "rubric": rubric}
    wrong = {k: v for k, v in stated.items() if v is not None and v != getattr(b, k)}
    if wrong:
        fixed = {k: getattr(b, k) for k in wrong}
        raise ValueError(f"judge template '{name}' has {fixed}; the config says {wrong}. Remove those keys or use a template file (judge.template.path)")
    return JudgeTemplate(b.text, name=name, min_score=b.min_score, max_score=b.max_score, answer=b.answer, rubric=b.rubric)


def render_judge_target(justification: str, score: int | float) -> str:
    """The additive judge's answer: the justification, then ``Score: N`` alone on the last line."""
    return JudgeTemplate(ADDITIVE_5POINT).target(justification, score)
