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

import collections.abc
import dataclasses
import difflib
import fnmatch
import functools
import importlib
import inspect
import os
import sys
import types
import typing
from typing import Any, Callable, Literal, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}
_MISSING, _UNRESOLVED = object(), object()  # a ``???`` value; an interpolation that failed (reported)


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
        if isinstance(self.choices, str):  # "srl.losses:PREFERENCE_LOSSES": the code's own list
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
    "model.dtype": Rule(choices="srl.models:DTYPES"),
    "model.*_size": COUNT, "model.num_*": COUNT, "model.max_position_embeddings": COUNT,  # the tiny model's shape
    "peft.method": Rule(choices="srl.adapters:METHODS"), "peft.quantization": Rule(choices="srl.adapters:QUANTIZATIONS"),
    "peft.save": Rule(choices="srl.adapters:SAVE_MODES"), "peft.quant_type": Rule(choices=("nf4", "fp4")),
    "peft.compute_dtype": Rule(choices="srl.models:DTYPES"), "peft.r": COUNT, "peft.alpha": POSITIVE, "peft.dropout": DROPOUT,
    "data.build.heldout_fraction": DROPOUT, "data.build.eft_attempts": COUNT, "data.build.eft_mode": Rule(choices=("ranked", "paper")),
    "*sampling.temperature": NONNEG, "*sampling.top_p": Rule(0, 1, lo_open=True),  # temperature 0: greedy
    "*sampling.max_new_tokens": COUNT, "*sampling.batch_size": COUNT, "*sampling.max_batch_tokens": COUNT,
    "judge.num_samples": COUNT, "judge.mode": Rule(choices="srl.aift:JUDGE_MODES"),
    "pairs.rule": Rule(choices="srl.pairs:RULES"), "pairs.min_margin": NONNEG, "pairs.length_tier": HALF,
    "generation.num_candidates": Rule(lo=2, integer=True),  # a pair needs two replies
    "prompt_gen.num_prompts": COUNT, "prompt_gen.max_attempts": COUNT, "prompt_gen.source": Rule(choices=("generate", "pool")),
    "prompt_gen.num_human_shots": COUNT, "prompt_gen.num_model_shots": NONNEG,  # the first prompts have human demonstrations only
    "prompt_gen.filters.min_words": NONNEG, "prompt_gen.filters.max_words": COUNT, "prompt_gen.filters.max_similarity": FRACTION,
    "sft.*batch_size": COUNT, "sft.max_length": COUNT, "sft.max_epochs": COUNT, "sft.dropout": DROPOUT, "sft.max_*_examples": NONNEG,
    "dpo.*batch_size": COUNT, "dpo.max_length": COUNT, "dpo.max_epochs": COUNT, "dpo.dropout": DROPOUT,  # *: micro_, ref_
    "dpo.beta": POSITIVE, "dpo.label_smoothing": HALF, "dpo.nll_alpha": NONNEG, "dpo.loss": Rule(choices="srl.losses:PREFERENCE_LOSSES"),
    "*.optimizer.lr": POSITIVE, "*.optimizer.weight_decay": NONNEG, "*.optimizer.eps": POSITIVE,
    "*.scheduler.final_lr": NONNEG, "*.scheduler.warmup_steps": NONNEG,
    "trainer.devices": Rule(lo=1, integer=True, also=(str, list)), "trainer.num_nodes": COUNT,  # devices: or "auto", a list
    "trainer.gradient_clip_val": NONNEG, "trainer.log_every_n_steps": COUNT,
    "backend.tensor_parallel_size": COUNT, "backend.gpu_memory_utilization": Rule(0, 1, lo_open=True), "backend.max_model_len": COUNT,
    "iteration.num_models": COUNT, "iteration.checkpoint_every_n_steps": NONNEG, "iteration.on_no_pairs": Rule(choices=("error", "carry")),
    "eval.rm.num_samples": COUNT, "eval.rm.max_prompts": COUNT, "eval.h2h.bootstrap_samples": COUNT,
    "eval.h2h.against": Rule(choices=("start", "previous")), "eval.h2h.prompts.kind": Rule(choices="srl.evalsets:KINDS"),
    "eval.h2h.prompts.limit": COUNT,
}


