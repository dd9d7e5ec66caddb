"""Entry point: ``python -m srl.evaluate [overrides]`` evaluates one model (``srl.evaluation.model_eval``).

    python -m srl.evaluate                                   # the embedded model, seed data's held-out trees
    python -m srl.evaluate model=hf model.name_or_path=outputs/.../m1/model \\
        data=oasst_local data.source.path=../shared/data/oasst1/en_validation.jsonl \\
        eval.h2h.baseline=embedded                           # + M1 vs SmolLM2 as shipped

Outputs go to the Hydra run dir: ``summary.json``, ``eval.md`` and the per-part files.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from srl.config.judges import judges
from srl.config.paths import CONF_DIR, register_resolvers
from srl.core import rundir
from srl.core.distributed import local_device
from srl.core.hashing import config_fingerprint
from srl.core.rundir import Stamp
from srl.data import prompt_sets as evalsets
from srl.data.preference_sets import load_preference_set
from srl.evaluation.model_eval import ModelReference, evaluate_model, model_baseline, pairs_as_groups, reference_baseline
from srl.evaluation.report import write_table
from srl.generation.slot import ModelSlot
from srl.judging.backends import describe_judge
from srl.judging.settings import JudgeSettings
from srl.models.embedded import spec_from_name
from srl.pipeline.tracking import Tracker
from srl.training.sft_data import BuildResult, compose

log = logging.getLogger(__name__)


def heldout_data(cfg: DictConfig, judge: JudgeSettings) -> BuildResult:
    """The data config's split, built as the loop builds it (EFT ranked: no judge model needed here)."""
    source = instantiate(cfg.data.source)
    settings = dataclasses.replace(instantiate(cfg.data.build), eft_mode="ranked")
    return compose(source, instantiate(cfg.data.get("instructions")), None, settings, judge.template)


register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    from srl.config.validation import validate_config
    from srl.pipeline.tracking import build_logger, close_logger, job_config

    validate_config(cfg)  # before any model loads (srl/config/validation.py)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    judge, settings = judges(cfg)  # the external judge, if any, built once (srl/config/judges.py)
    assert settings is not None
    data = heldout_data(cfg, judge)
    preference_sets = [(p.name, pairs_as_groups(load_preference_set(p)[0])) for p in settings.preference_sets]
    if settings.rm.enabled and not data.ranked_heldout and not preference_sets:
        raise ValueError(f"no held-out prompt with two or more ranked replies in {cfg.data.source}; raise data.build.heldout_fraction")
    prompts = evalsets.load_prompt_set(settings.h2h.prompts, data.ift_heldout) if settings.h2h.enabled or settings.alpaca_export else []
    spec = instantiate(cfg.model)
    name = getattr(spec, "name", type(spec).__name__)
    # The backend (conf/backend) and this process's device, as in the loop.
    slot = ModelSlot(instantiate(cfg.backend) if cfg.get("backend") else None, local_device())
    h2h = settings.h2h
    stamp = Stamp("evaluate", config_fingerprint({k: v for k, v in job_config(cfg).items() if k != "logger"}))
    baseline = None
    if h2h.enabled and h2h.reference:
        baseline = reference_baseline(h2h.reference)
    elif h2h.enabled and h2h.baseline:
        baseline = model_baseline(h2h.baseline, spec_from_name(h2h.baseline), slot, out_dir / "baseline", h2h, stamp)
    elif h2h.enabled:
        log.warning("eval h2h: no baseline; set eval.h2h.baseline (model folder, Hub id or 'embedded') or eval.h2h.reference (replies file)")
    judge_name = h2h.judge
    if judge_name == "external":
        judge_name = None
    elif judge_name and judge_name[:1] in "mM" and judge_name[1:].isdigit():
        log.info("eval.h2h.judge=%s names a model of a run (the loop's M1 referee); here the evaluated model judges "
                 "(set eval.h2h.judge to a model folder, Hub id or 'embedded' for a fixed judge)", judge_name)
        judge_name = None
    h2h_judge = ("external", h2h.external) if h2h.external is not None else (f"judge:{judge_name}", spec_from_name(judge_name)) if judge_name else None
    imp = settings.implicit
    reference = ModelReference(imp.reference, spec_from_name(imp.reference), slot, out_dir, imp, stamp) if imp.enabled and imp.reference else None
    if imp.enabled and not imp.reference:
        log.info("eval implicit: no reference model (eval.implicit.reference); only the held-out NLL is computed")
    with rundir.working_in(out_dir):  # a rerun in the same dir resumes; chunks of another config are discarded
        result = evaluate_model(name, "model", spec, slot, out_dir, settings, judge, data.ranked_heldout, prompts, baseline, cfg.seed, stamp,
                                reference=reference, h2h_judge=h2h_judge, preference_sets=preference_sets)
    named = {f"eval/{k}": v for k, v in result.items()}
    tracker = Tracker(out_dir, build_logger(cfg))
    try:
        tracker.log({"eval/model": name, "judge/by": describe_judge(judge.external), **named})
        for key, columns, cells in write_table(out_dir / "eval.md", f"Evaluation of {name}", [(name, result)]):
            tracker.log_table(key, columns, cells)
        tracker.write_summary()
    finally:
        close_logger(tracker.logger)
    print(f"evaluation of {name} ({len(data.ranked_heldout)} held-out ranked prompts, {len(prompts)} reply prompts):")
    for key in sorted(named):
        value = named[key]
        if not key.startswith("eval/rm/score_hist"):
            print(f"  {key:<34} {'n/a' if value is None else f'{value:.4f}' if isinstance(value, float) else value}")
    print(f"  written: {out_dir / 'summary.json'}, {out_dir / 'eval.md'}")
    return named


if __name__ == "__main__":
    main()
