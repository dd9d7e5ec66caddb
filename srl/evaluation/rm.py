"""Judge quality against human preferences (paper Sec. 4.2 "reward modeling"), with the baseline a
judge must beat and intervals.

A set of human-ranked groups (held-out oasst1 trees, or a preference set of prompt / chosen /
rejected pairs as two-reply groups) is judged reply by reply; ``rm_metrics`` compares the
scores with the human ranks (``srl.evaluation.judge_agreement``) and adds:

- **the length baseline**: the same metrics for the judge "the longer reply wins" (score = the
  reply's word count), on *the same pairs* the judge scored (``length_*``), and on every pair
  (``length_pairwise_acc_all``). Equal word counts are a tie, which counts as wrong, as for the
  judge. An LLM judge that does not beat this has learnt nothing about quality beyond length.
- **95% intervals**: a percentile bootstrap over prompts (``*_ci_low``, ``*_ci_high``) for pairwise
  accuracy, Spearman and Kendall, of the judge and of the baseline.
- ``vs_length``: ``above`` when the judge's interval for pairwise accuracy lies above the
  baseline's accuracy, ``below`` when it lies below, else ``within``.
- ``tie_label_pairs`` / ``tie_label_judge_ties``: pairs the humans marked as a tie (equal ranks,
  left out of accuracy), and how many of them the judge also scored equal.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

from srl.data.partial import PartialJsonl
from srl.data.records import Candidate, Judgement, RankedPrompt, read_jsonl
from srl.evaluation import judge_agreement as metrics
from srl.evaluation.head_to_head import words
from srl.evaluation.intervals import with_interval
from srl.judging.pointwise import judge_candidates, judgement_metrics
from srl.judging.settings import JudgeSettings


@dataclasses.dataclass(frozen=True)
class GroupStats:
    """One prompt's contribution to the set's metrics (the bootstrap's unit)."""

    pairs: metrics.PairCounts
    spearman: float | None
    kendall: float | None
    length_pairs: metrics.PairCounts       # the longer-reply judge on the pairs the judge scored
    length_pairs_all: metrics.PairCounts   # ... on every pair
    length_spearman: float | None
    length_kendall: float | None


def group_stats(scores: Sequence[float | None], group: RankedPrompt) -> GroupStats:
    lengths = [float(words(r)) for r in group.replies]
    same = [n if s is not None else None for n, s in zip(lengths, scores)]
    return GroupStats(
        metrics.pair_counts(scores, group.ranks), metrics.spearman(scores, group.ranks), metrics.kendall_tau(scores, group.ranks),
        metrics.pair_counts(same, group.ranks), metrics.pair_counts(lengths, group.ranks),
        metrics.spearman(same, group.ranks), metrics.kendall_tau(same, group.ranks),
    )


def _accuracy(field: str):
    return lambda units: sum((getattr(u, field) for u in units), metrics.PairCounts()).accuracy


def _mean(field: str):
    return lambda units: metrics.mean_defined(getattr(u, field) for u in units)[0]


def tie_labels(groups: Sequence[RankedPrompt], scores: dict[tuple[str, int], float | None]) -> tuple[int, int]:
    """(pairs with equal human ranks, of those with both scores equal)."""
    pairs = ties = 0
    for g in groups:
        for i, j in itertools.combinations(range(len(g.replies)), 2):
            if g.ranks[i] == g.ranks[j]:
                pairs += 1
                si, sj = scores.get((g.message_id, i)), scores.get((g.message_id, j))
                ties += int(si is not None and si == sj)
    return pairs, ties


def rm_metrics(
    groups: Sequence[RankedPrompt], judgements: Sequence[Judgement], template: Any, samples: int = 1000, seed: int = 0,
) -> dict[str, Any]:
    """The judge's agreement with the human ranks, the length baseline and their intervals.

    ``template``: the rubric whose ``max_score`` defines 5-best %; None for a reward-model judge
    (unbounded scores: 5-best % is then None, and the score range is reported instead)."""
    scores = {(j.prompt_id, j.candidate): j.score for j in judgements}
    units = [group_stats([scores.get((g.message_id, i)) for i in range(len(g.replies))], g) for g in groups]
    total = sum((u.pairs for u in units), metrics.PairCounts())
    hits = best = exact = exact_total = 0
    for g in groups:
        s = [scores.get((g.message_id, i)) for i in range(len(g.replies))]
        if template is not None:
            h, b = metrics.best_hits(s, g.ranks, template.max_score)
            hits, best = hits + h, best + b
        match = metrics.exact_match(s, g.ranks)
        if match is not None:
            exact, exact_total = exact + int(match), exact_total + 1
    out: dict[str, Any] = {
        "prompts": len(groups),
        "replies": sum(len(g.replies) for g in groups),
        "pairs": total.scored,
        "pairs_unscored": total.unscored,
        "tie_rate": total.tie_rate,
        "five_best_pct": 100.0 * hits / best if best else None,
        "five_best_count": best,
        "exact_match_pct": 100.0 * exact / exact_total if exact_total else None,
        "spearman_undefined": metrics.mean_defined(u.spearman for u in units)[1],
        "kendall_undefined": metrics.mean_defined(u.kendall for u in units)[1],
    }
    for name, stat in (("pairwise_acc", _accuracy("pairs")), ("spearman", _mean("spearman")), ("kendall_tau", _mean("kendall")),
                       ("length_pairwise_acc", _accuracy("length_pairs")), ("length_spearman", _mean("length_spearman")),
                       ("length_kendall_tau", _mean("length_kendall"))):
        out.update(with_interval(name, units, stat, samples, seed))
    out["length_pairwise_acc_all"] = _accuracy("length_pairs_all")(units)
    out["length_tie_rate"] = sum((u.length_pairs for u in units), metrics.PairCounts()).tie_rate
    low, base = out["pairwise_acc_ci_low"], out["length_pairwise_acc"]
    out["vs_length"] = None if low is None or base is None else "above" if low > base else "below" if out["pairwise_acc_ci_high"] < base else "within"
    out["tie_label_pairs"], out["tie_label_judge_ties"] = tie_labels(groups, scores)
    judged = judgement_metrics(judgements, template)
    out["parse_fail_rate"] = judged["parse_fail_rate"]
    out.update({k: v for k, v in judged.items() if k.startswith("score_hist/")})
    if template is None:
        out.update({k: judged[k] for k in ("score_min", "score_max", "score_std")})
    return out


def ranked_candidates(groups: Sequence[RankedPrompt]) -> list[Candidate]:
    """Each human-ranked reply as a candidate record (prompt id = the group's message id)."""
    return [Candidate(g.message_id, i, g.prompt, reply, 0, True) for g in groups for i, reply in enumerate(g.replies)]


def judge_groups(
    model: Any, tokenizer: Any, groups: Sequence[RankedPrompt], judge: JudgeSettings, seed: int, store: PartialJsonl,
) -> list[Judgement]:
    """Judge every reply of ``groups`` (resumable in ``store``); the judgements."""
    judge_candidates(model, tokenizer, ranked_candidates(groups), judge, seed, 0, store)
    return read_jsonl(store.finish(), Judgement)
