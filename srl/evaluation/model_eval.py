"""Evaluation of one model (paper Sec. 4.2): judge quality against human ranks, and head-to-head.

    python -m srl.evaluate                                   # the embedded model, seed data's held-out trees
    python -m srl.evaluate model=hf model.name_or_path=outputs/.../m1/model \\
        data=oasst_local data.source.path=../shared/data/oasst1/en_validation.jsonl \\
        eval.h2h.baseline=embedded                           # + M1 vs SmolLM2 as shipped

Three parts, each switchable in ``conf/eval``:

- **rm** (reward modelling): every reply of every held-out prompt with two or more human-ranked
  replies is judged K times with the configured judge; the mean of the parsable samples is the
  reply's score. Held-out trees come from the same seeded split by ``message_tree_id`` as
  training, so evaluation prompts never come from a training tree. Metrics (``eval/rm/*``,
  defined in ``srl.evaluation.judge_agreement``): pairwise accuracy (score ties count as wrong; the tie rate is
  reported), 5-best %, exact match %, Spearman and Kendall tau averaged over prompts, judge
  parse-failure rate and score histogram.
- **replies**: one reply per evaluation prompt (``replies.jsonl``) and its AlpacaEval export
  (``alpaca_eval.json``).
- **h2h** (head-to-head, ``srl.evaluation.head_to_head``): the replies against a baseline model's or a reference
  file's, judged pairwise in both orders; win/tie/loss with 95% bootstrap intervals (``eval/h2h/*``).

The loop runs the same evaluation after every model M_t (``srl.pipeline.loop``); ``srl.evaluation.report`` makes the
table with a row per model.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path
from typing import Any, Callable, Sequence

from srl.core.rundir import Stamp
from srl.data import prompt_sets as evalsets
from srl.data.partial import PartialJsonl
from srl.data.records import Candidate, Judgement, PromptRecord, RankedPrompt, read_jsonl
from srl.evaluation import head_to_head as headtohead
from srl.evaluation import judge_agreement as metrics
from srl.evaluation.head_to_head import Comparison, H2HSettings
from srl.generation.slot import ModelSlot
from srl.judging.pointwise import judge_candidates, judgement_metrics
from srl.judging.settings import JudgeSettings
from srl.models.embedded import spec_from_name

log = logging.getLogger(__name__)


# Returns the baseline's replies by prompt id and the baseline's name; called after the model's own
# replies are written, so that a baseline model is loaded only then (one model in memory).
BaselineFn = Callable[[Sequence[PromptRecord]], tuple[dict[str, Candidate], str]]


@dataclasses.dataclass
class RMSettings:
    """``eval.rm``: judge K samples per reply (None: ``judge.num_samples``) on up to ``max_prompts`` prompts."""

    enabled: bool = True
    num_samples: int | None = None
    max_prompts: int | None = None
    seed: int = 0


@dataclasses.dataclass
class EvalSettings:
    """``conf/eval``: which evaluations run, standalone and (``in_loop``) after every model of a run."""

    rm: RMSettings
    h2h: H2HSettings
    in_loop: bool = True
    alpaca_export: bool = True


def ranked_candidates(groups: Sequence[RankedPrompt]) -> list[Candidate]:
    """Each human-ranked reply as a candidate record (prompt id = the prompt's message id)."""
    return [Candidate(g.message_id, i, g.prompt, reply, 0, True) for g in groups for i, reply in enumerate(g.replies)]


def rm_metrics(groups: Sequence[RankedPrompt], judgements: Sequence[Judgement], template: Any) -> dict[str, Any]:
    """The paper's judge-agreement metrics from judged replies of human-ranked groups."""
    scores = {(j.prompt_id, j.candidate): j.score for j in judgements}
    pairs = metrics.PairCounts(0, 0, 0, 0)
    hits = best = exact = exact_total = 0
    spearmans, kendalls = [], []
    for g in groups:
        s = [scores.get((g.message_id, i)) for i in range(len(g.replies))]
        pairs = pairs + metrics.pair_counts(s, g.ranks)
        h, b = metrics.best_hits(s, g.ranks, template.max_score)
        hits, best = hits + h, best + b
        match = metrics.exact_match(s, g.ranks)
        if match is not None:
            exact, exact_total = exact + int(match), exact_total + 1
        spearmans.append(metrics.spearman(s, g.ranks))
        kendalls.append(metrics.kendall_tau(s, g.ranks))
    spearman, spearman_undefined = metrics.mean_defined(spearmans)
    kendall, kendall_undefined = metrics.mean_defined(kendalls)
    out: dict[str, Any] = {
        "prompts": len(groups),
        "replies": sum(len(g.replies) for g in groups),
        "pairs": pairs.agree + pairs.disagree + pairs.tie,
        "pairs_unscored": pairs.unscored,
        "pairwise_acc": pairs.accuracy,
        "tie_rate": pairs.tie_rate,
        "five_best_pct": 100.0 * hits / best if best else None,
        "five_best_count": best,
        "exact_match_pct": 100.0 * exact / exact_total if exact_total else None,
        "spearman": spearman,
        "spearman_undefined": spearman_undefined,
        "kendall_tau": kendall,
        "kendall_undefined": kendall_undefined,
    }
    judged = judgement_metrics(judgements, template)
    out["parse_fail_rate"] = judged["parse_fail_rate"]
    out.update({k: v for k, v in judged.items() if k.startswith("score_hist/")})
    return out


def evaluate_judge(
    model: Any, tokenizer: Any, groups: Sequence[RankedPrompt], judge: JudgeSettings, seed: int, out_dir: Path, stamp: Stamp | None = None,
) -> dict[str, Any]:
    """Judge every reply (resumable, written to ``rm_judgements.jsonl``) and compute the metrics."""
    store = PartialJsonl(out_dir / "rm_judgements.jsonl", Judgement, stamp, on_stale="discard")
    judge_candidates(model, tokenizer, ranked_candidates(groups), judge, seed, 0, store)
    judgements = read_jsonl(store.finish(), Judgement)
    return rm_metrics(groups, judgements, judge.template)


def subset(items: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    """A seeded subset of ``limit`` items in their original order (all of them when ``limit`` is None)."""
    if limit is None or len(items) <= limit:
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), limit))]


