"""Configs are validated at composition (srl/config/validation.py): every shipped config passes, and a wrong
type, unknown key, missing or out-of-range value fails before any model loads, naming the key."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, compose
from omegaconf import open_dict

from srl.config.validation import ConfigError, validate_config

CONF = ROOT / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "experiment")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
# Options that are valid only with a value the user gives, or with a batch that splits over 8 processes
# (the default's sft batch of 4 does not: see test_multi_gpu_trainer_on_the_default_batch_is_an_error).
APPENDED_GROUPS = {"study"}
CONTEXT = {
    ("data", "oasst_local"): ["data.source.path=/some/oasst1.jsonl"],
    ("model", "hf"): ["model.name_or_path=gpt2"],
    **{("trainer", t): ["+experiment=paper"] for t in ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")},
    ("external_judge", "openai"): ["external_judge.model=gpt-4o", "eval.h2h.judge=external"],
    ("external_judge", "reward_model"): ["external_judge.path=/some/reward_model", "judge.by=external"],
}


def validate(overrides: list[str]) -> None:
    """Compose as ``python -m srl.run`` would, with Hydra's runtime values (``${hydra:...}``) set."""
    from hydra.core.hydra_config import HydraConfig

    cfg = compose(overrides)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = "/tmp/srl-validation-test"
    HydraConfig.instance().set_config(cfg)
    validate_config(cfg)


def test_default_config_is_valid():
    validate([])


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_of_every_group_is_valid(group, option):
    add = "+" if group in APPENDED_GROUPS else ""  # groups the root config does not choose from (conf/study: +study=...)
    validate([f"{add}{group}={option}", *CONTEXT.get((group, option), [])])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_is_valid(experiment):
    validate([f"+experiment={experiment}"])


