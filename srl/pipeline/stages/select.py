"""Checkpoint selection inside a training stage (``srl.training.selection``): each snapshot's replies
to the validation prompts, a fixed judge scoring them (the pointwise head-to-head protocol), and
the sequential choice. Records under ``m{t}/select/``: ``replies_step{N}.jsonl`` (one reply per
prompt), ``scores_step{N}_vs_{K}.jsonl`` (the judge's records of each comparison) and
``comparisons.jsonl`` (candidate step, kept step, wins, losses, ties, win rate, replaced), plus
``chosen.json``. Outcomes as the pointwise head-to-head's (the higher score wins, ``tie_margin``),
except that the same reply text from both checkpoints is a tie. The chosen snapshot's weights are put into the model before it is saved.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from srl.core import distributed, rundir
from srl.data.partial import PartialJsonl
from srl.data.prompt_sets import PromptSetSettings, load_prompt_set
from srl.data.records import Candidate, IFTExample, Judgement, read_jsonl, write_jsonl
from srl.evaluation import head_to_head as headtohead
from srl.judging.settings import JudgeSettings
from srl.pipeline.context import StageContext
from srl.pipeline.stages.evaluation import h2h_judge
from srl.training.selection import SelectSettings, load_snapshot, sequential_choice, snapshots

log = logging.getLogger(__name__)


def select_checkpoint(
    ctx: StageContext, model: torch.nn.Module, tokenizer: Any, t: int, settings: SelectSettings, judge: JudgeSettings, prefix: str,
) -> dict[str, Any]:
    """Choose among the snapshots of the stage that trains M_t, load the chosen one into ``model``; its metrics."""
    if judge.mode == "pairwise":
        raise ValueError("checkpoint selection scores replies with the run's rubric; the run's judge is pairwise (judge=pairwise)")
    folder = ctx.run_dir / f"m{t}" / "select"
    steps = dict(snapshots(folder))
    prompts = load_prompt_set(settings.prompts or PromptSetSettings(limit=8), read_jsonl(ctx.run_dir / "data" / "ift_heldout.jsonl", IFTExample))
    if not prompts:
        raise ValueError(f"checkpoint selection of M{t}: no validation prompt ({prefix}.select.prompts)")
    stamp = ctx.stamp(f"m{t}")
    replies: dict[int, dict[str, Candidate]] = {}
    was_training = model.training
    model.eval()
    for step, path in steps.items():
        load_snapshot(model, path)
        store = PartialJsonl(folder / f"replies_step{step:06d}.jsonl", Candidate, stamp, on_stale="discard")
        headtohead.generate_replies(model, tokenizer, prompts, settings.reply_sampling, settings.seed, store)
        replies[step] = {r.prompt_id: r for r in read_jsonl(store.finish(), Candidate)}
    key_spec = h2h_judge(ctx, t - 1, settings.judge, settings.external)  # a run model below M_t, external, or a folder / Hub id
    assert key_spec is not None
    judge_key, judge_spec = key_spec
    external = judge_spec if judge_key == "external" else None
    judge_model, judge_tok = (None, None) if external is not None else ctx.models.slot.get(judge_key, judge_spec)
    scoring = dataclasses.replace(judge, num_samples=settings.num_samples or judge.num_samples, sampling=settings.judge_sampling, external=external)

    def meet(candidate: int, kept: int) -> tuple[int, int, int]:
        store = PartialJsonl(folder / f"scores_step{candidate:06d}_vs_{kept:06d}.jsonl", Judgement, stamp, on_stale="discard")
        judged = headtohead.score_pointwise(judge_model, judge_tok, replies[candidate], replies[kept], scoring, settings.seed, store)
        by_prompt: dict[str, dict[int, float | None]] = {}
        for j in judged:
            by_prompt.setdefault(j.prompt_id, {})[j.candidate] = j.score
        # the same reply from both checkpoints is a tie, whatever a batch's rounding makes of its two scores
        outcomes = ["tie" if replies[candidate][p].response == replies[kept][p].response else
                    headtohead.score_outcome(s.get(headtohead.MODEL), s.get(headtohead.BASELINE), settings.tie_margin) for p, s in by_prompt.items()]
        return outcomes.count("win"), outcomes.count("loss"), outcomes.count("tie")

    chosen, records = sequential_choice(sorted(steps), meet)
    load_snapshot(model, steps[chosen])
    model.train(was_training)
    distributed.on_main(lambda: write_jsonl(folder / "comparisons.jsonl", records))
    distributed.on_main(lambda: rundir.atomic_write_text(folder / "chosen.json", json.dumps(
        {"chosen_step": chosen, "snapshots": sorted(steps), "judge": settings.judge, "prompts": len(prompts)}, indent=2) + "\n"))
    if not settings.keep_snapshots:
        distributed.on_main(lambda: [rundir.remove(p) for p in steps.values()])
    log.info("M%d: checkpoint of step %d chosen among %s (%d comparisons by %s)", t, chosen, sorted(steps), len(records), settings.judge)
    metrics: dict[str, Any] = {f"{prefix}/select/chosen_step": chosen, f"{prefix}/select/snapshots": len(steps),
                               f"{prefix}/select/comparisons": len(records), f"{prefix}/select/judge": settings.judge}
    metrics.update({f"{prefix}/select/win_rate_step{r['candidate_step']}": r["win_rate"] for r in records})
    return metrics


def required_judge(judge: JudgeSettings | None) -> JudgeSettings:
    if judge is None:
        raise ValueError("checkpoint selection needs the run's judge settings (its rubric and sampling)")
    return judge


def outputs(ctx: StageContext, t: int) -> list[str]:
    """The selection's record files, for the stage's outputs (the snapshots themselves are not outputs)."""
    folder: Path = ctx.run_dir / f"m{t}" / "select"
    return [str(p) for p in sorted(folder.glob("*.json*"))]
