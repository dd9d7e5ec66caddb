"""The judges of a run, built once from the config and shared by every place that judges.

``conf/external_judge`` (none | reward_model | openai) defines at most one external judge;
``judge.by=external`` makes it the loop's judge (and so the judge the judge-quality evaluation
measures), ``eval.h2h.judge=external`` the head-to-head referee. Both get the same object, so an
OpenAI-compatible judge's cache and request counts are shared (``srl/judging/backends.py``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from srl.evaluation.model_eval import EvalSettings
from srl.judging.settings import JudgeSettings


def external_judge(cfg: DictConfig) -> Any | None:
    """The ``external_judge`` node built, or None when it is ``none`` (empty). A judge with a reply
    cache and no ``cache_dir`` caches in the run's (Hydra output) dir, ``judge_cache/``."""
    node = cfg.get("external_judge")
    if not node or not node.get("_target_"):
        return None
    judge = instantiate(node)
    if hasattr(judge, "cache_dir") and judge.cache_dir is None and HydraConfig.initialized():
        judge.cache_dir = str(Path(HydraConfig.get().runtime.output_dir) / "judge_cache")
    return judge


def judges(cfg: DictConfig, selects: Sequence[Any] = ()) -> tuple[JudgeSettings, EvalSettings | None]:
    """(the loop's judge settings, the eval settings) with the external judge set where the config
    asks for it; eval settings are None without an ``eval`` node. ``selects``: the training stages'
    checkpoint selection settings (``sft.select``, ``dpo.select``), given the judge when theirs is ``external``."""
    external = external_judge(cfg) if _wants_external(cfg) else None
    for select in selects:
        if select.enabled and select.judge == "external":
            select.external = _required(external, "select.judge=external")
    judge: JudgeSettings = instantiate(cfg.judge)
    if judge.by == "external":
        judge = dataclasses.replace(judge, external=_required(external, "judge.by=external"))
    evaluation: EvalSettings | None = instantiate(cfg.eval) if cfg.get("eval") else None
    if evaluation is not None and evaluation.h2h.judge == "external":
        h2h = dataclasses.replace(evaluation.h2h, external=_required(external, "eval.h2h.judge=external"))
        evaluation = dataclasses.replace(evaluation, h2h=h2h)
    return judge, evaluation


def _wants_external(cfg: DictConfig) -> bool:
    selecting = any(OmegaConf.select(cfg, f"{s}.select.judge") == "external" and (OmegaConf.select(cfg, f"{s}.select.every_steps") or 0) > 0
                    for s in ("sft", "dpo"))
    return cfg.judge.get("by") == "external" or (cfg.get("eval") is not None and cfg.eval.h2h.get("judge") == "external") or selecting


def _required(external: Any | None, where: str) -> Any:
    if external is None:
        raise ValueError(f"{where} needs an external judge: choose external_judge=reward_model or external_judge=openai")
    return external
