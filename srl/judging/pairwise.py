"""Pairwise judging of candidates as a round robin: every ordered pair of a prompt's N replies is
judged A vs B (``Winner: A|B|tie``) and a reply's score is its win fraction."""

from __future__ import annotations

import collections
from typing import Any, Sequence

import torch

from srl.core.hashing import derive_seed
from srl.core.progress import ChunkHook, progress_bar
from srl.data.partial import PartialJsonl
from srl.data.records import Candidate, Judgement
from srl.judging.backends import judge_texts
from srl.judging.settings import JudgeSettings
from srl.judging.templates import PairwiseTemplate

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
    bar = progress_bar(len(candidates), count, f"iter{iteration} judging")
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
        texts = judge_texts(model, tokenizer, prompts, seeds, settings.sampling, settings.external)
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