def validate_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` listing every problem of ``cfg`` (Hydra's own ``hydra`` node is skipped)."""
    problems: list[str] = []
    plain = {str(k): _plain(cfg, str(k), k, problems) for k in cfg if k != "hydra"}
    _walk(plain, "", problems)
    bad = {p.split(":", 1)[0] for p in problems}
    for key, value in _leaves(plain, ""):
        rule = next((r for pattern, r in RULES.items() if fnmatch.fnmatchcase(key, pattern)), None)
        if rule is not None and key not in bad and value is not _MISSING and value is not _UNRESOLVED and not rule.ok(value):
            problems.append(f"{key}: got {value!r} (allowed: {rule.allowed()})")
    problems += [p for p in _cross_rules(plain) if p.split(":", 1)[0] not in bad]
    if problems:
        raise ConfigError(problems)


def _plain(parent: Any, key: str, k: Any, problems: list[str]) -> Any:
    """``parent[k]`` resolved into plain values, ``???`` as ``_MISSING``; failed interpolations are reported."""
    if OmegaConf.is_missing(parent, k):
        return _MISSING
    try:
        node = parent[k]
    except Exception as e:  # noqa: BLE001 - any resolver error is the config's problem, named by key
        problems.append(f"{key}: interpolation {parent._get_node(k)._value()!r} failed: {str(e).splitlines()[0]}")
        return _UNRESOLVED
    if isinstance(node, DictConfig):
        return {str(c): _plain(node, f"{key}.{c}", c, problems) for c in node}
    if isinstance(node, ListConfig):
        return [_plain(node, f"{key}[{i}]", i, problems) for i in range(len(node))]
    return node


def _leaves(value: Any, key: str) -> typing.Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{key}.{k}" if key else k)
    else:
        yield key, value


def _walk(value: Any, key: str, problems: list[str]) -> None:
    """Check every ``_target_`` node under ``value``, and report ``???`` left outside them."""
    if isinstance(value, dict) and "_target_" in value:
        _check_node(value, key, problems)
    elif isinstance(value, dict):
        for k, v in value.items():
            _walk(v, f"{key}.{k}" if key else k, problems)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _walk(v, f"{key}[{i}]", problems)
    elif value is _MISSING:
        problems.append(f"{key}: no value given (???) (allowed: a value on the command line, {key}=...)")


PARTIAL = functools.partial  # what a ``_partial_: true`` node makes


def _check_node(node: dict, key: str, problems: list[str]) -> Any:
    """Check a ``_target_`` node's keys against its target; return the type it makes (None: unknown)."""
    from hydra._internal.utils import _locate  # what instantiate uses (hydra.utils.get_object also logs an error)

    where = f"{key}._target_" if key else "_target_"
    try:
        target = _locate(node["_target_"])
    except Exception as e:  # noqa: BLE001
        why = " ".join(str(e).split()[:12])
        problems.append(f"{where}: cannot import {node['_target_']!r}: {why} (allowed: a dotted path to a class or function)")
        return None
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return None
    hints = _hints(target)
    partial = node.get("_partial_") is True
    open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    names = [n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    for k, value in node.items():
        sub = f"{key}.{k}" if key else k
        if k in HYDRA_KEYS or value is _UNRESOLVED:
            continue
        if k not in params or params[k].kind is inspect.Parameter.VAR_POSITIONAL:
            if open_kwargs:
                _walk(value, sub, problems)
                continue
            near = difflib.get_close_matches(k, names, n=1)
            problems.append(f"{sub}: unknown key for {node['_target_']}{f'; did you mean {near[0]}?' if near else ''} (allowed: {', '.join(names)})")
            continue
        hint = hints.get(k, Any)
        if value is _MISSING:
            problems.append(f"{sub}: no value given (???) (allowed: {_describe(hint)}; set {sub}=...)")
        elif not _fits(value, hint, sub, problems):
            got = "a node without _target_" if isinstance(value, dict) else "null" if value is None else f"{value!r}, a {type(value).__name__}"
            problems.append(f"{sub}: got {got} (allowed: {_describe(hint)})")
    for n, p in params.items():
        if not partial and n not in node and p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            sub = f"{key}.{n}" if key else n
            problems.append(f"{sub}: required by {node['_target_']}, no value given (allowed: {_describe(hints.get(n, Any))})")
    if partial:
        return PARTIAL
    if isinstance(target, type):
        return target
    made = hints.get("return")
    return made if isinstance(made, type) else None


def _hints(target: Any) -> dict[str, Any]:
    """Evaluated annotations of a function, a dataclass's fields or a class's ``__init__``; those that
    do not evaluate (names imported only for type checkers) are left out, i.e. unchecked."""
    obj = target if not isinstance(target, type) or dataclasses.is_dataclass(target) else target.__init__
    try:
        return typing.get_type_hints(obj)
    except Exception:  # noqa: BLE001 - one unresolvable name: evaluate the others one by one
        module = vars(sys.modules.get(getattr(target, "__module__", ""), types.ModuleType("none")))
        hints = {name: _evaluate(ann, module) for name, ann in getattr(obj, "__annotations__", {}).items()}
        return {name: hint for name, hint in hints.items() if hint is not None}


def _evaluate(annotation: Any, module: dict) -> Any:
    try:
        return eval(annotation, module) if isinstance(annotation, str) else annotation  # noqa: S307 - the code's own annotation
    except Exception:  # noqa: BLE001
        return None


_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence, collections.abc.Iterable, collections.abc.Collection)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _fits(value: Any, hint: Any, key: str, problems: list[str]) -> bool:
    """Whether ``value`` may be given where ``hint`` is annotated; nested nodes report their own problems."""
    if isinstance(value, dict) and "_target_" in value:
        made = _check_node(value, key, problems)
        return made is None or _makes(made, hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        _walk(value, key, problems)
        return True
    if origin in (Union, types.UnionType):
        for member in args:  # the first member it fits; problems inside it are that member's
            inner: list[str] = []
            if _fits(value, member, key, inner):
                problems += inner
                return True
        return False
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is collections.abc.Callable or hint is Callable:
        return False  # a plain value is not callable: a ``_partial_`` node is
    if origin in _SEQUENCES or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a, f"{key}[{i}]", problems) for i, (v, a) in enumerate(zip(value, args)))
        return not args or all(_fits(v, args[0], f"{key}[{i}]", problems) for i, v in enumerate(value))
    if origin in _MAPPINGS or hint is dict:
        return isinstance(value, dict) and (len(args) < 2 or all(_fits(v, args[1], key, problems) for v in value.values()))
    if isinstance(hint, type) and origin is None:
        if isinstance(value, str) and issubclass(hint, os.PathLike):
            return True  # a path given as text
        return isinstance(value, hint)
    return True  # an annotation this module cannot check: accepted


def _makes(made: Any, hint: Any) -> bool:
    """Whether what a node makes (a class, or ``PARTIAL``) fits ``hint``; unknown annotations fit."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_makes(made, a) for a in typing.get_args(hint))
    if origin is collections.abc.Callable or hint is Callable:
        return made is PARTIAL or any("__call__" in vars(k) for k in made.__mro__)
    check = origin if isinstance(origin, type) else hint
    if not isinstance(check, type) or hint is Any:
        return True
    try:
        return issubclass(made, check)
    except TypeError:
        return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return "any value"
    if hint is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is collections.abc.Callable or hint is Callable:
        return "a _partial_ node (_target_ and _partial_: true)"
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    if origin in _SEQUENCES:
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin in _MAPPINGS:
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return f"a node with _target_: {hint.__module__}.{hint.__qualname__}"
    return getattr(hint, "__name__", str(hint))


def _cross_rules(plain: dict) -> list[str]:
    """Rules over several keys: a global batch splits into micro-batches on every process."""
    out = []
    trainer = plain.get("trainer") if isinstance(plain.get("trainer"), dict) else {}
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    world = devices * nodes if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (devices, nodes)) else 1
    for section in ("sft", "dpo"):
        s = plain.get(section) if isinstance(plain.get(section), dict) else {}
        batch, micro = s.get("batch_size"), s.get("micro_batch_size")
        if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (batch, micro)) and batch % (micro * world):
            split = f"{section}.micro_batch_size x processes ({micro} x {world})" if world > 1 else f"{section}.micro_batch_size ({micro})"
            out.append(f"{section}.batch_size: got {batch}, not a multiple of {split} (allowed: a multiple of {micro * world})")
    return out
