"""The composed config checked before any work starts: types, unknown keys, missing values, ranges.

``validate_config`` runs first in every entry point (DESIGN.md rule 8), so ``dpo.beta=abc`` stops in
a second with ``dpo.beta: got 'abc', a str (allowed: float)`` rather than with a raw TypeError after
a model has loaded. Types come from the code itself, so they cannot drift from it: each node with a
``_target_`` is checked against the target's signature and ``typing.get_type_hints`` (dataclass
fields or function parameters), recursively through nested ``_target_`` nodes; an annotation this
module cannot check is accepted, never guessed. Ranges and choices a type cannot express (``top_p``
in (0, 1], ``num_candidates >= 2``) are the ``RULES`` table below, keyed by the config's dotted
keys. Resolving a ``_target_`` imports its module; nothing is instantiated, no model is loaded.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import importlib.util
import os
import re
from typing import Any

from omegaconf import DictConfig

from srl.config.types import MISSING, UNRESOLVED, leaves, plain_values, walk
from srl.training.adapters import QUANT_MISSING


class ConfigError(ValueError):
    """Every problem found in a config, one ``key: problem (allowed: ...)`` line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"invalid config ({len(problems)} problem{'s' * (len(problems) != 1)}):\n" + "\n".join(f"  {p}" for p in problems))


