"""Head-to-head evaluation (paper Sec. 4.2): which of two models answers the same prompts better.

The evaluated model ("model") and a baseline (another model's replies, or a file of reference
replies) each have one reply per prompt. A judge model reads both with a pairwise template in both
orders: once with the model's reply as A ("ab"), once as B ("ba"). A verdict is mapped from the
position it names to the side it means. Per prompt, as in the paper, the outcome is

- ``win`` / ``loss`` when both orders pick the model / the baseline,
- ``tie`` when both say tie, or when the two orders disagree (a position-biased judge that always
  picks A gives ties, not wins),
- unscored (left out, counted) when either order's verdict does not parse.

That is the ``pairwise`` protocol. The ``pointwise`` protocol suits a small judge that never writes
a verdict line but was trained on the rubric (EFT): the judge scores each of the two replies alone
with the run's rubric (``conf/judge``: K samples averaged, or score-first), and per prompt the
higher score wins; scores within ``tie_margin`` of each other are a tie; a reply no sample scored
leaves the prompt unscored. Each reply is judged alone, so there is no order to swap.

Win, tie and loss rates are over scored prompts, each with a 95% percentile-bootstrap interval
over prompts. Mean reply lengths (words) of both sides are reported, since length sways judges.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from srl.core import distributed
from srl.core.hashing import derive_seed
from srl.data.partial import PartialJsonl
from srl.data.records import Candidate, Judgement, PromptRecord, read_jsonl
from srl.generation.sample import sample_chat
from srl.generation.sampling import SamplingSettings
from srl.evaluation.intervals import percentile
from srl.judging.backends import judge_texts
from srl.judging.parsing import parse_verdict
from srl.judging.pointwise import judge_candidates
from srl.judging.settings import JudgeSettings
from srl.judging.templates import PairwiseTemplate

ORDERS = ("ab", "ba")  # "ab": the model's reply is shown as A; "ba": as B


OUTCOMES = ("win", "tie", "loss")


PROTOCOLS = ("pairwise", "pointwise")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One pairwise judge sample: the order shown, the judge's text and its verdict by side."""

    prompt_id: str
    order: str
    text: str
    verdict: str | None  # "model" | "baseline" | "tie" | None (unparsable)