def sweep_jobs() -> list[tuple[str, str, str]]:
    jobs = []
    for name in SWEEPS:
        params = yaml.safe_load((ROOT / "sweeps" / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]
        jobs += [(name, key, value.strip()) for key, values in params.items() for value in str(values).split(",")]
    return jobs


@pytest.mark.parametrize("sweep,key,value", sweep_jobs())
def test_every_sweep_job_is_valid(sweep, key, value):
    validate([f"+sweeps={sweep}", f"{key}={value}"])


# (overrides, the key named, a fragment of that key's line: what is allowed)
MISTAKES = [
    (["dpo.beta=abc"], "dpo.beta", "allowed: float"),
    (["generation.sampling.top_p=banana"], "generation.sampling.top_p", "allowed: float"),
    (["generation.num_candidates=four"], "generation.num_candidates", "allowed: int"),
    (["sft.micro_batch_size=0"], "sft.micro_batch_size", ">= 1"),
    (["generation.sampling.top_p=1.5"], "generation.sampling.top_p", "in (0, 1]"),
    (["dpo.beta=-1"], "dpo.beta", "> 0"),
    (["sft.optimizer.lr=0"], "sft.optimizer.lr", "> 0"),
    (["+sft.bach_size=4"], "sft.bach_size", "did you mean batch_size?"),
    (["iteration.num_models=0"], "iteration.num_models", ">= 1"),
    (["generation.sampling.temperature=-0.1"], "generation.sampling.temperature", ">= 0"),
    (["model=hf"], "model.name_or_path", "no value given (???)"),
    (["data=oasst_local"], "data.source.path", "no value given (???)"),
    (["~sft.optimizer"], "sft.optimizer", "required by srl.training.sft.SFTSettings"),
    (["sft.batch_size=6", "sft.micro_batch_size=4"], "sft.batch_size", "a multiple of 4"),
    (["dpo.loss=foo"], "dpo.loss", "one of sigmoid, ipo, conservative, rpo"),
    (["generation.num_candidates=1"], "generation.num_candidates", ">= 2"),
    (["judge.num_samples=0"], "judge.num_samples", ">= 1"),
    (["judge=pairwise", "judge.mode=nope"], "judge.mode", "one of sample, score_first, pairwise"),
    (["sft.dropout=1.0"], "sft.dropout", "in [0, 1)"),
    (["sft.use_eft=maybe"], "sft.use_eft", "allowed: bool"),
    (["seed=abc"], "seed", "an int"),
    (["prompt_gen.sampling=null"], "prompt_gen.sampling", "_target_: srl.generation.sampling.SamplingSettings"),
    (["+dpo.optimizer.betaz=[0.9,0.99]"], "dpo.optimizer.betaz", "did you mean betas?"),
    (["sft.optimizer.betas=[0.9]"], "sft.optimizer.betas", "a list of 2"),
    (["dpo.optimizer._target_=torch.optim.NoSuchOptimizer"], "dpo.optimizer._target_", "cannot import"),
    (["iteration.reuse_from=${nope}"], "iteration.reuse_from", "interpolation"),
    (["eval.h2h.prompts.kind=nope"], "eval.h2h.prompts.kind", "one of heldout"),
    (["peft=lora", "peft.r=0"], "peft.r", ">= 1"),
    (["backend=vllm", "backend.gpu_memory_utilization=1.5"], "backend.gpu_memory_utilization", "in (0, 1]"),
    (["backend.weights=int4"], "backend.weights", "one of auto, as_loaded, float32, bfloat16, float16"),
    (["pairs.length_tier=0.5"], "pairs.length_tier", "in [0, 0.5)"),
    (["eval.h2h.judge=m2"], "eval.h2h.judge", "allowed: m0, m1"),
    (["eval.h2h.protocol=nope"], "eval.h2h.protocol", "one of pairwise, pointwise"),
    (["eval.implicit.against=best"], "eval.implicit.against", "one of start, previous"),
    (["eval.bootstrap_samples=0"], "eval.bootstrap_samples", ">= 1"),
    (["hub.push=true"], "hub.repo_id", "allowed: user/name"),
    (["sft.select.every_steps=10", "sft.select.judge=m1"], "sft.select.judge", "allowed: m0, external"),
    (["dpo.select.every_steps=10", "dpo.select.judge=m2"], "dpo.select.judge", "allowed: m0, m1, external"),
    (["trainer=fsdp", "dpo.select.every_steps=10"], "trainer.strategy", "a replicated strategy"),
    (["trainer=deepspeed_zero3", "sft.select.every_steps=10"], "trainer.strategy", "a replicated strategy"),
    (["dpo.select.every_steps=-1"], "dpo.select.every_steps", ">= 0"),
    (["external_judge=reward_model", "external_judge.path=/rm"], "external_judge", "or a select.judge"),
    (["data.instructions.format=sharegpt"], "data.instructions.format", "messages"),
    (["pairs.extra=[{name: a, path: p.jsonl, limit: 0}]"], "pairs.extra[0].limit", ">= 1"),
    (["eval.preference_sets=[{name: a, path: p.jsonl, limit: 0}]"], "eval.preference_sets[0].limit", ">= 1"),
    (["pairs.extra=[{name: a, pth: p.jsonl}]"], "pairs.extra[0].pth", "did you mean path?"),
]


@pytest.mark.parametrize("overrides,key,allowed", MISTAKES, ids=[" ".join(m[0]) for m in MISTAKES])
def test_mistake_is_an_error_naming_the_key(overrides, key, allowed):
    with pytest.raises(ConfigError) as caught:
        validate(overrides)
    lines = [p for p in caught.value.problems if p.startswith(f"{key}:")]
    assert lines, f"no problem names {key}: {caught.value}"
    assert any(allowed in line for line in lines), lines
    assert key in str(caught.value)


def test_every_problem_is_listed_once():
    with pytest.raises(ConfigError) as caught:
        validate(["dpo.beta=abc", "sft.micro_batch_size=0", "+sft.bach_size=4", "generation.sampling.top_p=1.5"])
    keys = [p.split(":", 1)[0] for p in caught.value.problems]
    assert sorted(keys) == ["dpo.beta", "generation.sampling.top_p", "sft.bach_size", "sft.micro_batch_size"]


def test_multi_gpu_trainer_on_the_default_batch_is_an_error():
    # The default's global SFT batch (4, micro-batches of 2) cannot split over 8 processes.
    with pytest.raises(ConfigError, match=r"sft\.batch_size: got 4, not a multiple of sft\.micro_batch_size x processes \(2 x 8\)"):
        validate(["trainer=ddp"])


def test_checkable_values_given_another_way_pass():
    validate(["dpo.beta=1", "trainer.devices=auto", "sft.dropout=null", "sft.scheduler=null", "eval.rm.max_prompts=null"])


@pytest.mark.parametrize("module", ["srl.run", "srl.evaluate", "srl.prepare_data"])
def test_cli_fails_fast_naming_the_key(module, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}  # offline W&B would write run_dir/wandb
    done = subprocess.run([sys.executable, "-m", module, "dpo.beta=abc", f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "ConfigError" in done.stderr and "dpo.beta: got 'abc', a str (allowed: float)" in done.stderr, done.stderr[-3000:]
    # Nothing but Hydra's own files: no data, no model, no W&B run.
    written = {p.relative_to(run_dir).parts[0] for p in run_dir.rglob("*")}
    assert written <= {".hydra", "run.log", f"{module.split('.')[1]}.log"}, written


def test_a_quantized_base_without_bitsandbytes_is_refused_before_any_work(monkeypatch):
    """bitsandbytes is optional (srl[quant]); peft=qlora without it stops at the config check, naming the fix."""
    import importlib.util

    from srl.training.adapters import PeftSettings, quantization_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError, match=r"peft\.quantization: peft\.quantization=4bit loads the base through bitsandbytes.*srl\[quant\]"):
        validate_config(compose(["peft=qlora", "hydra.run.dir=/tmp/x"]))
    validate_config(compose(["peft=lora", "hydra.run.dir=/tmp/x"]))  # LoRA alone needs no bitsandbytes
    with pytest.raises(ModuleNotFoundError, match=r"srl\[quant\]"):
        quantization_config(PeftSettings(method="lora", quantization="8bit"))


def test_pushing_models_offline_is_refused_before_the_run(monkeypatch):
    """hub.push needs a network: with HF_HUB_OFFLINE set the config check says so, before any work."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"hub\.push: got True, but HF_HUB_OFFLINE=1: no network .*huggingface-cli upload me/run"):
        validate_config(compose(["hub.push=true", "hub.repo_id=me/run", "hydra.run.dir=/tmp/x"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    validate_config(compose(["hub.push=true", "hub.repo_id=me/run", "hydra.run.dir=/tmp/x"]))