def evaluate_model(
    name: str, key: str, spec: Any, slot: ModelSlot, out_dir: Path, settings: EvalSettings, judge: JudgeSettings,
    groups: Sequence[RankedPrompt], prompts: Sequence[PromptRecord], baseline: BaselineFn | None, seed: int,
    stamp: Stamp | None = None,
) -> dict[str, Any]:
    """Run the enabled evaluations of one model into ``out_dir``; metrics named ``rm/*`` and ``h2h/*``.

    Every output is written in chunks and resumes where it stopped; with a ``stamp`` (the stage and
    its config), chunks written under another config are discarded first, never mixed in. Models
    are loaded through ``slot`` (one in memory): the evaluated model, then the baseline model if
    any, then the judge.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    model, tokenizer = slot.get(key, spec)
    if settings.rm.enabled:
        if groups:
            rm_groups = subset(groups, settings.rm.max_prompts, settings.rm.seed)
            k = settings.rm.num_samples or judge.num_samples
            rm = evaluate_judge(model, tokenizer, rm_groups, dataclasses.replace(judge, num_samples=k), seed, out_dir, stamp)
            result.update({f"rm/{k2}": v for k2, v in rm.items()})
            result["rm/judge_samples"] = k
        else:
            log.warning("eval rm: no held-out prompt with two or more ranked replies; skipped")
    h2h = settings.h2h
    if not prompts or not (h2h.enabled or settings.alpaca_export):
        return result
    store = PartialJsonl(out_dir / "replies.jsonl", Candidate, stamp, on_stale="discard")
    headtohead.generate_replies(model, tokenizer, prompts, h2h.reply_sampling, h2h.seed, store)
    replies = read_jsonl(store.finish(), Candidate)
    if settings.alpaca_export:
        evalsets.write_alpaca_eval(out_dir / "alpaca_eval.json", replies, name)
    result["replies/count"] = len(replies)
    result["replies/truncated_rate"] = sum(not r.finished for r in replies) / len(replies)
    if not h2h.enabled or baseline is None:
        return result
    theirs, baseline_name = baseline(prompts)
    mine = {r.prompt_id: r for r in replies}
    missing = sum(p not in theirs for p in mine)
    if missing:
        log.warning("eval h2h: %d of %d prompts have no %s reply; they are left out", missing, len(mine), baseline_name)
    if missing == len(mine):
        raise ValueError(f"eval h2h: no prompt of the evaluation set has a reply from {baseline_name}; check eval.h2h.reference / prompts")
    judge_model, judge_tokenizer = (slot.get(key, spec) if h2h.judge is None else slot.get(f"judge:{h2h.judge}", spec_from_name(h2h.judge)))
    comparisons = PartialJsonl(out_dir / "h2h_comparisons.jsonl", Comparison, stamp, on_stale="discard")
    headtohead.compare(judge_model, judge_tokenizer, mine, theirs, h2h, comparisons)
    judged = read_jsonl(comparisons.finish(), Comparison)
    stats = headtohead.h2h_metrics(judged, mine, theirs, h2h.bootstrap_samples, h2h.seed)
    result.update({f"h2h/{k}": v for k, v in stats.items()})
    result["h2h/prompts_without_baseline"] = missing
    result["h2h/baseline"] = baseline_name
    result["h2h/judge"] = h2h.judge or name
    return result


def reference_baseline(path: str | Path, name: str | None = None) -> BaselineFn:
    """Baseline replies from a file (srl replies.jsonl or AlpacaEval JSON), named ``name`` or the path."""
    def load(prompts: Sequence[PromptRecord]) -> tuple[dict[str, Candidate], str]:
        found, _ = evalsets.read_reference(path, prompts)
        return found, name or str(path)

    return load


def model_baseline(name: str, spec: Any, slot: ModelSlot, out_dir: Path, h2h: H2HSettings, stamp: Stamp | None = None) -> BaselineFn:
    """Replies of a baseline model, generated (and kept) under ``out_dir``."""
    def load(prompts: Sequence[PromptRecord]) -> tuple[dict[str, Candidate], str]:
        store = PartialJsonl(out_dir / "replies.jsonl", Candidate, stamp, on_stale="discard")
        model, tokenizer = slot.get(f"baseline:{name}", spec)
        headtohead.generate_replies(model, tokenizer, prompts, h2h.reply_sampling, h2h.seed, store)
        return {r.prompt_id: r for r in read_jsonl(store.finish(), Candidate)}, name

    return load
