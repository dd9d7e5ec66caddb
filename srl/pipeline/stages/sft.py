"""Stage ``m1``: M1 = SFT of M0 on the run's IFT and EFT examples (paper Sec. 3.1)."""

from __future__ import annotations

from typing import Any

from srl.data.records import EFTExample, IFTExample, read_jsonl
from srl.pipeline.context import StageContext, StageResult, fit_stage, trainable
from srl.training.encoding import encode_sft
from srl.training.sft import SFTDataModule, SFTModule, SFTSettings, cap


def run_sft(ctx: StageContext, s: SFTSettings) -> StageResult:
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
    trainer, seconds, progress = fit_stage(ctx, module, datamodule, s, "m1", metrics, prefix, validate_first=bool(val))
    metrics[f"{prefix}/train_tokens_per_s"] = round(module.tokens_seen / max(seconds, 1e-9), 1)
    metrics[f"{prefix}/steps"] = trainer.global_step
    folder = ctx.models.save(model, tokenizer, 1, trainer)
    progress.finish()
    return metrics, [str(folder)]
