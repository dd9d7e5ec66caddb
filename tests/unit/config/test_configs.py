"""Every experiment composes, and everything that needs no weights instantiates."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from conftest import ROOT, compose
from hydra.utils import instantiate

from srl.data.oasst import OasstSource
from srl.data.prompt_sets import PromptSetSettings
from srl.evaluation.head_to_head import H2HSettings
from srl.evaluation.model_eval import EvalSettings, RMSettings
from srl.generation.sampling import SamplingSettings
from srl.judging.templates import JudgeTemplate, PairwiseTemplate
from srl.models.embedded import EmbeddedSmolLM2Spec
from srl.models.loading import HFModelSpec
from srl.pipeline.loop import LoopSettings
from srl.training.sft import SFTSettings
from srl.training.sft_data import BuildSettings
from srl.training.tiny import TinyModelSpec

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
    from srl.pipeline.fingerprints import fingerprints

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
    assert cfg.model._target_ == "srl.models.embedded.EmbeddedSmolLM2Spec"
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


PEFTS = sorted(p.stem for p in (ROOT / "conf" / "peft").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (ROOT / "conf" / "trainer").glob("*.yaml"))


@pytest.mark.parametrize("peft", PEFTS)
def test_every_peft_config_instantiates(peft):
    from srl.training.adapters import PeftSettings

    settings = instantiate(compose([f"peft={peft}"]).peft)
    assert isinstance(settings, PeftSettings)
    assert settings.enabled == (peft != "none")
    assert settings.quantization == {"qlora": "4bit", "lora_8bit": "8bit"}.get(peft, "none")


def test_peft_changes_training_fingerprints_not_the_data():
    from srl.pipeline.fingerprints import fingerprints

    full, lora = fingerprints(compose([])), fingerprints(compose(["peft=lora"]))
    assert full["data"] == lora["data"]
    assert all(full[s] != lora[s] for s in full if s != "data" and s != "eval/m0")


def test_backends():
    from srl.generation.vllm import VLLMSettings

    from srl.generation.weights import EngineSettings

    engine = instantiate(compose(["backend=hf"]).backend)
    assert isinstance(engine, EngineSettings) and engine.weights == "auto"
    vllm = instantiate(compose(["backend=vllm", "backend.tensor_parallel_size=2"]).backend)
    assert isinstance(vllm, VLLMSettings) and vllm.tensor_parallel_size == 2 and vllm.enable_prefix_caching


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_trainer_config_builds_its_strategy(trainer):
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy

    from srl.training.strategies import build_strategy

    cfg = compose([f"trainer={trainer}"])
    factory = instantiate(cfg.trainer)
    assert isinstance(factory, functools.partial)
    spec = factory.keywords["strategy"]
    assert not hasattr(spec, "_metadata")  # plain values below run.py (_convert_: all), not a DictConfig
    if trainer.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    strategy = build_strategy(spec)
    expected = {"cpu": str, "gpu": str, "ddp": DDPStrategy, "ddp_cpu": DDPStrategy, "fsdp": FSDPStrategy}.get(trainer, DeepSpeedStrategy)
    assert isinstance(strategy, expected)
    if trainer == "fsdp":
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        assert LlamaDecoderLayer in strategy.kwargs["auto_wrap_policy"]._module_classes


def test_ddp_cpu_trainer_is_two_gloo_processes():
    trainer = instantiate(compose(["trainer=ddp_cpu"]).trainer)(max_epochs=1, logger=False)
    assert trainer.num_devices == 2 and trainer.strategy._process_group_backend == "gloo"


def test_unknown_strategy_and_layer_are_errors():
    from srl.training.strategies import build_strategy

    with pytest.raises(ValueError, match="ddp, fsdp or deepspeed"):
        build_strategy({"name": "horovod"})
    with pytest.raises(ValueError, match="NoSuchDecoderLayer"):
        build_strategy({"name": "fsdp", "wrap_layers": ["NoSuchDecoderLayer"]})


def test_scale_experiments():
    qlora = compose(["+experiment=qlora_7b"])
    assert qlora.peft.quantization == "4bit" and qlora.trainer.devices == 1 and "7b" in qlora.model.name_or_path
    node = compose(["+experiment=paper_8gpu"])
    assert node.trainer.devices == 8 and node.trainer.strategy.name == "fsdp" and node.backend.tensor_parallel_size == 8
    assert node.peft.method == "lora" and node.model.name_or_path == "meta-llama/Llama-2-70b-hf"
    assert node.iteration.num_models == 3 and node.dpo.beta == 0.1  # the paper's recipe underneath
