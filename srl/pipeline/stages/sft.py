"""Stage ``m1``: M1 = SFT of M0 on the run's IFT and EFT examples (paper Sec. 3.1)."""

from __future__ import annotations

from typing import Any

from srl.data.records import EFTExample, IFTExample, read_jsonl
from srl.judging.settings import JudgeSettings
from srl.pipeline.context import StageContext, StageResult, fit_stage, trainable
from srl.pipeline.stages.select import outputs as select_outputs
from srl.pipeline.stages.select import required_judge, select_checkpoint
from srl.training.encoding import encode_sft
from srl.training.selection import Snapshots
from srl.training.sft import SFTDataModule, SFTModule, SFTSettings, cap


def run_sft(ctx: StageContext, s: SFTSettings, judge: JudgeSettings | None = None) -> StageResult:
    data_dir, prefix = ctx.run_dir / "data", "m1/sft"
    ift = cap(read_jsonl(data_dir / "ift_train.jsonl", IFTExample), s.max_ift_examples, s.seed)
    eft = cap(read_jsonl(data_dir / "eft_train.jsonl", EFTExample), s.max_eft_examples, s.seed) if s.use_eft else []
    val_ift = cap(read_jsonl(data_dir / "ift_heldout.jsonl", IFTExample), s.max_val_examples, s.seed)
    model, tokenizer = ctx.models.load_train(0)
    train, counts = encode_sft(tokenizer, ift, eft, s.max_length)
    val, _ = encode_sft(tokenizer, val_ift, [], s.max_length)
    metrics: dict[str, Any] = {f"{prefix}/data/{k}": v for k, v in counts.items()}
    metrics.update(trainable(prefix, model))
    module = SFTModule(model, s, metric_prefix=prefix)
    datamodule = SFTDataModule(train, val, s.micro_batch_size, tokenizer.pad_token_id, s.seed, group_by_length=s.group_by_length)
    snapshots = [Snapshots(ctx.run_dir / "m1" / "select", s.select.every_steps)] if s.select.enabled else []
    trainer, seconds, progress = fit_stage(ctx, module, datamodule, s, "m1", metrics, prefix, validate_first=bool(val), callbacks=snapshots)
    metrics[f"{prefix}/train_tokens_per_s"] = round(module.tokens_seen / max(seconds, 1e-9), 1)
    metrics[f"{prefix}/steps"] = trainer.global_step
    if s.select.enabled:
        metrics.update(select_checkpoint(ctx, model, tokenizer, 1, s.select, required_judge(judge), prefix))
    folder = ctx.models.save(model, tokenizer, 1, trainer)
    progress.finish()
    return metrics, [str(folder), *(select_outputs(ctx, 1) if s.select.enabled else [])]
