"""Stage ``data``: the IFT, EFT and held-out files of the run (``data/``) from the oasst1 source."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from srl.core import distributed, rundir
from srl.data.oasst import OasstSource
from srl.generation.sample import sample_texts
from srl.generation.sampling import SamplingSettings
from srl.judging.settings import JudgeSettings
from srl.pipeline.context import StageContext, StageResult
from srl.training.sft_data import BuildSettings, build

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DataSettings:
    """``conf/data``: the oasst1 source, how files are built, and the EFT judge's sampling."""

    source: OasstSource
    build: BuildSettings
    eft_sampling: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)


def run_data(ctx: StageContext, data: DataSettings, judge: JudgeSettings) -> StageResult:
    """Build the files (with ``eft_mode=paper``, M0 writes the EFT judgements) and write ``data/`` atomically."""
    messages = data.source.load()
    judge_fn = None
    if data.build.eft_mode == "paper":
        model, tokenizer = ctx.models.load("m0", ctx.models.start)

        def judge_fn(prompts: list[str], seeds: list[int]) -> list[str]:
            return sample_texts(model, tokenizer, prompts, seeds, data.eft_sampling)

    result = build(messages, data.build, judge.template, judge_fn)
    out, tmp = ctx.run_dir / "data", ctx.run_dir / "data.tmp"

    def write() -> None:
        rundir.remove(tmp)
        result.write(rundir.check(tmp))
        rundir.replace(tmp, out)

    distributed.on_main(write)
    log.info("data from %s: %s", data.source.describe(), result.counts)
    metrics: dict[str, Any] = {f"data/{k}": v for k, v in result.counts.items()}
    return metrics, [str(out)]
