"""LLM-as-a-Judge on each candidate (paper Sec. 3.2, step 3): K sampled judgements per reply, parsed
and averaged (or score-first, or a pairwise round robin by mode), in resumable chunks; and the
judgement metrics (parse-failure rate, score histogram)."""

from __future__ import annotations

import statistics
from typing import Any, Sequence

import torch

from srl.core.hashing import derive_seed
from srl.core.progress import ChunkHook, progress_bar
from srl.data.partial import PartialJsonl
from srl.data.records import Candidate, Judgement
from srl.judging.backends import judge_scores, judge_texts
from srl.judging.pairwise import judge_round_robin
from srl.judging.parsing import score_histogram
from srl.judging.score_first import score_first
from srl.judging.settings import JudgeSettings
from srl.judging.templates import JudgeTemplate, PairwiseTemplate


def judge_candidates(
    model: torch.nn.Module, tokenizer: Any, candidates: Sequence[Candidate], settings: JudgeSettings,
    seed: int, iteration: int, store: PartialJsonl, hook: ChunkHook | None = None,
) -> dict[str, Any]:
    """K judge samples per candidate; score = mean of the samples that parse, None if none does.

    The judge is ``model`` or, when ``settings.external`` is set, the external judge
    (``srl/judging/backends.py``; ``model`` and ``tokenizer`` are then unused). In ``score_first`` mode
    each candidate gets one record sample (the score distribution in words) and the expected score
    (``srl/judging/score_first.py``). A reward-model judge gives one score per candidate, its text
    the score written out.
    """
    if settings.mode == "pairwise":
        return judge_round_robin(model, tokenizer, candidates, settings, seed, iteration, store, hook)
    template, k = settings.template, settings.num_samples
    chunk = settings.sampling.batch_size  # candidates per chunk; each chunk is chunk * K sequences
    done = store.read(chunk)
    bar = progress_bar(len(candidates), len(done), f"iter{iteration} judging")
    for start in range(len(done), len(candidates), chunk):
        part = candidates[start:start + chunk]
        if settings.scores_directly:
            rewards = judge_scores(settings.external, [(c.prompt, c.response) for c in part])
            store.append(Judgement(c.prompt_id, c.candidate, (repr(r),), (r,), r) for c, r in zip(part, rewards))
        elif settings.mode == "score_first":
            store.append(_score_first_records(model, tokenizer, part, settings))
        else:
            prompts = [template.render(c.prompt, c.response) for c in part for _ in range(k)]
            seeds = [derive_seed(seed, iteration, "judge", c.prompt_id, c.candidate, s) for c in part for s in range(k)]
            texts = judge_texts(model, tokenizer, prompts, seeds, settings.sampling, settings.external)
            records = []
            for i, c in enumerate(part):
                samples = tuple(texts[i * k:(i + 1) * k])
                scores = tuple(template.parse(t) for t in samples)
                parsed = [s for s in scores if s is not None]
                records.append(Judgement(c.prompt_id, c.candidate, samples, scores, sum(parsed) / len(parsed) if parsed else None))
            store.append(records)
        bar.update(len(part))
        if hook:
            hook("judgements", start + len(part))
    bar.close()
    return {}


def _score_first_records(model: torch.nn.Module, tokenizer: Any, part: Sequence[Candidate], settings: JudgeSettings) -> list[Judgement]:
    t = settings.template
    scores, reader = score_first(model, tokenizer, [t.render(c.prompt, c.response) for c in part], t, settings.sampling)
    return [Judgement(c.prompt_id, c.candidate, (e.describe(reader.values),), (e.score,), e.score) for c, e in zip(part, scores)]


def judgement_metrics(judgements: Sequence[Judgement], template: JudgeTemplate | PairwiseTemplate | None) -> dict[str, Any]:
    """Parse failures, unscored replies, the scores' mean, min, max and std; with a rubric
    (``template``; None for a reward model, whose scores are unbounded) also the mean as a
    fraction of the declared range and the histogram over it."""
    samples = [s for j in judgements for s in j.scores]
    scored = [j.score for j in judgements if j.score is not None]
    metrics: dict[str, Any] = {
        "samples": len(samples),
        "parse_fail_rate": sum(s is None for s in samples) / max(1, len(samples)),
        "unscored_replies": len(judgements) - len(scored),
        "mean_score": statistics.fmean(scored) if scored else None,
        "score_min": min(scored) if scored else None,
        "score_max": max(scored) if scored else None,
        "score_std": statistics.pstdev(scored) if scored else None,
    }
    if template is not None:
        # 0..1 over the format's declared range, so formats with different scales compare
        metrics["mean_score_frac"] = (statistics.fmean(scored) - template.min_score) / (template.max_score - template.min_score) if scored else None
        hist = score_histogram(scored, int(template.min_score), int(template.max_score))
        metrics.update({f"score_hist/{b}": n for b, n in hist.items()})
    return metrics
