"""Stage ``eval/m{t}`` (paper Sec. 4.2): judge quality and replies of M_t, head-to-head against M0,
M_{t-1} or a reference file; and the run's evaluation table, a row per evaluated model."""

from __future__ import annotations

from typing import Sequence

from srl.data.prompt_sets import load_prompt_set
from srl.data.records import IFTExample, RankedPrompt, read_jsonl
from srl.evaluation.model_eval import EvalSettings, evaluate_model, reference_baseline
from srl.evaluation.report import write_table
from srl.judging.settings import JudgeSettings
from srl.pipeline.context import StageContext, StageResult


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
    result = evaluate_model(f"M{t}", f"m{t}", ctx.models.spec(t), ctx.models.slot, out, settings, judge, groups, prompts, baseline, ctx.seed,
                            stamp=ctx.stamp(f"eval/m{t}"))
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
        columns, cells = write_table(ctx.run_dir / "eval" / "table.md", "Evaluation after each model", rows, note)
        ctx.tracker.log_table("eval/table", columns, cells)