@dataclasses.dataclass
class H2HSettings:
    """``eval.h2h``: prompts, baseline, judge and sampling of the head-to-head evaluation."""

    template: PairwiseTemplate
    prompts: Any  # srl.data.prompt_sets.PromptSetSettings
    enabled: bool = True
    against: str = "start"  # in the loop: start (M0) | previous (M_{t-1}); a reference file overrides
    baseline: str | None = None  # standalone: model folder / Hub id / "embedded"
    reference: str | None = None  # a replies file (srl replies.jsonl or AlpacaEval JSON) instead of a baseline model
    judge: str | None = None  # None: the evaluated model judges itself; m<t>: the run's M_t (loop); external: conf/external_judge; else folder / Hub id / "embedded"
    protocol: str = "pairwise"  # pairwise (verdict, both orders) | pointwise (rubric score of each reply, higher wins)
    num_samples: int | None = None  # pointwise: judge samples per reply; None: judge.num_samples
    tie_margin: float = 0.0  # pointwise: |score difference| <= margin is a tie
    reply_sampling: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)
    judge_sampling: SamplingSettings = dataclasses.field(default_factory=lambda: SamplingSettings(temperature=0.0, max_new_tokens=96))
    bootstrap_samples: int = 1000
    seed: int = 0
    external: Any = None  # judge=external: the external judge (set by srl.config.judges, not in the config)

    def __post_init__(self) -> None:
        if self.external is not None and self.external.kind == "score" and self.protocol == "pairwise":
            raise ValueError(f"eval.h2h.protocol=pairwise asks the referee for a verdict; the external judge {self.external.describe()} "
                             "gives scores: use eval.h2h.protocol=pointwise with it")
        if self.against not in ("start", "previous"):
            raise ValueError(f"eval.h2h.against must be 'start' or 'previous', got {self.against!r}")
        if self.bootstrap_samples < 1:
            raise ValueError(f"eval.h2h.bootstrap_samples must be >= 1, got {self.bootstrap_samples}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"eval.h2h.protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.tie_margin < 0:
            raise ValueError(f"eval.h2h.tie_margin must be >= 0, got {self.tie_margin}")


def side_of(verdict: str | None, order: str) -> str | None:
    """Map a positional verdict ("A", "B", "tie") to the side it favours in ``order``."""
    if verdict is None or verdict == "tie":
        return verdict
    model_position = "A" if order == "ab" else "B"
    return "model" if verdict == model_position else "baseline"


def outcome(first: str | None, second: str | None) -> str | None:
    """Per-prompt outcome from the two orders' side verdicts; disagreement is a tie."""
    if first is None or second is None:
        return None
    if first != second:
        return "tie"
    return {"model": "win", "baseline": "loss", "tie": "tie"}[first]


def bootstrap_intervals(outcomes: Sequence[str], samples: int, seed: int, level: float = 95.0) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap interval of each outcome's rate, resampling prompts with replacement."""
    n = len(outcomes)
    rng = random.Random(seed)
    rates: dict[str, list[float]] = {k: [] for k in OUTCOMES}
    for _ in range(samples):
        draw = [outcomes[rng.randrange(n)] for _ in range(n)]
        for k in OUTCOMES:
            rates[k].append(draw.count(k) / n)
    tail = (100.0 - level) / 2
    return {k: (percentile(v, tail), percentile(v, 100.0 - tail)) for k, v in rates.items()}


def words(text: str) -> int:
    return len(text.split())


def outcome_metrics(outcomes: dict[str, str | None], bootstrap_samples: int, seed: int) -> dict[str, Any]:
    """Prompt counts and win/tie/loss rates over scored prompts with their 95% intervals."""
    scored = [o for o in outcomes.values() if o is not None]
    out: dict[str, Any] = {"prompts": len(outcomes), "prompts_scored": len(scored), "prompts_unscored": len(outcomes) - len(scored)}
    intervals = bootstrap_intervals(scored, bootstrap_samples, seed) if scored else {}
    for k in OUTCOMES:
        out[f"{k}_rate"] = scored.count(k) / len(scored) if scored else None
        low, high = intervals.get(k, (None, None))
        out[f"{k}_rate_ci_low"], out[f"{k}_rate_ci_high"] = low, high
    return out


def _lengths(prompts: Sequence[str], model_replies: dict[str, Candidate], baseline_replies: dict[str, Candidate]) -> dict[str, Any]:
    return {
        "len_words_model": statistics.fmean(words(model_replies[p].response) for p in prompts) if prompts else None,
        "len_words_baseline": statistics.fmean(words(baseline_replies[p].response) for p in prompts) if prompts else None,
    }


def h2h_metrics(
    comparisons: Sequence[Comparison], model_replies: dict[str, Candidate], baseline_replies: dict[str, Candidate],
    bootstrap_samples: int, seed: int,
) -> dict[str, Any]:
    """Pairwise protocol: win/tie/loss rates with 95% intervals, verdict parse rate, position bias, lengths."""
    by_prompt: dict[str, dict[str, str | None]] = {}
    for c in comparisons:
        by_prompt.setdefault(c.prompt_id, {})[c.order] = c.verdict
    parsed = [c for c in comparisons if c.verdict is not None]
    # Position bias: of the verdicts naming a side, the share that named whichever reply was shown first.
    named = [c for c in parsed if c.verdict != "tie"]
    first_picked = sum((c.verdict == "model") == (c.order == "ab") for c in named)
    agreeing = [v for v in by_prompt.values() if v.get("ab") is not None and v.get("ba") is not None]
    out = outcome_metrics({p: outcome(v.get("ab"), v.get("ba")) for p, v in by_prompt.items()}, bootstrap_samples, seed)
    out.update({
        "protocol": "pairwise",
        "verdict_parse_fail_rate": 1 - len(parsed) / len(comparisons) if comparisons else None,
        "order_agreement": sum(v["ab"] == v["ba"] for v in agreeing) / len(agreeing) if agreeing else None,
        "first_position_rate": first_picked / len(named) if named else None,
        **_lengths(list(by_prompt), model_replies, baseline_replies),
    })
    return out


MODEL, BASELINE = 0, 1  # candidate index of each side's reply in the pointwise judgements


def score_outcome(mine: float | None, theirs: float | None, margin: float) -> str | None:
    """Pointwise outcome: the higher score wins; within ``margin`` a tie; None if either is unscored."""
    if mine is None or theirs is None:
        return None
    return "win" if mine - theirs > margin else "loss" if theirs - mine > margin else "tie"


def pointwise_metrics(
    judgements: Sequence[Judgement], model_replies: dict[str, Candidate], baseline_replies: dict[str, Candidate],
    tie_margin: float, bootstrap_samples: int, seed: int,
) -> dict[str, Any]:
    """Pointwise protocol: win/tie/loss rates with 95% intervals, mean scores, sample parse rate, lengths."""
    scores: dict[str, dict[int, float | None]] = {}
    for j in judgements:
        scores.setdefault(j.prompt_id, {})[j.candidate] = j.score
    out = outcome_metrics({p: score_outcome(s.get(MODEL), s.get(BASELINE), tie_margin) for p, s in scores.items()}, bootstrap_samples, seed)
    samples = [x for j in judgements for x in j.scores]
    side = {k: [s[k] for s in scores.values() if s.get(k) is not None] for k in (MODEL, BASELINE)}
    out.update({
        "protocol": "pointwise",
        "score_parse_fail_rate": sum(x is None for x in samples) / len(samples) if samples else None,
        "score_model": statistics.fmean(side[MODEL]) if side[MODEL] else None,
        "score_baseline": statistics.fmean(side[BASELINE]) if side[BASELINE] else None,
        **_lengths(list(scores), model_replies, baseline_replies),
    })
    return out


def score_pointwise(
    judge_model: torch.nn.Module, tokenizer: Any, model_replies: dict[str, Candidate], baseline_replies: dict[str, Candidate],
    judge: JudgeSettings, seed: int, store: PartialJsonl, known: dict[str, Judgement] | None = None,
) -> list[Judgement]:
    """Judge each side's reply alone with the rubric (candidate 0: the model, 1: the baseline), resumable.

    ``known``: baseline judgements by prompt id that an earlier evaluation made with the same judge,
    settings and seeds (``srl.pipeline.stages.evaluation.reusable_baseline_scores``); those baseline
    replies are not judged again, and the returned list holds the known records for them."""
    if judge.mode == "pairwise":
        raise ValueError("eval.h2h.protocol=pointwise scores each reply with a rubric; the run's judge is pairwise (judge=pairwise): "
                         "use eval.h2h.protocol=pairwise, or a rubric judge")
    known = known or {}
    candidates, reused = [], []
    for p, mine in model_replies.items():
        if p in baseline_replies:
            theirs = baseline_replies[p]
            candidates.append(dataclasses.replace(mine, candidate=MODEL))
            if p in known:
                reused.append(known[p])
            else:
                candidates.append(Candidate(p, BASELINE, mine.prompt, theirs.response, theirs.num_tokens, theirs.finished))
    judge_candidates(judge_model, tokenizer, candidates, judge, seed, 0, store)
    return read_jsonl(store.finish(), Judgement) + reused


def generate_replies(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[PromptRecord], sampling: SamplingSettings, seed: int, store: PartialJsonl,
) -> None:
    """One sampled reply per prompt, written as ``Candidate`` records (candidate 0), resumable by chunk."""
    chunk = sampling.batch_size
    done = store.read(chunk)
    bar = tqdm(total=len(prompts), initial=len(done), desc="eval replies", unit="prompt", dynamic_ncols=True, leave=False, disable=not distributed.is_main())
    for start in range(len(done), len(prompts), chunk):
        part = prompts[start:start + chunk]
        seeds = [derive_seed(seed, "eval", "reply", p.prompt_id) for p in part]
        outputs = sample_chat(model, tokenizer, [p.prompt for p in part], seeds, sampling)
        store.append(Candidate(p.prompt_id, 0, p.prompt, o.text, o.num_tokens, o.finished) for p, o in zip(part, outputs))
        bar.update(len(part))
    bar.close()


def compare(
    judge: torch.nn.Module, tokenizer: Any, model_replies: dict[str, Candidate], baseline_replies: dict[str, Candidate],
    settings: H2HSettings, store: PartialJsonl, external: Any = None,
) -> None:
    """Judge every prompt with both replies in both orders; ``Comparison`` records, resumable by chunk.

    The referee is ``judge`` or the external text judge ``external`` (``srl/judging/backends.py``)."""
    items = [(p, order) for p in model_replies if p in baseline_replies for order in ORDERS]
    chunk = settings.judge_sampling.batch_size
    done = store.read(chunk)
    bar = tqdm(total=len(items), initial=len(done), desc="eval head-to-head", unit="verdict", dynamic_ncols=True, leave=False, disable=not distributed.is_main())
    for start in range(len(done), len(items), chunk):
        part = items[start:start + chunk]
        texts = []
        for p, order in part:
            mine, theirs = model_replies[p].response, baseline_replies[p].response
            a, b = (mine, theirs) if order == "ab" else (theirs, mine)
            texts.append(settings.template.render(model_replies[p].prompt, a, b))
        seeds = [derive_seed(settings.seed, "eval", "h2h", p, order) for p, order in part]
        outputs = judge_texts(judge, tokenizer, texts, seeds, settings.judge_sampling, external)
        store.append(Comparison(p, order, text, side_of(parse_verdict(text), order)) for (p, order), text in zip(part, outputs))
        bar.update(len(part))
    bar.close()
