"""Per-stage config fingerprints: the config keys a finished stage's outputs depend on.

A stage recorded in ``manifest.json`` with another fingerprint is refused (or, for an evaluation,
rerun), and a sweep job reuses an earlier job's stage only if the fingerprints match
(``srl/pipeline/manifest.py``). So a key left out lets a run mix outputs of different configs, and a key put in
needlessly refuses a harmless change. ``tests/unit/test_fingerprints.py`` classifies every config key.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from srl.core.hashing import config_fingerprint
from srl.pipeline.loop import MODEL_STAGE, stage_names

# Config keys (sections or dotted keys) each stage adds to what the stages before it depend on: a
# stage's fingerprint covers its own inputs and all its predecessors' (M_{t+1} is trained from the
# files of every stage before it).
#   data: the run seed (sub-sections interpolate ${seed}), the data section, and the judge's template
#     alone (EFT examples are written in its format: judge=score_first trains the same M1 as additive5).
#     data.eft_sampling and data.build.eft_attempts act only in eft_mode=paper, and are kept (conservative).
#     With data.build.eft_mode=paper, M0 writes the EFT judgements: then also model and backend.
#   m1: M0 (model), how it is trained (peft, sft) and the Lightning trainer (trainer): accelerator,
#     devices, num_nodes, strategy and its options, precision, gradient clipping, determinism, sanity
#     validation, _target_/_partial_/_convert_ all change what training computes.
#   prompts: prompt_gen; the generation backend (vllm or srl's engine) and iteration.seed, the seed of
#     prompt generation, candidates, judging and evaluation (srl/pipeline/iteration.py, loop.stage_eval).
#   candidates: generation. judgements: the whole judge section (mode, samples, sampling).
#   meta (Meta-Rewarding, only with meta.enabled: off, there is no meta stage and no meta key reaches a stage): the meta section.
#   Semi-online (iteration.sync_every set): no candidates/judgements/pairs stages; M_{t+1}'s stage takes their inputs and sync_every.
#   pairs: the pair rule, and dpo.max_length (which pairs fit) and dpo.ref_batch_size (the reference
#     log-probs stored with the pairs are computed in padded batches). DPO (m2, m3, ...): the dpo section.
STAGE_INPUTS = {
    "data": ("seed", "data", "judge.template"),
    "m1": ("model", "peft", "sft", "trainer"),
    "prompts": ("prompt_gen", "backend", "iteration.seed"),
    "candidates": ("generation",),
    "judgements": ("judge", "external_judge"),
    "meta": ("meta",),
    "pairs": ("dpo.max_length", "dpo.ref_batch_size", "pairs"),
    "dpo": ("dpo",),
}


PAPER_EFT_INPUTS = ("model", "backend")  # added to data's inputs when data.build.eft_mode=paper


# An evaluation stage (eval/m{t}) depends on its model's stages and on these: it samples M_t (M0 is
# the model section itself) with the backend, seeded by iteration.seed, judged per the judge section.
# Later stages do not depend on it (an evaluation is a side branch).
EVAL_INPUTS = ("model", "backend", "iteration.seed", "eval", "judge", "external_judge")


# Keys in the sections above that change no finished stage's outputs:
#   eval.in_loop: whether eval stages exist at all (it changes the list of stages, not what they hold).
#   trainer.log_every_n_steps, enable_progress_bar, enable_model_summary: display and logging only.
# Outside every fingerprint: iteration.num_models (the list of stages), stop_after, reuse_from,
# on_no_pairs (only whether a run stops; a carried M_{t+1} is a copy of M_t), checkpoint_every_n_steps
# and keep_checkpoints (a resumed stage is bit-identical to an unbroken one: tests/integration/test_resume.py);
# logger, sweep (a sweep file's name and question) and Hydra's own node.
#   external_judge.concurrency, max_retries, backoff_s, timeout_s, api_key_env, cache_dir: how an
#     external judge is reached, not what it answers (a cached reply is the reply it gave).
EXCLUDED = ("eval.in_loop", "trainer.log_every_n_steps", "trainer.enable_progress_bar", "trainer.enable_model_summary",
            *(f"external_judge.{k}" for k in ("concurrency", "max_retries", "backoff_s", "timeout_s", "api_key_env", "cache_dir")))


# Keys added after run dirs existed, left out at the value that computes what those runs computed, so
# such a run dir still resumes: judge.by=self (the model judges itself) and external_judge=none ({}).
# data.instructions and data.eft_rows: a user's own SFT data, off (left out) while the path is null.
# prompt_gen's pool/demonstration columns, eval.h2h.prompts' field/split, pairs.extra: at these values, what they read before.
UNCHANGED_AT = {"judge.by": "self", "external_judge": {}, "prompt_gen.pool_split": "train", "prompt_gen.pool_field": None,
                "prompt_gen.demos_path": None, "prompt_gen.demos_split": "train", "prompt_gen.demos_field": None,
                "eval.h2h.prompts.field": None, "eval.h2h.prompts.split": "train", "pairs.extra": []}
# sft.select / dpo.select: checkpoint selection, off (left out) while every_steps is 0.
OFF_AT = {"data.instructions": ("path", None), "data.eft_rows": ("path", None), "sft.select": ("every_steps", 0), "dpo.select": ("every_steps", 0)}


def target_name(value: Any) -> Any:
    """A ``_target_`` inside srl by its object's name alone (``srl.judging.settings.JudgeSettings`` -> ``srl:JudgeSettings``):
    which module holds a class is not part of what a stage computes, so moving code between modules
    keeps every run dir resumable. Targets outside srl (``torch.optim.AdamW``) keep their full path."""
    if isinstance(value, str) and value.startswith("srl."):
        return "srl:" + value.rsplit(".", 1)[-1]
    return value


def _flat(key: str, value: Any, out: dict[str, Any]) -> None:
    if key in UNCHANGED_AT and value == UNCHANGED_AT[key]:
        return
    if key in OFF_AT and (value is None or (isinstance(value, dict) and value.get(OFF_AT[key][0]) == OFF_AT[key][1])):
        return
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flat(f"{key}.{k}", v, out)
    elif not any(key == x or key.startswith(x + ".") for x in EXCLUDED):
        # a plain value, a list, or an empty mapping (backend=hf is {})
        out[key] = target_name(value) if key.endswith("._target_") else value


def stage_inputs(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """For every stage of the run, the resolved config values its fingerprint covers, flat: dotted key -> value."""
    resolved: dict[str, dict[str, Any]] = {}

    def inputs(keys: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in keys:
            if key not in resolved:
                node = OmegaConf.select(cfg, key)
                resolved[key] = {}
                _flat(key, OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node, resolved[key])
            out.update(resolved[key])
        return dict(sorted(out.items()))

    paper_eft = OmegaConf.select(cfg, "data.build.eft_mode") == "paper"
    out, seen = {}, []
    meta = bool(OmegaConf.select(cfg, "meta.enabled", default=False))
    online = OmegaConf.select(cfg, "iteration.sync_every", default=None) is not None
    for stage in stage_names(cfg.iteration.num_models, cfg.eval.in_loop, meta, online):
        if stage.startswith("eval/"):
            out[stage] = inputs(seen + [k for k in EVAL_INPUTS if k not in seen])
            continue
        kind = stage.split("/")[-1]
        kind = "dpo" if MODEL_STAGE.fullmatch(kind) and kind != "m1" else kind  # m2, m3, ...; not "meta"
        added = STAGE_INPUTS[kind] + (PAPER_EFT_INPUTS if kind == "data" and paper_eft else ())
        if online and kind == "dpo":  # semi-online: M_{t+1}'s stage makes the candidates, judgements and pairs itself
            added = (*STAGE_INPUTS["candidates"], *STAGE_INPUTS["judgements"], *STAGE_INPUTS["pairs"], *added, "iteration.sync_every")
        seen += [k for k in added if k not in seen]
        out[stage] = inputs(seen)
    return out


def fingerprints(cfg: DictConfig) -> dict[str, str]:
    """A fingerprint per stage of the run, over every config value that stage depends on (``stage_inputs``)."""
    return {stage: config_fingerprint(values) for stage, values in stage_inputs(cfg).items()}
