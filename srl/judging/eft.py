"""EFT (evaluation fine-tuning) examples: judge prompts over human-ranked replies with the target
judgement to learn, from the ranks (``eft_mode=ranked``/pairwise) or written by M0 and kept when
they agree with the ranks (``eft_mode=paper``), balanced over scores."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import random
from typing import Callable, Iterable, Sequence

from srl.core.hashing import derive_seed
from srl.data.records import EFTExample, RankedPrompt
from srl.judging.templates import JudgeTemplate, PairwiseTemplate


def _eft(group: RankedPrompt, i: int, template: JudgeTemplate, justification: str, score: int, mode: str) -> EFTExample:
    return EFTExample(
        prompt=group.prompt,
        response=group.replies[i],
        justification=justification,
        score=score,
        judge_prompt=template.render(group.prompt, group.replies[i]),
        target=template.target(justification, score),
        tree_id=group.tree_id,
        message_id=group.message_id,
        human_rank=group.ranks[i],
        num_siblings=len(group.replies),
        mode=mode,
    )


def eft_ranked(groups: Iterable[RankedPrompt], template: JudgeTemplate | PairwiseTemplate) -> list[EFTExample]:
    """EFT examples whose score comes from the human ranking (see the module docstring).

    A pointwise format scores the reply at rank position i of n with ``template.ranked_score`` (the
    additive rubric: 1..5 as ``rank_score``) and words the justification its own way; a pairwise
    format gets every ordered pair of differently ranked replies (``eft_pairwise``).
    """
    if template.kind == "pairwise":
        return eft_pairwise(groups, template)
    out = []
    for g in groups:
        n = len(g.replies)
        for i in range(n):
            score = template.ranked_score(i, n)
            out.append(_eft(g, i, template, template.justification(score), score, "ranked"))
    return out


def eft_pairwise(groups: Iterable[RankedPrompt], template: PairwiseTemplate) -> list[EFTExample]:
    """Pairwise EFT: for replies i, j of a group with different human ranks, both orders (A=i, B=j and
    A=j, B=i), the target naming the better-ranked one. ``response`` and ``human_rank`` are reply A's;
    ``score`` is 1 when A wins, else 0. A group of n replies gives up to n(n-1) examples, half won by A.
    """
    out = []
    for g in groups:
        for a, b in itertools.permutations(range(len(g.replies)), 2):
            if g.ranks[a] == g.ranks[b]:
                continue
            winner = "A" if g.ranks[a] < g.ranks[b] else "B"
            justification = f"Response {winner} answers the request more helpfully, accurately and completely."
            out.append(EFTExample(
                prompt=g.prompt, response=g.replies[a], justification=justification, score=int(winner == "A"),
                judge_prompt=template.render(g.prompt, g.replies[a], g.replies[b]), target=template.target(justification, winner),
                tree_id=g.tree_id, message_id=g.message_id, human_rank=g.ranks[a], num_siblings=len(g.replies), mode="ranked_pairwise",
            ))
    return out


JudgeFn = Callable[[list[str], list[int]], list[str]]


def eft_paper(
    groups: Sequence[RankedPrompt],
    template: JudgeTemplate,
    judge_fn: JudgeFn,
    seed: int,
    attempts: int = 1,
    counts: collections.Counter | None = None,
) -> list[EFTExample]:
    """EFT examples written by a judge model, kept only when they agree with the human ranking.

    Each reply is judged once per attempt (seed derived from (seed, group, reply, attempt)); a group
    is kept at its first attempt whose scores all parse and strictly decrease with human rank.
    Then the most frequent score is down-sampled to the second most frequent's count.
    """
    counts = counts if counts is not None else collections.Counter()
    pending = list(range(len(groups)))
    accepted: dict[int, list[tuple[str, float]]] = {}
    for attempt in range(attempts):
        if not pending:
            break
        prompts, seeds, owners = [], [], []
        for gi in pending:
            for ri, reply in enumerate(groups[gi].replies):
                prompts.append(template.render(groups[gi].prompt, reply))
                seeds.append(derive_seed(seed, "eft_paper", gi, ri, attempt))
                owners.append(gi)
        texts = judge_fn(prompts, seeds)
        by_group: dict[int, list[str]] = collections.defaultdict(list)
        for gi, text in zip(owners, texts):
            by_group[gi].append(text)
        still = []
        for gi in pending:
            scores = [template.parse(t) for t in by_group[gi]]
            if any(s is None for s in scores):
                counts["eft_paper_unparsable"] += 1
                still.append(gi)
            elif all(a > b for a, b in zip(scores, scores[1:])):
                accepted[gi] = list(zip(by_group[gi], scores))
            else:
                counts["eft_paper_disagrees_with_humans"] += 1
                still.append(gi)
        pending = still
    counts["eft_paper_groups_kept"] = len(accepted)
    counts["eft_paper_groups_dropped"] = len(pending)
    examples = []
    for gi in sorted(accepted):
        for ri, (text, score) in enumerate(accepted[gi]):
            justification = text.rsplit("\n", 1)[0] if "\n" in text else text
            ex = _eft(groups[gi], ri, template, justification, int(round(score)), "paper")
            examples.append(dataclasses.replace(ex, target=text.strip()))
    return balance_scores(examples, seed, counts)


def balance_scores(examples: list[EFTExample], seed: int, counts: collections.Counter) -> list[EFTExample]:
    """Down-sample the most frequent score to the count of the second most frequent (seeded)."""
    by_score: dict[int, list[int]] = collections.defaultdict(list)
    for i, ex in enumerate(examples):
        by_score[ex.score].append(i)
    if len(by_score) < 2:
        return examples
    ordered = sorted(by_score, key=lambda s: (-len(by_score[s]), s))
    top, second = ordered[0], ordered[1]
    cap = len(by_score[second])
    rng = random.Random(derive_seed(seed, "eft_balance"))
    keep_top = set(rng.sample(by_score[top], cap))
    counts["eft_downsampled"] = len(by_score[top]) - cap
    return [ex for i, ex in enumerate(examples) if ex.score != top or i in keep_top]
