"""Stage ``m{t+1}``: M_{t+1} = DPO of M_t on iteration t's preference pairs (paper Sec. 3.3)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from srl.core import distributed, rundir
from srl.data.records import Pair, read_jsonl
from srl.judging.settings import JudgeSettings
from srl.pipeline.context import StageContext, StageResult, fit_stage, trainable
from srl.pipeline.stages.select import outputs as select_outputs
from srl.pipeline.stages.select import required_judge, select_checkpoint
from srl.training.dpo import DPOModule, DPOSettings, collate_pairs, encode_pair
from srl.training.selection import Snapshots
from srl.training.sft import SFTDataModule

log = logging.getLogger(__name__)


def run_dpo(ctx: StageContext, t_next: int, dpo: DPOSettings, judge: JudgeSettings | None = None) -> StageResult:
    """M_{t+1} = DPO of M_t on iteration t's pairs (a copy of M_t if the iteration had none, ``on_no_pairs=carry``)."""
    t = t_next - 1
    pairs = read_jsonl(ctx.iter_dir(t) / "pairs.jsonl", Pair)
    if not pairs:  # iteration.on_no_pairs=carry let an iteration without pairs through: M_{t+1} = M_t
        folder = ctx.models.folder(t_next)
        if ctx.models.peft.save == "adapter":  # no adapter: M_{t+1} is the chain of M_t (spec_m skips an empty folder)
            distributed.on_main(lambda: rundir.check(folder).mkdir(parents=True, exist_ok=True))
        else:
            distributed.on_main(lambda: rundir.link_or_copy(ctx.models.folder(t), folder))
        log.warning("M%d is a copy of M%d: iteration %d has no preference pair", t_next, t, t)
        return {f"m{t_next}/dpo/pairs": 0, f"m{t_next}/dpo/skipped": 1}, [str(folder)]
    model, tokenizer = ctx.models.load_train(t)
    encoded = []
    for p in pairs:
        pair = encode_pair(tokenizer, p.prompt, p.chosen, p.rejected, dpo.max_length, p.chosen_finished, p.rejected_finished)
        if pair is None:  # the pairs stage kept only pairs that fit dpo.max_length with this tokenizer
            raise ValueError(f"pair {p.prompt_id} no longer fits dpo.max_length={dpo.max_length}; rerun the pairs stage")
        encoded.append(dataclasses.replace(pair, ref_chosen=p.ref_chosen_logp, ref_rejected=p.ref_rejected_logp, judge=p.source == "judge"))
    prefix = f"m{t_next}/dpo"
    metrics: dict[str, Any] = {f"{prefix}/pairs": len(encoded), **trainable(prefix, model)}
    mixed = any(e.judge for e in encoded)  # Meta-Rewarding: actor and judge pairs, each kind's statistics logged apart
    if mixed:
        metrics[f"{prefix}/judge_pairs"] = sum(e.judge for e in encoded)
    module = DPOModule(model, dpo, metric_prefix=prefix, split_kinds=mixed)
    datamodule = SFTDataModule(encoded, [], dpo.micro_batch_size, tokenizer.pad_token_id, dpo.seed, collate=collate_pairs,
                               group_by_length=dpo.group_by_length)
    snapshots = [Snapshots(ctx.run_dir / f"m{t_next}" / "select", dpo.select.every_steps)] if dpo.select.enabled else []
    trainer, _, progress = fit_stage(ctx, module, datamodule, dpo, f"m{t_next}", metrics, prefix, callbacks=snapshots)
    metrics[f"{prefix}/steps"] = trainer.global_step
    if dpo.select.enabled:
        metrics.update(select_checkpoint(ctx, model, tokenizer, t_next, dpo.select, required_judge(judge), prefix))
    folder = ctx.models.save(model, tokenizer, t_next, trainer)
    progress.finish()
    return metrics, [str(folder), *(select_outputs(ctx, t_next) if dpo.select.enabled else [])]
