"""Score-first judging: the expected score from one forward pass per reply, no sampling.

The paper's judge writes a justification, then ``Score: N``, sampled K times and averaged. The
score-first mode starts the judge's reply with ``Score:`` itself and reads the next-token
distribution over the score values: the score is the expected value of that distribution,
renormalised over the score tokens. The probability mass the model puts on score tokens at all is
kept beside it: a mass near zero says the model did not expect a score there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from srl.core import distributed
from srl.generation.engine import Engine
from srl.generation.sample import stop_token_ids
from srl.generation.sampling import SamplingSettings
from srl.judging.templates import JudgeTemplate
from srl.models.chat import render_prompt

SCORE_LEAD = "Score:"


@dataclasses.dataclass(frozen=True)
class ScoreReader:
    """Token ids that follow a rendered judge prompt: ``lead`` once, then one token per score value."""

    lead_text: str
    lead_gap: tuple[int, ...]  # tokens between the lead text and the digit (a lone space in many BPEs)
    values: tuple[int, ...]
    value_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ExpectedScore:
    score: float | None  # None when the model puts no probability on any score token
    mass: float  # probability of the score tokens together
    probs: tuple[float, ...]  # per value, renormalised

    def describe(self, values: Sequence[int]) -> str:
        shown = "none" if self.score is None else f"{self.score:.3f}"
        dist = " ".join(f"P({v})={p:.3f}" for v, p in zip(values, self.probs))
        return f"score-first: expected {shown}, score-token mass {self.mass:.3f}; {dist}"


def option_tokens(tokenizer: Any, rendered: str, lead: str, labels: Sequence[str], prefix: str = " ") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(gap, ids): how ``lead`` + ``prefix`` + each label tokenizes after ``rendered``: one token per label, after a gap
    (a lone space in many BPEs) shared by all. Otherwise one next-token distribution cannot be read, and this raises."""
    base = tokenizer(rendered + lead, add_special_tokens=False)["input_ids"]
    gaps, ids = set(), []
    for label in labels:
        full = tokenizer(rendered + lead + f"{prefix}{label}", add_special_tokens=False)["input_ids"]
        extra = full[len(base):]
        if full[:len(base)] != base or not 1 <= len(extra) <= 2:
            raise ValueError(f"reading '{lead}{prefix}{label}' needs it to add one token after the prompt; got {extra}")
        gaps.add(tuple(extra[:-1]))
        ids.append(extra[-1])
    if len(gaps) != 1 or len(set(ids)) != len(ids):
        raise ValueError(f"{list(labels)} after '{lead}' do not map to distinct single tokens ({ids}, gaps {gaps})")
    return gaps.pop(), tuple(ids)


def score_reader(
    tokenizer: Any, rendered: str, min_score: int, max_score: int, lead: str = SCORE_LEAD, prefix: str = " ",
) -> ScoreReader:
    """Find how ``lead`` + ``prefix`` + ``N`` tokenizes after ``rendered`` for every integer score N.

    Each score must add one token (``lead`` + " 3" -> [..., "3"] or [..., " 3"]), possibly after a
    gap token shared by all scores (a lone space). Otherwise score-first judging cannot read one
    distribution, and this raises with the offending tokenization (a 1..10 scale whose "10" is two
    tokens, for instance).
    """
    values = tuple(range(int(min_score), int(max_score) + 1))
    try:
        gap, ids = option_tokens(tokenizer, rendered, lead, [str(v) for v in values], prefix)
    except ValueError as exc:
        raise ValueError(f"score-first judging: {exc}") from None
    return ScoreReader(lead, gap, values, ids)


@torch.no_grad()
def option_probabilities(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], lead: str, labels: Sequence[str],
                         settings: SamplingSettings, prefix: str = " ") -> list[tuple[tuple[float, ...], float]]:
    """Per prompt (a user message, chat-rendered), the model's next-token probabilities of ``labels`` after its reply
    is started with ``lead``: (probabilities renormalised over the labels, their mass together); mass 0: all zeros."""
    if not texts:
        return []
    if hasattr(model, "generate_ids"):
        raise ValueError("reading next-token probabilities needs backend=hf, not a generation-only backend")
    was_training = model.training
    model.eval()
    rendered = [render_prompt(tokenizer, t) for t in texts]
    gap, ids = option_tokens(tokenizer, rendered[0], lead, labels, prefix)
    rows = [tokenizer(r + lead, add_special_tokens=False)["input_ids"] + list(gap) for r in rendered]
    engine = Engine(model, settings, tokenizer.pad_token_id, stop_token_ids(tokenizer, model))

    def read(idx: list[int]) -> list[tuple[tuple[float, ...], float]]:
        probs = torch.softmax(engine.next_token_logits([rows[i] for i in idx]).double(), dim=-1)[:, list(ids)]
        mass = probs.sum(-1)
        return [(tuple(float(x) for x in (p / m)), float(m)) if float(m) > 0 else (tuple(0.0 for _ in ids), 0.0) for p, m in zip(probs, mass)]

    out = distributed.sharded(read, len(rows))
    model.train(was_training)
    return out


def expected_scores(logits: torch.Tensor, reader: ScoreReader) -> list[ExpectedScore]:
    """logits: (replies, vocab) for the token after the lead. Expected value over the score tokens."""
    probs = torch.softmax(logits.double(), dim=-1)[:, list(reader.value_ids)]
    mass = probs.sum(-1)
    values = torch.tensor(reader.values, dtype=torch.float64)
    out = []
    for p, m in zip(probs, mass):
        if float(m) <= 0.0:
            out.append(ExpectedScore(None, 0.0, tuple(0.0 for _ in reader.values)))
            continue
        q = p / m
        out.append(ExpectedScore(float((q * values).sum()), float(m), tuple(float(x) for x in q)))
    return out


@torch.no_grad()
def score_first(
    model: torch.nn.Module, tokenizer: Any, judge_texts: Sequence[str], template: JudgeTemplate, settings: SamplingSettings,
) -> tuple[list[ExpectedScore], ScoreReader]:
    """Expected score of each rendered judge text (``template.render(prompt, response)``) in one pass.

    The judge's reply is started with the template's answer line (``Score:``, ``Rating: [[``).
    """
    if not judge_texts:
        return [], ScoreReader(template.lead, (), (), ())
    if hasattr(model, "generate_ids"):
        raise ValueError("judge.mode=score_first reads the judge's next-token distribution: it needs backend=hf, not a generation-only backend")
    was_training = model.training
    model.eval()
    rendered = [render_prompt(tokenizer, t) for t in judge_texts]
    reader = score_reader(tokenizer, rendered[0], template.min_score, template.max_score, template.lead, template.value_prefix)
    ids = [tokenizer(r + reader.lead_text, add_special_tokens=False)["input_ids"] + list(reader.lead_gap) for r in rendered]
    engine = Engine(model, settings, tokenizer.pad_token_id, stop_token_ids(tokenizer, model))
    # Split across ranks in a multi-process run (srl/core/distributed.py); every rank gets every score.
    scores = distributed.sharded(lambda idx: expected_scores(engine.next_token_logits([ids[i] for i in idx]), reader), len(ids))
    model.train(was_training)
    return scores, reader
