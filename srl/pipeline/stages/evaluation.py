"""Stage ``eval/m{t}`` (paper Sec. 4.2): judge quality, judge-free measures and replies of M_t,
head-to-head against M0, M_{t-1} or a reference file; and the run's evaluation table, a row per
evaluated model."""

from __future__ import annotations

import re
from typing import Any, Sequence

from srl.data.preference_sets import load_preference_set
from srl.data.prompt_sets import load_prompt_set
from srl.data.records import IFTExample, Judgement, RankedPrompt, read_jsonl
from srl.evaluation.head_to_head import BASELINE
from srl.evaluation.model_eval import EvalSettings, FileReference, evaluate_model, pairs_as_groups, reference_baseline
from srl.evaluation.report import write_table
from srl.judging.settings import JudgeSettings
from srl.models.embedded import spec_from_name
from srl.pipeline.context import StageContext, StageResult
from srl.pipeline.manifest import Manifest

RUN_MODEL = re.compile(r"[mM](\d+)")  # eval.h2h.judge: m<t> is the run's own M_t, frozen
MISSING = object()


def h2h_judge(ctx: StageContext, t: int, judge: str | None, external: Any = None) -> tuple[str, Any] | None:
    """(slot key, spec) of the head-to-head judge of ``eval/m{t}``; None: M_t judges itself;
    ("external", the judge) for ``eval.h2h.judge=external``."""
    if judge is None:
        return None
    if judge == "external":
        if external is None:
            raise ValueError("eval.h2h.judge=external needs an external judge: choose external_judge=reward_model or external_judge=openai")
        return "external", external
    match = RUN_MODEL.fullmatch(judge)
    if not match:
        return f"judge:{judge}", spec_from_name(judge)
    j = int(match.group(1))
    if j > t:
        raise ValueError(f"eval.h2h.judge={judge}: eval/m{t} runs before M{j} exists; choose a judge m0..m{t} (m1: M1 frozen)")
    return f"m{j}", ctx.models.spec(j)


def preference_groups(settings: EvalSettings) -> list[tuple[str, list[RankedPrompt]]]:
    return [(p.name, pairs_as_groups(load_preference_set(p)[0])) for p in settings.preference_sets]


def reusable_baseline_scores(ctx: StageContext, t: int, settings: EvalSettings) -> tuple[dict[str, Judgement], str | None]:
    """The pointwise head-to-head's judgements of M0's replies made by an earlier ``eval/m{u}`` (u < t), by prompt id,
    and that stage's name; ({}, None) when none applies.

    They apply when the baseline is M0's replies (``against: start``, no reference file), the referee is a fixed
    model (``judge: m<j>`` with j <= u, or a named model; not the evaluated model itself, not an external judge),
    and every config value ``eval/m{u}`` recorded in the manifest has the same value for this stage: then
    the same judge scored the same replies with the same settings and seeds (``derive_seed`` of the prompt id,
    not of the batch), and scoring them again would repeat that work."""
    h2h = settings.h2h
    if not (h2h.enabled and h2h.protocol == "pointwise" and not h2h.reference and h2h.against == "start"
            and h2h.judge not in (None, "external")):
        return {}, None
    match = RUN_MODEL.fullmatch(h2h.judge)
    current = ctx.stamp(f"eval/m{t}").config
    stages = Manifest(ctx.run_dir).data.get("stages", {})
    for u in range(t - 1, 0, -1):
        if match and int(match.group(1)) > u:
            break  # eval/m{u} ran before that judge existed
        entry, path = stages.get(f"eval/m{u}"), ctx.run_dir / "eval" / f"m{u}" / "h2h_scores.jsonl"
        if entry is None or not path.is_file():
            continue
        recorded = entry.get("config") or {}
        if not recorded or any(current.get(k, MISSING) != v for k, v in recorded.items()):
            continue
        found = {j.prompt_id: j for j in read_jsonl(path, Judgement) if j.candidate == BASELINE}
        if found:  # an evaluation that reused them itself holds none: look further back
            return found, f"eval/m{u}"
    return {}, None


def run_eval(ctx: StageContext, t: int, settings: EvalSettings, judge: JudgeSettings) -> StageResult:
    data_dir, out = ctx.run_dir / "data", ctx.run_dir / "eval" / f"m{t}"
    groups = read_jsonl(data_dir / "ranked_heldout.jsonl", RankedPrompt)
    prompts = load_prompt_set(settings.h2h.prompts, read_jsonl(data_dir / "ift_heldout.jsonl", IFTExample))
    h2h = settings.h2h
    baseline = None
    if h2h.reference:
        baseline = reference_baseline(h2h.reference)
    elif t >= 1:
        against = 0 if h2h.against == "start" else t - 1
        baseline = reference_baseline(ctx.run_dir / "eval" / f"m{against}" / "replies.jsonl", f"M{against}")
    reference = None
    if t >= 1:
        r = 0 if settings.implicit.against == "start" else t - 1
        reference = FileReference(f"M{r}", ctx.run_dir / "eval" / f"m{r}")
    judge_of_h2h = h2h_judge(ctx, t, h2h.judge, h2h.external) if baseline is not None and h2h.enabled else None
    known, source = reusable_baseline_scores(ctx, t, settings) if judge.mode != "pairwise" else ({}, None)
    result = evaluate_model(f"M{t}", f"m{t}", ctx.models.spec(t), ctx.models.slot, out, settings, judge, groups, prompts, baseline, ctx.seed,
                            stamp=ctx.stamp(f"eval/m{t}"), reference=reference, h2h_judge=judge_of_h2h,
                            preference_sets=preference_groups(settings), baseline_scores=known)
    if source is not None and result.get("h2h/baseline_scores_reused"):
        result["h2h/baseline_scores_from"] = source
    if judge_of_h2h is not None and RUN_MODEL.fullmatch(judge_of_h2h[0]) and "h2h/judge" in result:
        result["h2h/judge"] = judge_of_h2h[0].upper()  # the run's M_j, frozen
    return {f"eval/m{t}/{k}": v for k, v in result.items()}, [str(out)]


def write_eval_table(ctx: StageContext, evaluated: Sequence[str]) -> None:
    """``eval/table.md`` and ``eval/table`` in the summary and logger: a row per stage of ``evaluated``
    (``eval/m{t}`` stages recorded as finished), from the metrics in the summary."""
    summary, rows = ctx.tracker.summary, []
    for stage in evaluated:
        prefix = stage + "/"
        rows.append((f"M{stage[len('eval/m'):]}", {k[len(prefix):]: v for k, v in summary.items() if k.startswith(prefix)}))
    if rows:
        start = ctx.models.start
        note = f"M0 = {getattr(start, 'name', type(start).__name__)}; run dir {ctx.run_dir}."
        for text in write_table(ctx.run_dir / "eval" / "table.md", "Evaluation after each model", rows, note):
            ctx.tracker.log_table(*text)
