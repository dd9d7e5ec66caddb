"""The judge prompts srl ships: the additive 5-point rubric (default), the five quality buckets, the
10-point holistic scale and the pairwise A-vs-B prompt, and the rubric texts EFT ranked mode writes
as a justification for a score."""

from __future__ import annotations

import dataclasses

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


# Multiple-choice quality buckets, in the style of Li et al. (2023)'s self-curation prompt (our
# wording): the judge picks the one description that fits. The paper (Sec. 4.3 / App. A) reports
# that its additive prompt agrees with humans far better than this kind of prompt.
BUCKETS_5 = """\
Below are a user's request and a candidate response. Decide how good an example the response is of \
the way an AI assistant should answer the request, and choose the ONE description that fits it best.
1: The response is incomplete, vague, off topic, controversial or not what the user asked for. It \
may leave out content, include unrelated or promotional text, or be written in an odd style.
2: The response covers most of what the user asked for, but does not answer the request directly: \
it gives a general approach instead of a solution, or restates the request.
3: The response is helpful and answers the user's basic asks, but it is not written from an AI \
assistant's point of view: it reads like a blog post, a web page or a forum reply.
4: The response is written from an AI assistant's point of view and answers the request clearly, \
completely and in good order; it could be a little more concise or focused.
5: The response is an ideal AI assistant's answer: focused on the request, expert, logical, easy to \
follow and insightful, with nothing superfluous.

User request:
{prompt}

<response>
{response}
</response>

First say in no more than 100 words which description fits and why. Then give the number of that \
description alone on the last line, as "Score: <1-5>"."""


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


BUCKET_PHRASES = (
    "it is incomplete, vague or not what the user asked for",
    "it covers most of the request but does not answer it directly",
    "it answers the basic asks but does not read like an assistant's answer",
    "it is a clear, complete assistant's answer with a little room to be more focused",
    "it is an ideal assistant's answer: focused, expert and easy to follow",
)


# A holistic 1..10 scale in the style of MT-Bench single-answer grading (our wording).
TEN_POINT = """\
Act as an impartial judge of the response below to the user's request. Consider how helpful, \
relevant, accurate, deep and detailed it is, and how well it is written. Do not let its length \
sway you.

User request:
{prompt}

<response>
{response}
</response>

First explain your judgement in no more than 100 words. Then rate the response on a scale of 1 to \
10 alone on the last line, strictly in this form: "Rating: [[<1-10>]]", for example "Rating: [[5]]"."""


SCALE_PHRASES = ((2, "poor"), (4, "weak"), (6, "adequate"), (8, "good"), (10, "excellent"))


@dataclasses.dataclass(frozen=True)
class Builtin:
    text: str
    min_score: int
    max_score: int
    answer: str
    rubric: str


BUILTIN_TEMPLATES = {
    "additive5": Builtin(ADDITIVE_5POINT, 0, 5, "score", "additive"),
    "buckets": Builtin(BUCKETS_5, 1, 5, "score", "buckets"),
    "ten_point": Builtin(TEN_POINT, 1, 10, "rating", "scale"),
}


ANSWERS = ("score", "rating")  # "Score: N" | "Rating: [[N]]"


RUBRICS = ("additive", "buckets", "scale")  # how EFT "ranked" mode words its justifications


# Head-to-head evaluation (paper Sec. 4.2): which of two replies is better. The verdict line is
# parsed by srl.judging.parsing.parse_verdict. Each pair is judged in both orders (srl.evaluation.head_to_head).
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
