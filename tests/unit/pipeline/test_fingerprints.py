"""Per-stage config fingerprints (``srl/pipeline/fingerprints.py``): every config key is classified here.

A finished stage is reused only while its fingerprint is unchanged, so a key missing from a
stage's fingerprint lets a run mix outputs of different configs, and a key wrongly in it refuses a
harmless change. ``test_every_config_key_reaches_the_stages_it_should`` perturbs every leaf of the
composed job config (several compositions, so every config group's keys exist) and checks the
stages whose fingerprint changed against ``TABLE``. A new config key fails that test until it is
classified in ``TABLE`` (and, if it changes a stage's outputs, added to ``srl/pipeline/fingerprints.py``).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re

from conftest import ROOT, compose
from omegaconf import OmegaConf

NUM_MODELS = 3
COMMON = [f"iteration.num_models={NUM_MODELS}", "eval.in_loop=true"]
# Together these hold every key of every config group (vllm, LoRA/QLoRA, each strategy, EFT paper mode, a sweep).
COMPOSITIONS = {
    "default": [],
    "vllm": ["backend=vllm"],
    "qlora": ["peft=qlora"],
    "fsdp": ["trainer=fsdp"],
    "ddp": ["trainer=ddp"],
    "ddp_cpu": ["trainer=ddp_cpu"],
    "deepspeed": ["trainer=deepspeed_zero3"],
    "eft_paper": ["data.build.eft_mode=paper"],
    "paper": ["+experiment=paper"],
    "paper_8gpu": ["+experiment=paper_8gpu"],  # vllm + lora + fsdp + eft_mode=paper
    "sweep": ["+sweeps=eft"],
    "smoke": ["+experiment=smoke"],  # model=tiny, logger=none
    "others": ["judge=pairwise", "logger=csv", "data=oasst_local"],  # judge.mode; data.source.path=???
    "study": ["+experiment=cpu_study", "+study=sft_baseline"],  # preference sets, sft.use_eft, eval.h2h.enabled
    "reward_model": ["external_judge=reward_model", "external_judge.path=/some/rm", "judge.by=external"],
    "openai": ["external_judge=openai", "external_judge.model=gpt-4o", "eval.h2h.judge=external"],
    "messages": ["data=messages", "data.instructions.path=/some/chats.jsonl", "data.eft_rows.path=/some/eft.jsonl"],
    "prompt_completion": ["data=prompt_completion", "data.instructions.path=/some/pc.parquet"],
    "select": ["sft.select.every_steps=50", "dpo.select.every_steps=20"],
    "meta": ["meta.enabled=true"],  # Meta-Rewarding: an iter<t>/meta stage before each iteration's pairs
    "online": ["iteration.sync_every=2"],  # semi-online: M_{t+1}'s stage makes the candidates, judgements and pairs
}
# A user's own SFT data is off while its path is null, checkpoint selection while every_steps is 0: their other keys then reach no stage.
# Meta-Rewarding is off while meta.enabled is false: there is no meta stage, and its keys reach none.
OFF_AT = {"data.instructions": ("path", None), "data.eft_rows": ("path", None), "sft.select": ("every_steps", 0), "dpo.select": ("every_steps", 0),
          "meta": ("enabled", False)}


def off_without_path(cfg, key: str) -> bool:
    return any(key.startswith(p + ".") and key != f"{p}.{field}" and OmegaConf.select(cfg, f"{p}.{field}") == off
               for p, (field, off) in OFF_AT.items())

# (fnmatch pattern over the dotted key, the first non-eval stage kind the key enters at, or None for
# no stage; whether it reaches every eval stage besides those after the stage it enters at).
# Kinds: data, m1, prompts, candidates, judgements, pairs, dpo (= m2, m3, ...). First match wins.
TABLE = [
    ("seed", "data", True),                    # sub-sections interpolate ${seed}; also in data itself
    ("data.*", "data", True),
    ("judge.template.*", "data", True),        # the EFT data is written in the judge's format
    ("judge.*", "judgements", True),           # mode, samples, sampling, by: the judging and every evaluation
    *((f"external_judge.{k}", None, False) for k in ("concurrency", "max_retries", "backoff_s", "timeout_s", "api_key_env", "cache_dir")),
    ("external_judge", "judgements", True),    # none is {}
    ("external_judge.*", "judgements", True),  # the judging (judge.by=external) and every evaluation (judge quality, h2h referee)
    ("model.*", "m1", True),                   # M0: trained into M1, generates in eval/m0 ("data" under eft_mode=paper)
    ("backend", "prompts", True),              # backend=hf is {}: srl's own engine
    ("backend.*", "prompts", True),            # generation: prompts, candidates, judging, evaluation
    ("peft.*", "m1", False),
    ("sft.*", "m1", False),
    ("trainer.log_every_n_steps", None, False),    # display and logging only
    ("trainer.enable_progress_bar", None, False),
    ("trainer.enable_model_summary", None, False),
    ("trainer.*", "m1", False),                # accelerator, devices, strategy, precision, clipping, ...: training results
    ("prompt_gen.*", "prompts", False),
    ("iteration.seed", "prompts", True),       # the seed of prompts, candidates, judging and evaluation
    ("iteration.sync_every", "dpo", False),    # semi-online: the schedule M_{t+1} is trained and its records made by
    ("iteration.*", None, False),              # what runs and how it resumes, not what a finished stage holds
    ("generation.*", "candidates", False),
    ("meta.enabled", "pairs", False),          # adds the meta stages; in the stages both lists share, the pairs onward change
    ("meta.*", "meta", False),                 # the meta-judge (Meta-Rewarding's judge pairs), when enabled
    ("pairs.*", "pairs", False),
    ("dpo.max_length", "pairs", False),        # pairs that fit, and their stored reference log-probs
    ("dpo.ref_batch_size", "pairs", False),    # batched (padded) reference log-probs
    ("dpo.*", "dpo", False),
    ("eval.in_loop", None, False),             # whether eval stages exist, not what they hold
    ("eval.*", None, True),
    ("logger", None, False),                   # logger=none is {}
    ("logger.*", None, False),
    ("sweep.*", None, False),                  # a sweep file's name and question
    ("hub.*", None, False),                    # model cards and pushing: written beside the model, not what it computes
]
# data.build.eft_mode=paper: M0 writes the EFT judgements in the data stage, with the generation backend.
PAPER_EFT = {"model.*": ("data", True), "backend": ("data", True), "backend.*": ("data", True)}
# Keys that change the list of stages: only the stages both lists share are compared.
STAGE_LIST_KEYS = {"iteration.num_models", "eval.in_loop", "meta.enabled", "iteration.sync_every"}
# Semi-online has no candidates, judgements, meta or pairs stages: keys entering there enter at M_{t+1}'s stage.
ONLINE_KIND = {"candidates": "dpo", "judgements": "dpo", "meta": "dpo", "pairs": "dpo"}


def _stages(meta: bool = False, online: bool = False) -> list[str]:
    from srl.pipeline.loop import stage_names

    return stage_names(NUM_MODELS, True, meta, online)


def _kind(stage: str) -> str:
    name = stage.split("/")[-1]
    return "dpo" if re.fullmatch(r"m[0-9]+", name) and name != "m1" else name


def expected_stages(enters: str | None, all_eval: bool, meta: bool = False, online: bool = False) -> set[str]:
    """The stages a key entering at ``enters`` changes: every non-eval stage from that kind's first
    occurrence on, the evaluation of every model whose chain includes one, and all evaluations with ``all_eval``."""
    stages = _stages(meta, online)
    enters = ONLINE_KIND.get(enters, enters) if online else enters
    chain: set[str] = set()
    if enters is not None:
        first = next(i for i, s in enumerate(stages) if not s.startswith("eval/") and _kind(s) == enters)
        chain = {s for s in stages[first:] if not s.startswith("eval/")}
    out = set(chain)
    for i, stage in enumerate(stages):
        if stage.startswith("eval/") and (all_eval or any(s in chain for s in stages[:i])):
            out.add(stage)
    return out


def classify(key: str, eft_paper: bool) -> tuple[str | None, bool] | None:
    for pattern, enters, all_eval in TABLE:
        if fnmatch.fnmatchcase(key, pattern):
            return PAPER_EFT.get(pattern, (enters, all_eval)) if eft_paper else (enters, all_eval)
    return None


def leaves(node: object, prefix: str = "") -> list[str]:
    """Dotted keys of every leaf (a value, a list, or an empty mapping) of a plain container."""
    if isinstance(node, dict) and node:
        return [k for key, value in node.items() for k in leaves(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}")]
    return [prefix]


def perturbed(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.125
    if isinstance(value, str):
        return value + "_x"
    if value is None:
        return 1
    if isinstance(value, list):
        return [*value, "x"]
    if isinstance(value, dict):
        return {"x": 1}
    raise TypeError(f"no perturbation for {value!r}")


def job_config(overrides: list[str]):
    """The composed config without Hydra's node (what the stages see)."""
    cfg = compose([*overrides, *COMMON])
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


