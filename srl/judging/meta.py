"""The meta-judge of Meta-Rewarding (Wu et al. 2024, arXiv 2407.19594): the model compares two of its
own judgements of the same reply, and the judgements ranked by those meta-verdicts give judge
preference pairs (best vs worst judgement) that train the model as a judge.

- ``MetaTemplate``: the meta-judge prompt, ``{prompt}``, ``{response}``, ``{rubric}`` (the judge
  prompt's rubric, so the meta-judge checks the judgements against the same criteria),
  ``{judgement_a}``, ``{judgement_b}``; our own words (``META``); a user file may replace it. The
  verdict is the pairwise judge's: the last ``Winner: A|B|tie`` (``parse_verdict``).
- ``MetaVerdict``: one comparison of judgements ``first`` (shown as A) and ``second`` (B) of one
  reply; every pair is asked in both orders, to cancel position bias.
- ``rank_judgements``: a score per judgement from its verdicts. ``wins``: a win counts 1, a tie 1/2
  to each, an unparsable verdict nothing. ``elo``: a Bradley-Terry fit (Elo scale) of battles
  weighted against position bias: with F wins for the first-shown judgement and S for the second
  over the verdicts given, a first-position win weighs S / (F + S) and a second-position win
  F / (F + S) (each 1/2 without decisive verdicts), so a judge that always prefers A gains nothing
  from it. The paper ranks with a position-weighted Elo; this weighting and the fit's prior (every
  pair also shares ``prior`` tied battles, so a judgement that wins everything has a finite rating)
  are our reading, not its exact formula, which we could not confirm.
- ``judge_pair``: the best-ranked judgement whose length is within ``max_chosen_words`` as chosen,
  the worst-ranked as rejected, when their ranks differ (the paper limits the chosen judgement's
  length, so that judge training does not reward ever longer judgements).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

from srl.data.records import read_text
from srl.judging.parsing import parse_verdict
from srl.judging.templates import validate_placeholders

META_PLACEHOLDERS = frozenset({"prompt", "response", "rubric", "judgement_a", "judgement_b"})
RANKINGS = ("wins", "elo")

META = """\
Below are a user's request, a reply to it, and two evaluations of that reply. Both evaluations were \
asked to apply the rubric shown below. Decide which evaluation applies the rubric more faithfully: \
it credits and faults the reply for the right reasons, its reasoning matches what the reply \
actually says, and its final score follows from that reasoning. Do not prefer an evaluation for \
being longer, and do not let the order of the two evaluations sway you.

Rubric:
{rubric}

User request:
{prompt}

<reply>
{response}
</reply>

<evaluation_a>
{judgement_a}
</evaluation_a>

<evaluation_b>
{judgement_b}
</evaluation_b>

First compare the two evaluations in no more than 60 words. Then give your verdict alone on the \
last line, as "Winner: A", "Winner: B" or "Winner: tie"."""


@dataclasses.dataclass(frozen=True)
class MetaTemplate:
    text: str
    name: str = "meta"

    def __post_init__(self) -> None:
        validate_placeholders(self.text, where=f"meta-judge template '{self.name}'", required=META_PLACEHOLDERS)

    def render(self, prompt: str, response: str, rubric: str, judgement_a: str, judgement_b: str) -> str:
        return self.text.format(prompt=prompt.strip(), response=response.strip(), rubric=rubric.strip(),
                                judgement_a=judgement_a.strip(), judgement_b=judgement_b.strip())

    def parse(self, text: str | None) -> str | None:
        """``"A"``, ``"B"``, ``"tie"`` or ``None``."""
        return parse_verdict(text)


def load_meta_template(path: str | None = None) -> MetaTemplate:
    """The built-in meta-judge prompt, or the user's file at ``path`` (validated)."""
    if not path:
        return MetaTemplate(META)
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"meta-judge template file not found: {file}")
    return MetaTemplate(read_text(file), name=str(file))


@dataclasses.dataclass(frozen=True)
class MetaVerdict:
    """One meta-judgement: judgement ``first`` shown as A, ``second`` as B; ``verdict`` A | B | tie | None."""

    prompt_id: str
    candidate: int
    first: int
    second: int
    text: str
    verdict: str | None

    @property
    def winner(self) -> int | None:
        return {"A": self.first, "B": self.second}.get(self.verdict or "")


