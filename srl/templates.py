"""Prompt templates: the LLM-as-a-Judge prompt and the judge's target text.

The built-in judge follows the paper's additive 5-point rubric (Yuan et al., 2024, Fig. 2), written
in our own words: one point each for relevance, for covering a substantial part of the question,
for usefully answering its basic elements, for a clear and well-organised assistant-style answer,
and for an expert, tailored answer; then a short justification and a last line ``Score: N``.

A user may point the config at their own template file (for instance the paper's verbatim text);
it must contain the placeholders ``{prompt}`` and ``{response}`` and no others (write literal
braces as ``{{`` and ``}}``).
"""

from __future__ import annotations

import dataclasses
import string
from pathlib import Path

PLACEHOLDERS = frozenset({"prompt", "response"})
PAIRWISE_PLACEHOLDERS = frozenset({"prompt", "response_a", "response_b"})

ADDITIVE_5POINT = """\
Evaluate the response below to the user's request. Use an additive scale from 0 to 5: begin at 0 \
and award points one criterion at a time.
- Award 1 point when the response is on topic and gives at least some information that bears on \
the request, even if it is incomplete or partly beside the point.
- Award a 2nd point when the response deals with a substantial part of the request, even if it \
does not settle it completely or give a direct answer.
- Award a 3rd point when the response usefully answers the essential parts of the request, even \
if it reads like a search result or is not written as an assistant would write it.
- Award a 4th point when the response is written from an AI assistant's point of view, answers the \
request directly and fully, and is clear, well organised and helpful, with at most small room \
for more clarity, focus or brevity.
- Award a 5th point when the response fits the request exactly: focused, engaging and insightful, \
showing expert knowledge, with nothing superfluous.

User request:
{prompt}

<response>
{response}
</response>

Having read the request and the response, first justify your total in no more than 100 words. \
Then give the total alone on the last line, as "Score: <points>"."""

# Short phrases for the additive criteria, used to write justifications when the score is derived
# from human rankings (EFT "ranked" mode): criterion i is met for every i <= score. Kept short on
# purpose: every judge sample generates one, K times per reply.
CRITERIA_MET = (
    "is relevant to the request",
    "covers a substantial part of it",
    "answers its essentials usefully",
    "is a clear, direct, well-organised answer",
    "is expert and precisely tailored",
)
CRITERIA_UNMET = (
    "is not relevant to the request",
    "does not cover a substantial part of it",
    "does not answer its essentials usefully",
    "is not a clear, direct, well-organised answer",
    "is not expert and precisely tailored",
)

BUILTIN_TEMPLATES = {"additive5": ADDITIVE_5POINT}

# Head-to-head evaluation (paper Sec. 4.2): which of two replies is better. The verdict line is
# parsed by srl.scoring.parse_verdict. Each pair is judged in both orders (srl.headtohead).
PAIRWISE = """\
Compare two responses to the same user request and decide which one follows the request better: \
which is more helpful, relevant, accurate and complete, with the right level of detail. Do not \
prefer a response for being longer, and do not let the order of the two responses sway you.

User request:
{prompt}

<response_a>
{response_a}
</response_a>

<response_b>
{response_b}
</response_b>

First compare the two responses in no more than 60 words. Then give your verdict alone on the \
last line, as "Winner: A", "Winner: B" or "Winner: tie"."""

BUILTIN_PAIRWISE_TEMPLATES = {"pairwise": PAIRWISE}


@dataclasses.dataclass(frozen=True)
class JudgeTemplate:
    """A judge prompt with its score range; ``render`` fills ``{prompt}`` and ``{response}``."""

    text: str
    name: str = "additive5"
    min_score: int = 0
    max_score: int = 5

    def __post_init__(self) -> None:
        validate_placeholders(self.text, where=f"judge template '{self.name}'")

    def render(self, prompt: str, response: str) -> str:
        return self.text.format(prompt=prompt.strip(), response=response.strip())


@dataclasses.dataclass(frozen=True)
class PairwiseTemplate:
    """A head-to-head judge prompt; ``render`` fills ``{prompt}``, ``{response_a}``, ``{response_b}``."""

    text: str
    name: str = "pairwise"

    def __post_init__(self) -> None:
        validate_placeholders(self.text, where=f"pairwise template '{self.name}'", required=PAIRWISE_PLACEHOLDERS)

    def render(self, prompt: str, response_a: str, response_b: str) -> str:
        return self.text.format(prompt=prompt.strip(), response_a=response_a.strip(), response_b=response_b.strip())


def load_pairwise_template(name: str = "pairwise", path: str | None = None) -> PairwiseTemplate:
    """The built-in pairwise template ``name``, or the user's file at ``path`` (validated)."""
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"pairwise template file not found: {file}")
        return PairwiseTemplate(file.read_text(encoding="utf-8"), name=str(file))
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


def load_judge_template(name: str = "additive5", path: str | None = None, min_score: int = 0, max_score: int = 5) -> JudgeTemplate:
    """The built-in template ``name``, or the user's template file at ``path`` (validated)."""
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"judge template file not found: {file}")
        return JudgeTemplate(file.read_text(encoding="utf-8"), name=str(file), min_score=min_score, max_score=max_score)
    if name not in BUILTIN_TEMPLATES:
        raise ValueError(f"unknown built-in judge template '{name}'; choose one of {sorted(BUILTIN_TEMPLATES)} or set a path")
    return JudgeTemplate(BUILTIN_TEMPLATES[name], name=name, min_score=min_score, max_score=max_score)


def render_judge_target(justification: str, score: int | float) -> str:
    """The judge's answer: the justification, then the total alone on the last line."""
    shown = int(score) if float(score).is_integer() else score
    return f"{justification.strip()}\nScore: {shown}"


def rubric_justification(score: int) -> str:
    """A one-sentence justification consistent with the additive rubric for an integer ``score`` in 0..5.

    Criteria 1..score are met; criterion score+1 (if any) is the first one missed. For example
    score 2: "The response is relevant to the request and covers a substantial part of it, but it
    does not answer its essentials usefully."
    """
    if not 0 <= score <= 5:
        raise ValueError(f"score must be in 0..5, got {score}")
    if score == 0:
        return f"The response {CRITERIA_UNMET[0]}."
    met = list(CRITERIA_MET[:score])
    text = "The response " + (met[0] if len(met) == 1 else ", ".join(met[:-1]) + " and " + met[-1])
    if score < 5:
        text += f", but it {CRITERIA_UNMET[score]}"
    return text + "."