def current(cfg, key: str) -> object:
    """``key``'s resolved value; None where it cannot be resolved here (``${hydra:...}`` outside a run, ``???``)."""
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception:
        return None
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def test_every_config_key_reaches_the_stages_it_should():
    from srl.pipeline.fingerprints import fingerprints

    unclassified, wrong, checked = set(), [], set()
    for name, overrides in COMPOSITIONS.items():
        cfg = job_config(overrides)
        eft_paper = cfg.data.build.eft_mode == "paper"
        base = fingerprints(cfg)
        meta, online = bool(cfg.meta.enabled), cfg.iteration.sync_every is not None
        assert list(base) == _stages(meta, online), name
        for key in leaves(OmegaConf.to_container(cfg, resolve=False)):
            off = off_without_path(cfg, key)
            if (key, eft_paper, off, online) in checked:  # a key's stages depend on eft_mode (and a path) alone: each is perturbed once (fast)
                continue
            found = (None, False) if off or (online and key.startswith("meta.")) else classify(key, eft_paper)  # online refuses meta
            if found is None:
                unclassified.add(key)
                continue
            changed_cfg = copy.deepcopy(cfg)
            OmegaConf.update(changed_cfg, key, perturbed(current(cfg, key)), merge=False)
            new = fingerprints(changed_cfg)
            if key not in STAGE_LIST_KEYS:
                assert list(new) == list(base), f"{name}: changing {key} changed the list of stages"
            changed = {s for s in base if s in new and new[s] != base[s]}
            want = expected_stages(*found, meta, online)
            if key in STAGE_LIST_KEYS:  # only the stages both lists share are compared
                want &= set(new)
            if changed != want:
                wrong.append(f"{name}: {key} (table: {found}): changes {sorted(changed)}, expected {sorted(want)} "
                             f"(extra {sorted(changed - want)}, missing {sorted(want - changed)})")
            checked.add((key, eft_paper, off, online))
    assert not unclassified, (
        "config keys not classified in tests/unit/test_fingerprints.py TABLE: " + ", ".join(sorted(unclassified))
        + ". Decide which stage's outputs each one changes, add it to srl/pipeline/fingerprints.py STAGE_INPUTS if any, and to TABLE"
    )
    assert not wrong, "stage fingerprints do not match TABLE:\n" + "\n".join(wrong)
    # COMPOSITIONS reach every key of every config group's files (conf/<group>/<option>.yaml).
    reached = {key for key, _, _, _ in checked}
    for path in sorted((ROOT / "conf").glob("*/*.yaml")):
        if path.parent.name != "experiment":
            own = {k: v for k, v in (OmegaConf.to_container(OmegaConf.load(path)) or {}).items() if k != "defaults"}
            package = "" if path.read_text().startswith("# @package _global_") else path.parent.name  # conf/study: global
            missing = [k for k in leaves(own, package) if k not in reached]
            assert not missing, f"{path.relative_to(ROOT)}: keys no composition checks: {missing}; add a composition to COMPOSITIONS"
    assert {("model.name_or_path", True, False, False), ("backend.seed", True, False, False), ("sweep.name", False, False, False), ("data.instructions.format", False, True, False), ("data.instructions.format", False, False, False), ("generation.num_candidates", False, False, True)} <= checked


