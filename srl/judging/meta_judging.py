"""Meta-Rewarding's judge-training data (Wu et al. 2024, arXiv 2407.19594, Sec. 2.2): which replies'
judgements M_t meta-judges, the meta-judgements in resumable chunks, and the judge pairs they give.

- ``select_replies``: per prompt, the replies whose K judgements (``judgements.jsonl``) are compared,
  by ``responses``: ``max_variance`` (the reply whose parsed judge scores vary most, population
  variance over >= 2 parsed scores, ties to the lower index: the reply the judge is least sure of;
  our reading of the paper, which we could not confirm), ``top`` (the highest mean score, the reply
  ``pairs=max_min`` chooses) or ``all``. A reply needs >= 2 judgement texts.
- ``meta_judge_replies``: every ordered pair of a reply's judgements is shown to the meta-judge once
  (both orders, ``meta.orders``), seeded by (run seed, iteration, "meta", prompt id, candidate,
  first, second); one ``MetaJudgement`` record per reply, written in chunks of
  ``sampling.batch_size`` replies, so a killed stage resumes with the same records. ``mode``:
  ``sample`` (the paper: the meta-judge writes its comparison, then ``Winner: A|B|tie``) or
  ``verdict_first`` (our variant, for a model that cannot write the verdict line: its reply is started
  with ``Winner:`` and the verdict is the likelier of the next tokens A and B, no sampling; the record's
  text gives both probabilities and their mass, the share of the next-token probability on A or B).
  Verdict-first, the ranking uses the probabilities of both orders (balanced position calibration,
  Wang et al. 2023, arXiv 2305.17926): judgement a beats b when (P(A | a first) + P(B | a second)) / 2
  > 1/2, one battle per unordered pair, so a model that always says A still ranks its judgements.
- ``judge_pairs``: the judgements ranked from their verdicts (``meta.rank_judgements``; ``elo`` with
  the position weights of the whole iteration), then best vs worst (``meta.judge_pair``), the chosen
  one within ``max_chosen_words`` and with a score that parses (so judge training never teaches a
  judgement that ends without one). A judge pair's prompt is the judge prompt the judgements answered;
  its chosen/rejected scores are the meta-ranking's (wins or Elo), not judge scores.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Sequence

import torch

from srl.core.hashing import derive_seed
from srl.core.progress import ChunkHook, progress_bar
from srl.data.partial import PartialJsonl
from srl.data.records import Candidate, Judgement, MetaJudgement, Pair
from srl.generation.sampling import SamplingSettings
from srl.judging.backends import judge_texts
from srl.judging.meta import META, RANKINGS, MetaTemplate, MetaVerdict, first_shown_win_rate, judge_pair, orders, position_weights, rank_judgements, words
from srl.judging.score_first import option_probabilities
from srl.judging.templates import JudgeTemplate

RESPONSES = ("max_variance", "top", "all")
META_MODES = ("sample", "verdict_first")
VERDICT_LEAD = "Winner:"


@dataclasses.dataclass
class MetaSettings:
    """``conf/meta``: Meta-Rewarding's meta-judge (off by default: the 2024 paper's loop).

    ``enabled``: add an ``iter{t}/meta`` stage after the judgements, whose judge pairs train with the
    actor pairs in the same DPO stage; ``template``: the meta-judge prompt; ``responses``: whose
    judgements are compared (module docstring); ``ranking``: ``wins`` | ``elo``; ``prior``: Elo's prior
    tied battles; ``max_chosen_words``: the chosen judgement's length limit (None: none); ``sampling``:
    the meta-judge's sampling.
    """

    enabled: bool = False
    template: MetaTemplate = dataclasses.field(default_factory=lambda: MetaTemplate(META))
    mode: str = "sample"
    responses: str = "max_variance"
    ranking: str = "elo"
    prior: float = 0.1
    max_chosen_words: int | None = None
    sampling: SamplingSettings = dataclasses.field(default_factory=lambda: SamplingSettings(max_new_tokens=128))

    def __post_init__(self) -> None:
        if self.mode not in META_MODES:
            raise ValueError(f"meta.mode must be one of {META_MODES}, got {self.mode!r}")
        if self.responses not in RESPONSES:
            raise ValueError(f"meta.responses must be one of {RESPONSES}, got {self.responses!r}")
        if self.ranking not in RANKINGS:
            raise ValueError(f"meta.ranking must be one of {RANKINGS}, got {self.ranking!r}")
        if self.prior <= 0:
            raise ValueError(f"meta.prior={self.prior} must be > 0 (tied battles that keep every Elo rating finite)")
        if self.max_chosen_words is not None and self.max_chosen_words < 1:
            raise ValueError(f"meta.max_chosen_words={self.max_chosen_words} must be >= 1, or null for no limit")

    def check(self, judge: Any) -> None:
        """Refuse a judge whose judgements cannot be meta-judged, before any model loads."""
        if not self.enabled:
            return
        if judge.external is not None or judge.by != "self":
            raise ValueError("meta.enabled=true trains M_t as a judge on its own judgements: it needs judge.by=self")
        if judge.mode != "sample" or not isinstance(judge.template, JudgeTemplate):
            raise ValueError(f"meta.enabled=true compares written judgements of one reply: it needs judge.mode=sample with a "
                             f"rubric template, not judge.mode={judge.mode!r}")
        if judge.num_samples < 2:
            raise ValueError(f"meta.enabled=true ranks a reply's judgements against each other: judge.num_samples must be >= 2, "
                             f"got {judge.num_samples}")


def rubric_text(template: JudgeTemplate) -> str:
    """The judge prompt with its request and reply left out: the rubric the meta-judge checks judgements against."""
    return template.text.format(prompt="(the user request, shown below)", response="(the reply, shown below)")


def _parsed(j: Judgement) -> list[float]:
    return [s for s in j.scores if s is not None]


def select_replies(candidates: Sequence[Candidate], judgements: Sequence[Judgement], how: str) -> tuple[list[tuple[Candidate, Judgement]], int]:
    """The (candidate, its judgements) pairs to meta-judge, in candidate order, and the number of prompts without one."""
    by_key = {(j.prompt_id, j.candidate): j for j in judgements}
    prompts: dict[str, list[tuple[Candidate, Judgement]]] = {}
    for c in candidates:
        j = by_key.get((c.prompt_id, c.candidate))
        prompts.setdefault(c.prompt_id, [])
        if j is not None and len(j.texts) >= 2:
            prompts[c.prompt_id].append((c, j))
    chosen: list[tuple[Candidate, Judgement]] = []
    skipped = 0
    for items in prompts.values():
        if how == "all":
            pick = items
        elif how == "top":
            scored = [x for x in items if x[1].score is not None]
            pick = [max(scored, key=lambda x: (x[1].score, -x[0].candidate))] if scored else []
        else:
            spread = [x for x in items if len(_parsed(x[1])) >= 2]
            pick = [max(spread, key=lambda x: (statistics.pvariance(_parsed(x[1])), -x[0].candidate))] if spread else []
        chosen += pick
        skipped += not pick
    return chosen, skipped


def meta_judge_replies(
    model: torch.nn.Module, tokenizer: Any, items: Sequence[tuple[Candidate, Judgement]], template: JudgeTemplate,
    settings: MetaSettings, seed: int, iteration: int, store: PartialJsonl, hook: ChunkHook | None = None,
) -> None:
    """A ``MetaJudgement`` per item: M_t's verdict on every ordered pair of the reply's judgements."""
    rubric = rubric_text(template)
    chunk = settings.sampling.batch_size  # replies per chunk; each is k(k-1) meta-judge prompts
    done = store.read(chunk)
    bar = progress_bar(len(items), len(done), f"iter{iteration} meta-judging")
    for start in range(len(done), len(items), chunk):
        part = items[start:start + chunk]
        shown = [orders(len(j.texts)) for _, j in part]
        prompts = [settings.template.render(c.prompt, c.response, rubric, j.texts[a], j.texts[b])
                   for (c, j), pairs in zip(part, shown) for a, b in pairs]
        seeds = [derive_seed(seed, iteration, "meta", c.prompt_id, c.candidate, a, b) for (c, _), pairs in zip(part, shown) for a, b in pairs]
        if settings.mode == "verdict_first":
            read = option_probabilities(model, tokenizer, prompts, VERDICT_LEAD, ("A", "B"), settings.sampling)
            texts = [f"verdict-first: P(A)={a:.4f} P(B)={b:.4f}, A/B mass {mass:.4f}" for (a, b), mass in read]
            verdicts = [None if mass <= 0 else "A" if a > b else "B" if b > a else "tie" for (a, b), mass in read]
            first = [a if mass > 0 else 0.5 for (a, _), mass in read]  # no mass on A or B: no preference
        else:
            texts = judge_texts(model, tokenizer, prompts, seeds, settings.sampling)
            verdicts = [settings.template.parse(t) for t in texts]
            first = []
        records, at = [], 0
        for (c, _), pairs in zip(part, shown):
            own = slice(at, at + len(pairs))
            at += len(pairs)
            records.append(MetaJudgement(c.prompt_id, c.candidate, tuple(pairs), tuple(texts[own]), tuple(verdicts[own]), tuple(first[own])))
        store.append(records)
        bar.update(len(part))
        if hook:
            hook("meta", start + len(part))
    bar.close()


def verdicts_of(record: MetaJudgement) -> list[MetaVerdict]:
    return [MetaVerdict(record.prompt_id, record.candidate, a, b, text, verdict)
            for (a, b), text, verdict in zip(record.orders, record.texts, record.verdicts)]


def calibrated_verdicts(record: MetaJudgement) -> list[MetaVerdict]:
    """Verdict-first battles, one per unordered pair {a, b} shown in both orders: a wins when
    (P(A | a first) + 1 - P(A | b first)) / 2 > 1/2 (module docstring); a tie at 1/2."""
    prob = dict(zip(record.orders, record.first_probs))
    out = []
    for (a, b), p in prob.items():
        if a < b and (b, a) in prob:
            share = (p + 1.0 - prob[(b, a)]) / 2.0
            verdict = "tie" if abs(share - 0.5) < 1e-9 else "A" if share > 0.5 else "B"  # equal up to float rounding: a tie
            out.append(MetaVerdict(record.prompt_id, record.candidate, a, b, f"calibrated P(a beats b)={share:.4f}", verdict))
    return out


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def judge_pairs(items: Sequence[tuple[Candidate, Judgement]], records: Sequence[MetaJudgement], template: JudgeTemplate,
                settings: MetaSettings) -> tuple[list[Pair], dict[str, Any]]:
    """Judge pairs (``source="judge"``, no reference log-probs yet: the pairs stage adds them) and the stage's metrics."""
    by_key = {(r.prompt_id, r.candidate): r for r in records}
    every = [v for r in records for v in verdicts_of(r)]
    calibrated = settings.mode == "verdict_first"
    battles = {(r.prompt_id, r.candidate): calibrated_verdicts(r) if calibrated else verdicts_of(r) for r in records}
    # the iteration's position bias, so every reply's battles weigh alike; calibrated battles have none left to weigh
    weights = (0.5, 0.5) if calibrated else position_weights(every)
    pairs: list[Pair] = []
    dropped = {"no_parsed_judgement": 0, "too_long": 0, "tied": 0}
    chosen_scores, rejected_scores = [], []
    for c, j in items:
        record = by_key.get((c.prompt_id, c.candidate))
        if record is None:
            raise ValueError(f"no meta-judgement of prompt {c.prompt_id} candidate {c.candidate}; rerun the meta stage")
        ranks = rank_judgements(battles[(c.prompt_id, c.candidate)], len(j.texts), settings.ranking, weights=weights, prior=settings.prior)
        usable = [s is not None for s in j.scores]
        pick = judge_pair(j.texts, ranks, settings.max_chosen_words, usable)
        if pick is None:
            fits = [u and (settings.max_chosen_words is None or words(t) <= settings.max_chosen_words) for t, u in zip(j.texts, usable)]
            dropped["no_parsed_judgement" if not any(usable) else "too_long" if not any(fits) else "tied"] += 1
            continue
        ci, ri = pick
        pairs.append(Pair(f"{c.prompt_id}#{c.candidate}", template.render(c.prompt, c.response), j.texts[ci], j.texts[ri],
                          ranks[ci], ranks[ri], None, None, True, j.scores[ri] is not None, "judge"))
        chosen_scores.append(j.scores[ci])
        if j.scores[ri] is not None:
            rejected_scores.append(j.scores[ri])
    verdicts = [v.verdict for v in every]
    decisive = sum(v in ("A", "B") for v in verdicts)
    metrics: dict[str, Any] = {
        "replies": len(items),
        "verdicts": len(verdicts),
        "parse_fail_rate": sum(v is None for v in verdicts) / len(verdicts) if verdicts else None,
        "tie_rate": sum(v == "tie" for v in verdicts) / len(verdicts) if verdicts else None,
        "first_shown_win_rate": first_shown_win_rate(every),  # position bias: 0.5 is none
        "decisive_verdicts": decisive,
        "calibrated_decisive": sum(v.verdict in ("A", "B") for b in battles.values() for v in b) if calibrated else None,
        "verdict_mass_mean": _mean([float(t.rsplit("mass ", 1)[1]) for r in records for t in r.texts if t.startswith("verdict-first:")]) if settings.mode == "verdict_first" else None,
        "judge_pairs": len(pairs),
        **{f"dropped/{k}": n for k, n in dropped.items()},
        "chosen_words_mean": _mean([words(p.chosen) for p in pairs]),
        "rejected_words_mean": _mean([words(p.rejected) for p in pairs]),
        "chosen_judge_score_mean": _mean(chosen_scores),  # the scores the chosen and rejected judgements gave the reply
        "rejected_judge_score_mean": _mean(rejected_scores),
    }
    return pairs, metrics