@dataclasses.dataclass(frozen=True)
class Rule:
    """A value's range (``lo``/``hi``, open ends as flagged) or ``choices`` (a tuple, or ``"module:NAME"``
    read from the code); ``None`` passes (it means "the default"), values of ``also`` types pass unchecked."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    choices: tuple[str, ...] | str | None = None
    also: tuple[type, ...] = ()

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self._choices()))
        kind = "an int" if self.integer else "a number"
        if self.lo is not None and self.hi is not None:
            return f"{kind} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{kind} {'>' if self.lo_open else '>='} {self.lo:g}"
        return kind if self.hi is None else f"{kind} {'<' if self.hi_open else '<='} {self.hi:g}"

    def _choices(self) -> tuple[Any, ...]:
        if isinstance(self.choices, str):  # "srl.training.losses:PREFERENCE_LOSSES": the code's own list
            module, name = self.choices.split(":")
            return tuple(getattr(importlib.import_module(module), name))
        return tuple(self.choices or ())

    def ok(self, value: Any) -> bool:
        if value is None or isinstance(value, self.also):
            return True
        if self.choices is not None:
            return value in self._choices()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.integer and not isinstance(value, int)):
            return False
        low = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        return low and (self.hi is None or (value < self.hi if self.hi_open else value <= self.hi))


POSITIVE, COUNT, NONNEG = Rule(lo=0, lo_open=True), Rule(lo=1, integer=True), Rule(lo=0)


FRACTION, DROPOUT, HALF = Rule(0, 1), Rule(0, 1, hi_open=True), Rule(0, 0.5, hi_open=True)


# Ranges and choices, by dotted key (fnmatch patterns: ``*`` spans dots). Types come from the code.
RULES: dict[str, Rule] = {
    "seed": Rule(integer=True),
    "model.dtype": Rule(choices="srl.models.loading:DTYPES"),
    "model.*_size": COUNT, "model.num_*": COUNT, "model.max_position_embeddings": COUNT,  # the tiny model's shape
    "peft.method": Rule(choices="srl.training.adapters:METHODS"), "peft.quantization": Rule(choices="srl.training.adapters:QUANTIZATIONS"),
    "peft.save": Rule(choices="srl.training.adapters:SAVE_MODES"), "peft.quant_type": Rule(choices=("nf4", "fp4")),
    "peft.compute_dtype": Rule(choices="srl.models.loading:DTYPES"), "peft.r": COUNT, "peft.alpha": POSITIVE, "peft.dropout": DROPOUT,
    "data.build.heldout_fraction": DROPOUT, "data.build.eft_attempts": COUNT, "data.build.eft_mode": Rule(choices=("ranked", "paper")),
    "*sampling.temperature": NONNEG, "*sampling.top_p": Rule(0, 1, lo_open=True),  # temperature 0: greedy
    "*sampling.max_new_tokens": COUNT, "*sampling.batch_size": COUNT, "*sampling.max_batch_tokens": COUNT,
    "judge.num_samples": COUNT, "judge.mode": Rule(choices="srl.judging.settings:JUDGE_MODES"), "judge.by": Rule(choices="srl.judging.settings:JUDGE_BY"),
    "external_judge.concurrency": COUNT, "external_judge.max_retries": NONNEG, "external_judge.timeout_s": POSITIVE,
    "external_judge.backoff_s": NONNEG, "external_judge.batch_size": COUNT, "external_judge.max_length": COUNT,
    "pairs.rule": Rule(choices="srl.training.pairs:RULES"), "pairs.min_margin": NONNEG, "pairs.length_tier": HALF,
    "generation.num_candidates": Rule(lo=2, integer=True),  # a pair needs two replies
    "prompt_gen.num_prompts": COUNT, "prompt_gen.max_attempts": COUNT, "prompt_gen.source": Rule(choices=("generate", "pool")),
    "prompt_gen.num_human_shots": COUNT, "prompt_gen.num_model_shots": NONNEG,  # the first prompts have human demonstrations only
    "prompt_gen.filters.min_words": NONNEG, "prompt_gen.filters.max_words": COUNT, "prompt_gen.filters.max_similarity": FRACTION,
    "sft.*batch_size": COUNT, "sft.max_length": COUNT, "sft.max_epochs": COUNT, "sft.dropout": DROPOUT, "sft.max_*_examples": NONNEG,
    "dpo.*batch_size": COUNT, "dpo.max_length": COUNT, "dpo.max_epochs": COUNT, "dpo.dropout": DROPOUT,  # *: micro_, ref_
    "dpo.beta": POSITIVE, "dpo.label_smoothing": HALF, "dpo.nll_alpha": NONNEG, "dpo.loss": Rule(choices="srl.training.losses:PREFERENCE_LOSSES"),
    "*.optimizer.lr": POSITIVE, "*.optimizer.weight_decay": NONNEG, "*.optimizer.eps": POSITIVE,
    "*.scheduler.final_lr": NONNEG, "*.scheduler.warmup_steps": NONNEG,
    "trainer.devices": Rule(lo=1, integer=True, also=(str, list)), "trainer.num_nodes": COUNT,  # devices: or "auto", a list
    "trainer.gradient_clip_val": NONNEG, "trainer.log_every_n_steps": COUNT,
    "backend.weights": Rule(choices="srl.generation.weights:WEIGHTS"), "backend.tensor_parallel_size": COUNT, "backend.gpu_memory_utilization": Rule(0, 1, lo_open=True), "backend.max_model_len": COUNT,
    "iteration.num_models": COUNT, "iteration.checkpoint_every_n_steps": NONNEG, "iteration.on_no_pairs": Rule(choices=("error", "carry")),
    "eval.rm.num_samples": COUNT, "eval.rm.max_prompts": COUNT, "eval.h2h.bootstrap_samples": COUNT,
    "eval.h2h.against": Rule(choices=("start", "previous")), "eval.h2h.prompts.kind": Rule(choices="srl.data.prompt_sets:KINDS"),
    "eval.h2h.prompts.limit": COUNT, "eval.h2h.protocol": Rule(choices="srl.evaluation.head_to_head:PROTOCOLS"),
    "eval.h2h.num_samples": COUNT, "eval.h2h.tie_margin": NONNEG, "eval.bootstrap_samples": COUNT,
    "eval.implicit.against": Rule(choices=("start", "previous")), "eval.implicit.tie_tolerance": NONNEG,
    "eval.implicit.max_length": COUNT, "eval.implicit.batch_size": COUNT, "eval.preference_sets.*.limit": COUNT, "pairs.extra.*.limit": COUNT,
    "data.instructions.format": Rule(choices="srl.data.instructions:FORMATS"), "data.instructions.heldout_fraction": Rule(0, 1, hi_open=True),
    "data.instructions.limit": COUNT, "data.eft_rows.limit": COUNT, "*.select.every_steps": NONNEG, "*.select.tie_margin": NONNEG,
    "*.select.prompts.limit": COUNT, "*.select.num_samples": COUNT,
}


def validate_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` listing every problem of ``cfg`` (Hydra's own ``hydra`` node is skipped)."""
    problems: list[str] = []
    plain = {str(k): plain_values(cfg, str(k), k, problems) for k in cfg if k != "hydra"}
    walk(plain, "", problems)
    bad = {p.split(":", 1)[0] for p in problems}
    for key, value in leaves(plain, ""):
        dotted = re.sub(r"\[(\d+)\]", r".\1", key)  # list items as RULES name them: pairs.extra[0].limit -> pairs.extra.0.limit
        rule = next((r for pattern, r in RULES.items() if fnmatch.fnmatchcase(dotted, pattern)), None)
        if rule is not None and key not in bad and value is not MISSING and value is not UNRESOLVED and not rule.ok(value):
            problems.append(f"{key}: got {value!r} (allowed: {rule.allowed()})")
    problems += [p for p in _cross_rules(plain) if p.split(":", 1)[0] not in bad]
    if problems:
        raise ConfigError(problems)


def _eval_rules(plain: dict) -> list[str]:
    """The head-to-head judge must exist when eval/m1 runs."""
    out = []
    ev = plain.get("eval") if isinstance(plain.get("eval"), dict) else {}
    h2h = ev.get("h2h") if isinstance(ev.get("h2h"), dict) else {}
    judge = h2h.get("judge")
    if isinstance(judge, str) and judge[:1] in "mM" and judge[1:].isdigit() and int(judge[1:]) > 1:
        out.append(f"eval.h2h.judge: got {judge!r}; the first head-to-head (eval/m1) runs before M{judge[1:]} exists (allowed: m0, m1, "
                   "null, or a model folder / Hub id / 'embedded')")
    return out


