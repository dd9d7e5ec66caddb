"""Every experiment composes, and everything that needs no weights instantiates."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hydra.utils import instantiate

from conftest import ROOT, compose
from srl.evalsets import PromptSetSettings
from srl.evaluate import EvalSettings, RMSettings
from srl.generation import SamplingSettings
from srl.headtohead import H2HSettings
from srl.loop import LoopSettings
from srl.models import EmbeddedSmolLM2Spec, HFModelSpec, TinyModelSpec
from srl.oasst import BuildSettings, OasstSource
from srl.sft import SFTSettings
from srl.templates import JudgeTemplate, PairwiseTemplate

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def test_experiments_exist():
    assert {"paper", "smoke"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", [None] + EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment):
    cfg = compose([f"+experiment={experiment}"] if experiment else [])
    assert isinstance(instantiate(cfg.model), (EmbeddedSmolLM2Spec, HFModelSpec, TinyModelSpec))
    assert isinstance(instantiate(cfg.data.source), OasstSource)
    assert isinstance(instantiate(cfg.data.build), BuildSettings)
    assert isinstance(instantiate(cfg.data.eft_sampling), SamplingSettings)
    assert isinstance(instantiate(cfg.judge.template), JudgeTemplate)
    for node in (cfg.judge.sampling, cfg.generation.sampling, cfg.prompt_gen.sampling):
        assert isinstance(instantiate(node), SamplingSettings)
    sft = instantiate(cfg.sft)
    assert isinstance(sft, SFTSettings) and isinstance(sft.optimizer, functools.partial)
    assert isinstance(instantiate(cfg.trainer), functools.partial)
    assert isinstance(instantiate(cfg.iteration), LoopSettings)
    for node in (cfg.dpo.optimizer, cfg.dpo.scheduler):
        assert isinstance(instantiate(node), functools.partial)
    evaluation = instantiate(cfg.eval)
    assert isinstance(evaluation, EvalSettings) and isinstance(evaluation.rm, RMSettings) and isinstance(evaluation.h2h, H2HSettings)
    assert isinstance(evaluation.h2h.template, PairwiseTemplate) and isinstance(evaluation.h2h.prompts, PromptSetSettings)
    assert isinstance(evaluation.h2h.judge_sampling, SamplingSettings) and isinstance(evaluation.h2h.reply_sampling, SamplingSettings)


def test_eval_stages_and_fingerprints():
    from srl.run import fingerprints

    base = fingerprints(compose())
    assert list(base) == ["data", "eval/m0", "m1", "eval/m1", "iter1/prompts", "iter1/candidates", "iter1/judgements",
                          "iter1/pairs", "m2", "eval/m2"]
    # Changing the evaluation reruns only the evaluation stages; training stages keep their results.
    changed = fingerprints(compose(["eval.h2h.prompts.limit=3"]))
    assert {k for k in base if base[k] != changed[k]} == {"eval/m0", "eval/m1", "eval/m2"}
    # A changed SFT config changes M1 and everything after it, its evaluation included, not M0's.
    sft = fingerprints(compose(["sft.max_epochs=2"]))
    assert {k for k in base if base[k] != sft[k]} == set(base) - {"data", "eval/m0"}
    assert list(fingerprints(compose(["eval.in_loop=false"]))) == [k for k in base if not k.startswith("eval/")]
    # The judge's template makes the EFT data; its mode and samples only the judging and the evaluations.
    first = fingerprints(compose(["judge=score_first"]))
    assert {k for k in base if base[k] != first[k]} == set(base) - {"data", "m1", "iter1/prompts", "iter1/candidates"}
    buckets = fingerprints(compose(["judge=buckets"]))
    assert all(base[k] != buckets[k] for k in base)


def test_experiment_files_start_with_package_and_command():
    for name in EXPERIMENTS:
        lines = (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text().splitlines()
        assert lines[0] == "# @package _global_", name
        assert lines[1] == f"# python -m srl.run +experiment={name}", name


def test_paper_values():
    cfg = compose(["+experiment=paper"])
    assert cfg.model.name_or_path == "meta-llama/Llama-2-70b-hf"
    assert cfg.data.source.path is None and cfg.data.source.hub_id == "OpenAssistant/oasst1"
    assert cfg.generation.num_candidates == 4
    assert (cfg.generation.sampling.temperature, cfg.generation.sampling.top_p) == (0.7, 0.9)
    assert cfg.judge.num_samples == 3
    assert cfg.prompt_gen.num_human_shots + cfg.prompt_gen.num_model_shots == 8
    assert (cfg.prompt_gen.sampling.temperature, cfg.prompt_gen.sampling.top_p) == (0.6, 0.9)
    assert (cfg.sft.optimizer.lr, cfg.sft.scheduler.final_lr, cfg.sft.batch_size, cfg.sft.dropout) == (5.5e-6, 1.1e-6, 16, 0.1)
    assert (cfg.dpo.optimizer.lr, cfg.dpo.scheduler.final_lr, cfg.dpo.batch_size, cfg.dpo.dropout, cfg.dpo.beta) == (1e-6, 1e-7, 16, 0.1, 0.1)
    assert cfg.iteration.num_models == 3
    assert cfg.data.build.eft_mode == "paper" and cfg.sft.use_eft


def test_default_is_embedded_and_wandb_offline_unless_told(monkeypatch):
    cfg = compose([])
    assert cfg.model._target_ == "srl.models.EmbeddedSmolLM2Spec"
    assert Path(instantiate(cfg.data.source).path).is_file()
    # W&B mode: offline when WANDB_MODE is unset, the variable's value when it is set.
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert compose([]).logger.mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert compose([]).logger.mode == "online"


def test_config_typo_is_an_error():
    from hydra.errors import ConfigCompositionException, InstantiationException

    with pytest.raises(ConfigCompositionException):
        compose(["sft.learning_rat=1.0"])
    with pytest.raises(InstantiationException, match="stop_after"):
        instantiate(compose(["iteration.stop_after=m9"]).iteration)
