"""The self-rewarding loop over a run directory (paper Sec. 3, Fig. 1).

Stages, each reading the files of the one before and recorded in ``manifest.json`` when complete:
``data`` (IFT/EFT/held-out files from oasst1) -> ``m1`` (SFT of M0 on IFT+EFT, saved to
``m1/model``) -> for t = 1..T-1: AIFT(M_t) -> DPO -> M_{t+1} (not built yet: ``stop_after`` must
name a stage that exists).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L

from srl import oasst
from srl.chat import encode_sft
from srl.generation import SamplingSettings, sample_texts
from srl.models import save_model
from srl.records import EFTExample, IFTExample, read_jsonl
from srl.sft import SFTDataModule, SFTModule, SFTSettings, cap, restore_dropout, set_dropout
from srl.stages import Manifest
from srl.templates import JudgeTemplate
from srl.tracking import Tracker

log = logging.getLogger(__name__)

STAGES = ("data", "m1")


@dataclasses.dataclass
class LoopSettings:
    """``num_models``: M1..M_T (paper: 3); ``stop_after``: the last stage to run."""

    num_models: int = 3
    stop_after: str = "m1"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stop_after not in STAGES:
            raise ValueError(
                f"iteration.stop_after={self.stop_after!r}: this version of srl runs the stages {STAGES} "
                f"(the self-rewarding iterations M2.. are not built yet)"
            )


@dataclasses.dataclass
class DataSettings:
    """``conf/data``: the oasst1 source, how files are built, and the EFT judge's sampling."""

    source: oasst.OasstSource
    build: oasst.BuildSettings
    eft_sampling: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)


class SelfRewardingLoop:
    def __init__(
        self,
        run_dir: str | Path,
        model: Any,
        data: DataSettings,
        judge: JudgeTemplate,
        sft: SFTSettings,
        trainer_factory: Callable[..., L.Trainer],
        loop: LoopSettings,
        fingerprints: dict[str, str],
        tracker: Tracker,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.model_spec, self.data, self.judge, self.sft = model, data, judge, sft
        self.trainer_factory, self.settings, self.fingerprints, self.tracker = trainer_factory, loop, fingerprints, tracker
        self.manifest = Manifest(self.run_dir)

    def run(self) -> dict[str, Any]:
        for stage in STAGES:
            fingerprint = self.fingerprints[stage]
            if self.manifest.done(stage, fingerprint):
                log.info("stage %s: already finished, skipped", stage)
                self.tracker.summary.update(self.manifest.metrics(stage))
            else:
                started = time.perf_counter()
                metrics, outputs = getattr(self, f"stage_{stage}")()
                metrics[f"time/{stage}_s"] = round(time.perf_counter() - started, 2)
                self.tracker.log(metrics)
                self.manifest.record(stage, fingerprint, metrics, outputs)
            if stage == self.settings.stop_after:
                break
        self.tracker.write_summary()
        return self.tracker.summary

    # -- stages -------------------------------------------------------------------------------
    def stage_data(self) -> tuple[dict[str, Any], list[str]]:
        messages = self.data.source.load()
        judge_fn = None
        if self.data.build.eft_mode == "paper":
            model, tokenizer = self.model_spec.load()

            def judge_fn(prompts: list[str], seeds: list[int]) -> list[str]:
                return sample_texts(model, tokenizer, prompts, seeds, self.data.eft_sampling)

        result = oasst.build(messages, self.data.build, self.judge, judge_fn)
        out = self.run_dir / "data"
        tmp = self.run_dir / "data.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        result.write(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        log.info("data from %s: %s", self.data.source.describe(), result.counts)
        return {f"data/{k}": v for k, v in result.counts.items()}, [str(out)]

    def stage_m1(self) -> tuple[dict[str, Any], list[str]]:
        data_dir = self.run_dir / "data"
        s = self.sft
        ift = cap(read_jsonl(data_dir / "ift_train.jsonl", IFTExample), s.max_ift_examples, s.seed)
        eft = cap(read_jsonl(data_dir / "eft_train.jsonl", EFTExample), s.max_eft_examples, s.seed) if s.use_eft else []
        val_ift = cap(read_jsonl(data_dir / "ift_heldout.jsonl", IFTExample), s.max_val_examples, s.seed)
        model, tokenizer = self.model_spec.load()
        train, counts = encode_sft(tokenizer, ift, eft, s.max_length)
        val, _ = encode_sft(tokenizer, val_ift, [], s.max_length)
        metrics: dict[str, Any] = {f"m1/sft/data/{k}": v for k, v in counts.items()}
        return self._train_sft(model, tokenizer, train, val, "m1", metrics)

    def _train_sft(self, model: Any, tokenizer: Any, train: list, val: list, name: str, metrics: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        s = self.sft
        L.seed_everything(s.seed, workers=True, verbose=False)
        previous = set_dropout(model, s.dropout) if s.dropout is not None else {}
        module = SFTModule(model, s, metric_prefix=f"{name}/sft")
        datamodule = SFTDataModule(train, val, s.micro_batch_size, tokenizer.pad_token_id, s.seed)
        trainer = self.trainer_factory(
            max_epochs=s.max_epochs,
            accumulate_grad_batches=s.accumulate_grad_batches,
            logger=self.tracker.logger if self.tracker.logger is not None else False,
            default_root_dir=str(self.run_dir / name),
            enable_checkpointing=False,
        )
        prefix = f"{name}/sft"
        if val:
            metrics[f"{prefix}/val_loss_before"] = float(trainer.validate(module, datamodule=datamodule, verbose=False)[0][f"{prefix}/val_loss"])
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        elapsed = time.perf_counter() - started
        restore_dropout(model, previous)
        for key, value in trainer.callback_metrics.items():
            if key.startswith(prefix):
                metrics[key] = float(value)
        metrics[f"{prefix}/steps"] = trainer.global_step
        metrics[f"{prefix}/train_tokens_per_s"] = round(module.tokens_seen / max(elapsed, 1e-9), 1)
        folder = self.run_dir / name / "model"
        tmp = folder.with_name("model.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.eval()
        save_model(model, tokenizer, tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        return metrics, [str(folder)]