def _judge_rules(plain: dict) -> list[str]:
    """An external judge is chosen and used together, and only where its kind can judge."""
    section = lambda name: plain.get(name) if isinstance(plain.get(name), dict) else {}  # noqa: E731
    judge, ext, ev = section("judge"), section("external_judge"), section("eval")
    h2h = ev.get("h2h") if isinstance(ev.get("h2h"), dict) else {}
    target = ext.get("_target_")
    kind = None
    if isinstance(target, str):
        module, _, name = target.rpartition(".")
        try:
            kind = getattr(getattr(importlib.import_module(module), name), "kind", None)
        except (ImportError, AttributeError):
            pass  # the type check names a target that does not import
    by_loop, by_h2h = judge.get("by") == "external", h2h.get("judge") == "external"
    selects = {s: section(s).get("select") if isinstance(section(s).get("select"), dict) else {} for s in ("sft", "dpo")}
    on = {s: isinstance(v.get("every_steps"), int) and v.get("every_steps") > 0 for s, v in selects.items()}
    by_select = any(on[s] and v.get("judge") == "external" for s, v in selects.items())
    out = []
    for s, v in selects.items():  # a fixed judge that exists when the stage runs: M0 for SFT, M0/M1 for the first DPO stage (M2)
        name = v.get("judge")
        if on[s] and isinstance(name, str) and name[:1] in "mM" and name[1:].isdigit() and int(name[1:]) >= (1 if s == "sft" else 2):
            out.append(f"{s}.select.judge: got {name!r}; the stage trains M{1 if s == 'sft' else 2} before M{name[1:]} exists "
                       f"(allowed: {'m0' if s == 'sft' else 'm0, m1'}, external, or a model folder / Hub id)")
    strategy = section("trainer").get("strategy")
    named = str(strategy.get("name") or strategy.get("_target_") or "") if isinstance(strategy, dict) else str(strategy or "")
    sharded = "fsdp" in named.lower() or ("deepspeed" in named.lower() and isinstance(strategy, dict) and strategy.get("stage") == 3)
    if any(on.values()) and sharded:
        out.append(f"trainer.strategy: got {named!r} (sharded parameters); checkpoint selection (sft/dpo.select) snapshots the weights every few steps, "
                   "which a sharded strategy would have to gather each time (allowed: a replicated strategy, or select.every_steps=0)")
    for used, key in ((by_loop, "judge.by"), (by_h2h, "eval.h2h.judge")):
        if used and not target:
            out.append(f"{key}: got 'external' but external_judge is none (allowed: choose external_judge=reward_model | openai)")
    if target and not (by_loop or by_h2h or by_select):
        out.append(f"external_judge: {target} judges nowhere (allowed: set judge.by=external and/or eval.h2h.judge=external "
                   "(or a select.judge), or external_judge=none)")
    if kind == "score" and by_loop and judge.get("mode") not in (None, "sample"):  # None: the dataclass default, sample
        out.append(f"judge.mode: got {judge.get('mode')!r}; a reward model scores replies, it writes no verdict or score distribution (allowed: sample)")
    if kind == "score" and by_h2h and h2h.get("protocol", "pairwise") != "pointwise":
        out.append(f"eval.h2h.protocol: got {h2h.get('protocol')!r}; a reward model referee scores each reply (allowed: pointwise)")
    return out


def _hub_rules(plain: dict) -> list[str]:
    """Pushing models needs a repo id and a network (refused offline, before the run rather than after it)."""
    hub = plain.get("hub") if isinstance(plain.get("hub"), dict) else {}
    if hub.get("push") is not True:
        return []
    if not hub.get("repo_id"):
        return ["hub.repo_id: got None; hub.push=true uploads the models to a Hub repo (allowed: user/name)"]
    offline = next((v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")), None)
    if offline:
        return [f"hub.push: got True, but {offline}={os.environ[offline]}: no network to push to (allowed: false; push the saved "
                f"folders later with `huggingface-cli upload {hub['repo_id']} <run dir>/m<t>/model m<t>`)"]
    return []


def _cross_rules(plain: dict) -> list[str]:
    """Rules over several keys: a global batch splits into micro-batches on every process; a
    quantized base needs bitsandbytes (an optional dependency, ``srl[quant]``)."""
    out = []
    peft = plain.get("peft") if isinstance(plain.get("peft"), dict) else {}
    if peft.get("quantization") not in (None, "none") and importlib.util.find_spec("bitsandbytes") is None:
        out.append("peft.quantization: " + QUANT_MISSING.format(q=peft["quantization"]))
    trainer = plain.get("trainer") if isinstance(plain.get("trainer"), dict) else {}
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    world = devices * nodes if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (devices, nodes)) else 1
    out += _eval_rules(plain) + _judge_rules(plain) + _hub_rules(plain)
    for section in ("sft", "dpo"):
        s = plain.get(section) if isinstance(plain.get(section), dict) else {}
        batch, micro = s.get("batch_size"), s.get("micro_batch_size")
        if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (batch, micro)) and batch % (micro * world):
            split = f"{section}.micro_batch_size x processes ({micro} x {world})" if world > 1 else f"{section}.micro_batch_size ({micro})"
            out.append(f"{section}.batch_size: got {batch}, not a multiple of {split} (allowed: a multiple of {micro * world})")
    return out