def test_generation_temperature_changes_candidates_onward():
    from srl.pipeline.fingerprints import fingerprints

    base = fingerprints(job_config([]))
    hotter = fingerprints(job_config(["generation.sampling.temperature=0.9"]))
    changed = {s for s in base if base[s] != hotter[s]}
    assert changed == {
        "iter1/candidates", "iter1/judgements", "iter1/pairs", "m2", "eval/m2",
        "iter2/prompts", "iter2/candidates", "iter2/judgements", "iter2/pairs", "m3", "eval/m3",
    }
    assert not changed & {"data", "eval/m0", "m1", "eval/m1", "iter1/prompts"}


def test_seed_changes_every_stage():
    from srl.pipeline.fingerprints import fingerprints

    for overrides in ([], ["+experiment=paper"]):
        base = fingerprints(job_config(overrides))
        other = fingerprints(job_config([*overrides, "seed=1"]))
        assert all(base[s] != other[s] for s in base), overrides


def test_stage_inputs_are_flat_plain_values():
    from srl.core.hashing import config_fingerprint
    from srl.pipeline.fingerprints import fingerprints, stage_inputs

    for overrides in ([], ["+experiment=paper_8gpu"]):
        cfg = job_config(overrides)
        inputs = stage_inputs(cfg)
        assert list(inputs) == _stages()
        assert fingerprints(cfg) == {s: config_fingerprint(v) for s, v in inputs.items()}
        for stage, values in inputs.items():
            json.dumps(values)  # plain JSON values, no default=str needed
            for key, value in values.items():
                assert not (isinstance(value, dict) and value), f"{stage}: {key} is not flattened"
                found = classify(key, cfg.data.build.eft_mode == "paper")
                assert found is not None and stage in expected_stages(*found), f"{stage}: {key} is not one of its inputs"
        # Every evaluation samples M0 or its descendants with the backend, seeded by iteration.seed.
        for key in ("model._target_", "iteration.seed", "eval.h2h.reply_sampling.temperature", "judge.num_samples"):
            assert key in inputs["eval/m0"], key
        assert "trainer.precision" in inputs["m1"] and "trainer.precision" not in inputs["eval/m0"]
        assert "trainer.log_every_n_steps" not in inputs[f"m{NUM_MODELS}"]
        assert "dpo.ref_batch_size" in inputs["iter1/pairs"] and "dpo.beta" not in inputs["iter1/pairs"]
    paper = stage_inputs(job_config(["+experiment=paper_8gpu"]))
    assert paper["data"]["backend.tensor_parallel_size"] == 8 and "model.name_or_path" in paper["data"]
    assert "model._target_" not in stage_inputs(job_config([]))["data"]