def orders(k: int) -> list[tuple[int, int]]:
    """Every ordered pair of k judgements: each unordered pair in both orders."""
    return [(a, b) for a in range(k) for b in range(k) if a != b]


def position_weights(verdicts: Sequence[MetaVerdict]) -> tuple[float, float]:
    """(weight of a first-shown win, of a second-shown win): S/(F+S) and F/(F+S); 1/2 each without decisive verdicts."""
    first = sum(v.verdict == "A" for v in verdicts)
    second = sum(v.verdict == "B" for v in verdicts)
    if first + second == 0:
        return 0.5, 0.5
    return second / (first + second), first / (first + second)


def first_shown_win_rate(verdicts: Sequence[MetaVerdict]) -> float | None:
    """Position bias: how often the first-shown judgement wins among decisive verdicts (0.5: none)."""
    decisive = [v for v in verdicts if v.verdict in ("A", "B")]
    return sum(v.verdict == "A" for v in decisive) / len(decisive) if decisive else None


def rank_judgements(verdicts: Sequence[MetaVerdict], k: int, method: str = "wins", weights: tuple[float, float] | None = None,
                    prior: float = 0.1, iterations: int = 500) -> list[float]:
    """A score per judgement 0..k-1 of one reply (higher: better), from its verdicts (module docstring).

    ``weights``: the position weights of ``elo`` (default: from ``verdicts`` themselves; pass the
    ones of the whole iteration, ``position_weights``, to weigh every reply's battles alike).
    """
    if method not in RANKINGS:
        raise ValueError(f"meta-judge ranking must be one of {RANKINGS}, got {method!r}")
    if method == "wins":
        score = [0.0] * k
        for v in verdicts:
            if v.verdict == "tie":
                score[v.first] += 0.5
                score[v.second] += 0.5
            elif v.winner is not None:
                score[v.winner] += 1.0
        return score
    w_first, w_second = weights if weights is not None else position_weights(verdicts)
    wins = [[0.0] * k for _ in range(k)]  # wins[i][j]: weighted wins of i over j
    for v in verdicts:
        if v.verdict == "tie":
            wins[v.first][v.second] += 0.5
            wins[v.second][v.first] += 0.5
        elif v.verdict == "A":
            wins[v.first][v.second] += w_first
        elif v.verdict == "B":
            wins[v.second][v.first] += w_second
    for i in range(k):
        for j in range(k):
            if i != j:
                wins[i][j] += prior / 2  # prior tied battles: finite ratings for a judgement that wins all
    strength = [1.0] * k
    for _ in range(iterations):  # Hunter's (2004) MM updates of the Bradley-Terry maximum likelihood
        new = []
        for i in range(k):
            total = sum(wins[i][j] for j in range(k) if j != i)
            denom = sum((wins[i][j] + wins[j][i]) / (strength[i] + strength[j]) for j in range(k) if j != i)
            new.append(total / denom if denom else strength[i])
        norm = math.exp(sum(math.log(s) for s in new) / k)
        strength = [s / norm for s in new]
    return [400.0 * math.log10(s) for s in strength]  # Elo scale, mean log-strength 0


def words(text: str) -> int:
    return len(text.split())


def judge_pair(judgements: Sequence[str], scores: Sequence[float], max_chosen_words: int | None,
               usable: Sequence[bool] | None = None) -> tuple[int, int] | None:
    """(chosen, rejected) judgement indices: the best-scored within the length limit (and ``usable``: e.g. only
    judgements whose score parses may be chosen), the worst-scored; None when no judgement may be chosen or the
    two do not differ in score. Ties go to the lower index."""
    if len(judgements) != len(scores) or (usable is not None and len(usable) != len(scores)):
        raise ValueError(f"{len(judgements)} judgements but {len(scores)} scores")
    fits = [i for i in range(len(judgements)) if (max_chosen_words is None or words(judgements[i]) <= max_chosen_words)
            and (usable is None or usable[i])]
    if not fits:
        return None
    chosen = max(fits, key=lambda i: (scores[i], -i))
    rejected = min(range(len(judgements)), key=lambda i: (scores[i], i))
    return (chosen, rejected) if scores[chosen] > scores[rejected] else None
