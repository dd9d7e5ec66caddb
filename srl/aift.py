"""AI feedback for one iteration (paper Sec. 3.2): new prompts, N candidates, K judge samples each.

Each function runs one stage over fixed chunks of items and appends every finished chunk to a
``PartialJsonl``, so a stopped stage continues where it stopped. Every draw is seeded from
(run seed, iteration, stage, item), and chunks do not depend on where a run stopped, so a resumed
run writes the same records as an uninterrupted one.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from srl import distributed
from srl.generation import SamplingSettings, newline_token_ids, sample_chat
from srl.judge import score_first
from srl.metrics import score_histogram
from srl.oasst import derive_seed
from srl.records import Candidate, Judgement, PartialJsonl, PromptAttempt, PromptRecord, RecordError, iter_json_lines
from srl.selfinstruct import PromptFilters, few_shot_prompt, parse_task, reject_reason, words
from srl.templates import JudgeTemplate, PairwiseTemplate

log = logging.getLogger(__name__)

# Called after each chunk is written, with (stage, records so far); tests use it to stop a run.
ChunkHook = Callable[[str, int], None]


@dataclasses.dataclass
class PromptGenSettings:
    """``conf/prompt_gen``: how many prompts, from which demonstrations, model and filters."""

    num_prompts: int = 32
    num_human_shots: int = 6
    num_model_shots: int = 2
    max_attempts: int | None = None  # default: 4 x num_prompts
    source: str = "generate"  # generate | pool
    pool_path: str | None = None
    model: str | None = None  # None: the starting model M0
    filters: PromptFilters = dataclasses.field(default_factory=PromptFilters)
    sampling: SamplingSettings = dataclasses.field(default_factory=lambda: SamplingSettings(temperature=0.6, top_p=0.9, max_new_tokens=128))

    def __post_init__(self) -> None:
        if self.source not in ("generate", "pool"):
            raise ValueError(f"prompt_gen.source must be 'generate' or 'pool', got {self.source!r}")
        if self.source == "pool" and not self.pool_path:
            raise ValueError("prompt_gen.source=pool needs prompt_gen.pool_path (a JSONL file with a 'prompt' field)")


@dataclasses.dataclass
class CandidateSettings:
    """``conf/generation``: N replies per prompt from the current model (paper: 4, T=0.7, p=0.9)."""

    num_candidates: int = 4
    sampling: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)


JUDGE_MODES = ("sample", "score_first", "pairwise")


@dataclasses.dataclass
class JudgeSettings:
    """``conf/judge``: the format (template), K samples per reply (paper: 3) and their sampling.

    ``mode``: ``sample`` (the paper: justification then score, K samples averaged), ``score_first``
    (expected score from one forward pass, ``srl/judge.py``) or ``pairwise`` (a ``PairwiseTemplate``
    judges every ordered pair of a prompt's replies K times; a reply's score is its win fraction).
    """

    template: JudgeTemplate | PairwiseTemplate
    num_samples: int = 3
    sampling: SamplingSettings = dataclasses.field(default_factory=lambda: SamplingSettings(max_new_tokens=160))
    mode: str = "sample"

    def __post_init__(self) -> None:
        if self.mode not in JUDGE_MODES:
            raise ValueError(f"judge.mode must be one of {JUDGE_MODES}, got {self.mode!r}")
        if (self.mode == "pairwise") != (self.template.kind == "pairwise"):
            raise ValueError(
                f"judge.mode={self.mode!r} does not fit the {self.template.kind} template '{self.template.name}': "
                "a pairwise template needs mode 'pairwise', and mode 'pairwise' a pairwise template (judge=pairwise)"
            )
        if self.num_samples < 1:
            raise ValueError(f"judge.num_samples must be >= 1, got {self.num_samples}")


def _progress(total: int, done: int, desc: str) -> tqdm:
    return tqdm(total=total, initial=done, desc=desc, unit="item", dynamic_ncols=True, leave=False, disable=not distributed.is_main())


def generate_prompts(
    model: torch.nn.Module, tokenizer: Any, human_prompts: Sequence[str], avoid: Sequence[str], settings: PromptGenSettings,
    seed: int, iteration: int, store: PartialJsonl, hook: ChunkHook | None = None,
) -> tuple[list[PromptRecord], dict[str, Any]]:
    """Few-shot self-instruction until ``num_prompts`` pass the filters or attempts run out."""
    if not human_prompts:
        raise ValueError("prompt generation needs IFT prompts as demonstrations; data/ift_train.jsonl is empty")
    chunk = settings.sampling.batch_size
    max_attempts = settings.max_attempts or 4 * settings.num_prompts
    attempts: list[PromptAttempt] = store.read(chunk)
    existing = [words(p) for p in list(human_prompts) + list(avoid)]
    accepted = [a.text for a in attempts if a.rejected is None]
    existing += [words(t) for t in accepted]
    bar = _progress(settings.num_prompts, min(len(accepted), settings.num_prompts), f"iter{iteration} prompts")
    # Demonstrations are one task a line, so a task ends at the first line break (and the model
    # does not go on listing "Task 10: ...").
    newline_ids = newline_token_ids(tokenizer)
    while len(accepted) < settings.num_prompts and len(attempts) < max_attempts:
        ids = list(range(len(attempts), min(len(attempts) + chunk, max_attempts)))
        seeds = [derive_seed(seed, iteration, "prompts", i) for i in ids]
        demos = [few_shot_prompt(human_prompts, accepted, random.Random(s), settings.num_human_shots, settings.num_model_shots) for s in seeds]
        outputs = sample_chat(model, tokenizer, demos, seeds, settings.sampling, extra_stop_ids=newline_ids)
        new = []
        for i, out in zip(ids, outputs):
            task = parse_task(out.text)
            reason = reject_reason(task, existing, settings.filters)
            if reason is None and len(accepted) >= settings.num_prompts:
                reason = "enough_prompts"
            if reason is None:
                accepted.append(task)
                existing.append(words(task))
                bar.update(1)
            new.append(PromptAttempt(attempt=i, text=task, rejected=reason))
        store.append(new)
        attempts += new
        if hook:
            hook("prompts", len(attempts))
    bar.close()
    reasons = collections.Counter(a.rejected for a in attempts if a.rejected is not None)
    records = [PromptRecord(f"it{iteration}-p{a.attempt:05d}", a.text, "generated") for a in attempts if a.rejected is None]
    judged = len(records) + sum(n for r, n in reasons.items() if r != "enough_prompts")
    metrics: dict[str, Any] = {"attempts": len(attempts), "accepted": len(records), "acceptance_rate": len(records) / max(1, judged)}
    metrics.update({f"rejected/{k}": v for k, v in sorted(reasons.items())})
    return records, metrics


def pool_prompts(path: str | Path, settings: PromptGenSettings, seed: int, iteration: int) -> tuple[list[PromptRecord], dict[str, Any]]:
    """``num_prompts`` prompts sampled (seeded) from a JSONL pool: field ``prompt`` or ``instruction`` (+ ``input``)."""
    pool = []
    for lineno, row in iter_json_lines(path):
        text = row.get("prompt") or row.get("instruction") if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise RecordError(f"{path}:{lineno}: missing field 'prompt' (or 'instruction')")
        extra = row.get("input")
        pool.append(f"{text}\n\n{extra}" if isinstance(extra, str) and extra.strip() else text)
    rng = random.Random(derive_seed(seed, iteration, "pool"))
    picked = sorted(rng.sample(range(len(pool)), min(settings.num_prompts, len(pool))))
    records = [PromptRecord(f"it{iteration}-pool{i:05d}", pool[i].strip(), "pool") for i in picked]
    return records, {"attempts": len(records), "accepted": len(records), "acceptance_rate": 1.0, "pool_size": len(pool)}


def generate_candidates(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[PromptRecord], settings: CandidateSettings,
    seed: int, iteration: int, store: PartialJsonl, hook: ChunkHook | None = None,
) -> dict[str, Any]:
    """N sampled replies per prompt, written as ``Candidate`` records in (prompt, candidate) order."""
    items = [(p, k) for p in prompts for k in range(settings.num_candidates)]
    chunk = settings.sampling.batch_size
    done = store.read(chunk)
    bar = _progress(len(items), len(done), f"iter{iteration} candidates")
    for start in range(len(done), len(items), chunk):
        part = items[start:start + chunk]
        seeds = [derive_seed(seed, iteration, "candidates", p.prompt_id, k) for p, k in part]
        outputs = sample_chat(model, tokenizer, [p.prompt for p, _ in part], seeds, settings.sampling)
        store.append(Candidate(p.prompt_id, k, p.prompt, o.text, o.num_tokens, o.finished) for (p, k), o in zip(part, outputs))
        bar.update(len(part))
        if hook:
            hook("candidates", start + len(part))
    bar.close()
    return {}


def candidate_metrics(candidates: Sequence[Candidate]) -> dict[str, Any]:
    lengths = [c.num_tokens for c in candidates] or [0]
    return {
        "count": len(candidates),
        "tokens_mean": statistics.fmean(lengths),
        "tokens_median": statistics.median(lengths),
        "tokens_max": max(lengths),
        "truncated_rate": sum(not c.finished for c in candidates) / max(1, len(candidates)),
        "empty": sum(not c.response for c in candidates),
    }


def judge_candidates(
    model: torch.nn.Module, tokenizer: Any, candidates: Sequence[Candidate], settings: JudgeSettings,
    seed: int, iteration: int, store: PartialJsonl, hook: ChunkHook | None = None,
) -> dict[str, Any]:
    """K judge samples per candidate; score = mean of the samples that parse, None if none does.

    In ``score_first`` mode each candidate gets one record sample (the score distribution in words)
    and the expected score (``srl/judge.py``).
    """
    if settings.mode == "pairwise":
        return judge_round_robin(model, tokenizer, candidates, settings, seed, iteration, store, hook)
    template, k = settings.template, settings.num_samples
    chunk = settings.sampling.batch_size  # candidates per chunk; each chunk is chunk * K sequences
    done = store.read(chunk)
    bar = _progress(len(candidates), len(done), f"iter{iteration} judging")
    for start in range(len(done), len(candidates), chunk):
        part = candidates[start:start + chunk]
        if settings.mode == "score_first":
            store.append(_score_first_records(model, tokenizer, part, settings))
            bar.update(len(part))
            if hook:
                hook("judgements", start + len(part))
            continue
        prompts = [template.render(c.prompt, c.response) for c in part for _ in range(k)]
        seeds = [derive_seed(seed, iteration, "judge", c.prompt_id, c.candidate, s) for c in part for s in range(k)]
        texts = [o.text for o in sample_chat(model, tokenizer, prompts, seeds, settings.sampling)]
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


VERDICT_POINTS = {"A": (1.0, 0.0), "B": (0.0, 1.0), "tie": (0.5, 0.5)}


def round_robin(n: int, k: int) -> list[tuple[int, int, int]]:
    """(a, b, sample) for every ordered pair of n replies, K samples each: both orders of each pair."""
    return [(a, b, s) for a in range(n) for b in range(n) if a != b for s in range(k)]


def round_robin_records(group: Sequence[Candidate], texts: Sequence[str], template: PairwiseTemplate, k: int) -> list[Judgement]:
    """One ``Judgement`` per reply from the verdicts of ``round_robin(len(group), k)`` (texts in that order).

    A reply's samples are the judge texts of its comparisons (as A or B, in round-robin order), its
    sample scores the points it got from each (win 1, tie 0.5, loss 0, ``None`` unparsable), and its
    score their mean: the win fraction against its siblings, 0..1 (``None`` if nothing parsed).
    Every comparison appears in both replies' records.
    """
    samples: list[list[str]] = [[] for _ in group]
    points: list[list[float | None]] = [[] for _ in group]
    for (a, b, _), text in zip(round_robin(len(group), k), texts):
        verdict = template.parse(text)
        pa, pb = VERDICT_POINTS[verdict] if verdict is not None else (None, None)
        samples[a].append(text)
        points[a].append(pa)
        samples[b].append(text)
        points[b].append(pb)
    records = []
    for i, c in enumerate(group):
        parsed = [p for p in points[i] if p is not None]
        records.append(Judgement(c.prompt_id, c.candidate, tuple(samples[i]), tuple(points[i]), sum(parsed) / len(parsed) if parsed else None))
    return records


def judge_round_robin(
    model: torch.nn.Module, tokenizer: Any, candidates: Sequence[Candidate], settings: JudgeSettings,
    seed: int, iteration: int, store: PartialJsonl, hook: ChunkHook | None = None,
) -> dict[str, Any]:
    """Pairwise judging: each prompt's replies compared in every ordered pair, K samples each.

    N replies cost N(N-1)K judge samples (N=4, K=1: 12, as many as the pointwise judge's N*K at
    K=3). Records are written a prompt group at a time, so a stopped stage resumes at a whole group.
    """
    template, k = settings.template, settings.num_samples
    groups: dict[str, list[Candidate]] = collections.defaultdict(list)
    for c in candidates:
        groups[c.prompt_id].append(c)
    ordered = list(groups.values())
    done = store.read(1)
    whole, count = 0, 0
    while whole < len(ordered) and count + len(ordered[whole]) <= len(done):
        count += len(ordered[whole])
        whole += 1
    if count != len(done):  # a group cut short by a crash: drop its records and judge it again
        store.keep(count)
    bar = _progress(len(candidates), count, f"iter{iteration} judging")
    budget = settings.sampling.batch_size
    gi = whole
    while gi < len(ordered):
        part, size = [], 0
        while gi < len(ordered) and (not part or size + len(ordered[gi]) <= budget):
            part.append(ordered[gi])
            size += len(ordered[gi])
            gi += 1
        prompts, seeds = [], []
        for group in part:
            for a, b, s in round_robin(len(group), k):
                ca, cb = group[a], group[b]
                prompts.append(template.render(ca.prompt, ca.response, cb.response))
                seeds.append(derive_seed(seed, iteration, "judge_pairwise", ca.prompt_id, ca.candidate, cb.candidate, s))
        texts = [o.text for o in sample_chat(model, tokenizer, prompts, seeds, settings.sampling)] if prompts else []
        records, start = [], 0
        for group in part:
            n = len(group) * (len(group) - 1) * k  # len(round_robin(len(group), k))
            records += round_robin_records(group, texts[start:start + n], template, k)
            start += n
        store.append(records)
        count += size
        bar.update(size)
        if hook:
            hook("judgements", count)
    bar.close()
    return {}


def judgement_metrics(judgements: Sequence[Judgement], template: JudgeTemplate | PairwiseTemplate) -> dict[str, Any]:
    samples = [s for j in judgements for s in j.scores]
    scored = [j.score for j in judgements if j.score is not None]
    metrics: dict[str, Any] = {
        "samples": len(samples),
        "parse_fail_rate": sum(s is None for s in samples) / max(1, len(samples)),
        "unscored_replies": len(judgements) - len(scored),
        "mean_score": statistics.fmean(scored) if scored else None,
        # 0..1 over the format's declared range, so formats with different scales compare
        "mean_score_frac": (statistics.fmean(scored) - template.min_score) / (template.max_score - template.min_score) if scored else None,
    }
    hist = score_histogram(scored, int(template.min_score), int(template.max_score))
    metrics.update({f"score_hist/{b}": n for b, n in hist.items()})
    return metrics


def prefixed(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}