def test_moving_an_srl_class_to_another_module_keeps_the_fingerprints():
    """Code layout is not config: a run dir stays resumable when a class moves between srl modules."""
    from srl.pipeline.fingerprints import fingerprints

    base = fingerprints(job_config([]))
    moved = job_config([])
    OmegaConf.update(moved, "judge._target_", "srl.judging.settings.JudgeSettings")  # was srl.judging.settings.JudgeSettings
    assert fingerprints(moved) == base
    renamed = job_config([])
    OmegaConf.update(renamed, "judge._target_", "srl.judging.pointwise.OtherJudgeSettings")
    assert fingerprints(renamed)["iter1/judgements"] != base["iter1/judgements"]
    outside = job_config([])
    OmegaConf.update(outside, "sft.optimizer._target_", "torch.optim.SGD")
    assert fingerprints(outside)["m1"] != base["m1"]


def test_keys_added_for_a_users_own_data_leave_old_run_dirs_resumable():
    """Config keys added later (data.instructions, data.eft_rows, prompt_gen's pool/demo columns, eval.h2h.prompts'
    field/split) at their defaults give every stage the fingerprint it had before they existed."""
    from srl.pipeline.fingerprints import fingerprints

    cfg = job_config([])
    old = copy.deepcopy(cfg)
    for section, keys in {"data": ("instructions", "eft_rows"), "prompt_gen": ("pool_split", "pool_field", "demos_path", "demos_split", "demos_field"),
                          "eval.h2h.prompts": ("field", "split"), "sft": ("select",), "dpo": ("select",), "pairs": ("extra",)}.items():
        node = OmegaConf.select(old, section)
        for key in keys:
            assert key in node, (section, key)
            node.pop(key)
    assert fingerprints(cfg) == fingerprints(old)
    used = copy.deepcopy(cfg)
    OmegaConf.update(used, "prompt_gen.pool_field", "text", merge=False)
    assert fingerprints(used)["iter1/prompts"] != fingerprints(cfg)["iter1/prompts"]
