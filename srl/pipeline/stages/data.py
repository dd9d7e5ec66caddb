"""Stage ``data``: the IFT, EFT and held-out files of the run (``data/``) from the oasst1 source,
a user's instruction data and EFT rows (``srl.training.sft_data.compose``)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from srl.core import distributed, rundir
from srl.data.instructions import EFTRowsSource, InstructionSource
from srl.data.oasst import OasstSource
from srl.generation.sample import sample_texts
from srl.generation.sampling import SamplingSettings
from srl.judging.settings import JudgeSettings
from srl.pipeline.context import StageContext, StageResult
from srl.training.sft_data import BuildSettings, compose

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DataSettings:
    """``conf/data``: the oasst1 source (None: none), how files are built, the EFT judge's sampling,
    and a user's own instruction data and EFT rows (off while their ``path`` is null)."""

    source: OasstSource | None
    build: BuildSettings
    eft_sampling: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)
    instructions: InstructionSource | None = None
    eft_rows: EFTRowsSource | None = None

    def describe(self) -> str:
        parts = [self.source.describe()] if self.source is not None else []
        parts += [f"{name} {s.describe()}" for name, s in (("instructions", self.instructions), ("eft_rows", self.eft_rows)) if s and s.path]
        return " + ".join(parts)


def run_data(ctx: StageContext, data: DataSettings, judge: JudgeSettings) -> StageResult:
    """Build the files (with ``eft_mode=paper``, M0 writes the EFT judgements) and write ``data/`` atomically."""
    judge_fn = None
    if data.build.eft_mode == "paper" and data.source is not None:
        model, tokenizer = ctx.models.load("m0", ctx.models.start)

        def judge_fn(prompts: list[str], seeds: list[int]) -> list[str]:
            return sample_texts(model, tokenizer, prompts, seeds, data.eft_sampling)

    result = compose(data.source, data.instructions, data.eft_rows, data.build, judge.template, judge_fn)
    out, tmp = ctx.run_dir / "data", ctx.run_dir / "data.tmp"

    def write() -> None:
        rundir.remove(tmp)
        result.write(rundir.check(tmp))
        rundir.replace(tmp, out)

    distributed.on_main(write)
    log.info("data from %s: %s", data.describe(), result.counts)
    metrics: dict[str, Any] = {f"data/{k}": v for k, v in result.counts.items()}
    return metrics, [str(out)]
