"""Stage ``iter{t}/meta`` (Meta-Rewarding, Wu et al. 2024): M_t meta-judges its own judgements of the
iteration's replies and the ranked judgements give judge pairs (``judge_pairs.jsonl``), which the pairs
stage gives reference log-probs and DPO trains on with the actor pairs (``srl/judging/meta_judging.py``)."""

from __future__ import annotations

from srl.data.partial import PartialJsonl
from srl.data.records import Candidate, Judgement, MetaJudgement, Pair, read_jsonl, write_jsonl
from srl.judging.meta_judging import MetaSettings, judge_pairs, meta_judge_replies, select_replies
from srl.judging.settings import JudgeSettings
from srl.pipeline.context import StageContext, StageResult
from srl.pipeline.tracking import SAMPLE_ROWS, prefixed

JUDGE_PAIRS = "judge_pairs.jsonl"


def run_meta(ctx: StageContext, t: int, meta: MetaSettings, judge: JudgeSettings) -> StageResult:
    """Meta-judgements (``meta_judgements.jsonl``, in resumable chunks) and judge pairs (``judge_pairs.jsonl``)."""
    d = ctx.iter_dir(t)
    candidates = read_jsonl(d / "candidates.jsonl", Candidate)
    judgements = read_jsonl(d / "judgements.jsonl", Judgement)
    items, skipped = select_replies(candidates, judgements, meta.responses)
    store = PartialJsonl(d / "meta_judgements.jsonl", MetaJudgement, ctx.stamp(f"iter{t}/meta"))
    if items:
        model, tokenizer = ctx.models.load_m(t)
        meta_judge_replies(model, tokenizer, items, judge.template, meta, ctx.seed, t, store, ctx.hook)
    path = store.finish()
    records = read_jsonl(path, MetaJudgement)
    pairs, metrics = judge_pairs(items, records, judge.template, meta)
    metrics["prompts_without_reply"] = skipped  # no reply with >= 2 judgements (for max_variance: >= 2 parsed scores)
    write_jsonl(d / JUDGE_PAIRS, pairs)
    ctx.tracker.log_samples(f"iter{t}/meta/samples", ["prompt_id", "chosen_judgement", "rejected_judgement", "chosen_rank", "rejected_rank"],
                            [[p.prompt_id, p.chosen, p.rejected, p.chosen_score, p.rejected_score] for p in pairs[:SAMPLE_ROWS]])
    return prefixed(f"iter{t}/meta", metrics), [str(path), str(d / JUDGE_PAIRS)]


def read_judge_pairs(ctx: StageContext, t: int) -> list[Pair]:
    return read_jsonl(ctx.iter_dir(t) / JUDGE_PAIRS, Pair)
