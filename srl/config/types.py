"""Type checks of config values against the annotations of the classes they build: a node with a
``_target_`` is checked against its target's signature, each value against its type hint."""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import inspect
import os
import sys
import types
import typing
from typing import Any, Callable, Literal, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

MISSING, UNRESOLVED = object(), object()  # a ``???`` value; an interpolation that failed (reported)
HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}


def plain_values(parent: Any, key: str, k: Any, problems: list[str]) -> Any:
    """``parent[k]`` resolved into plain values, ``???`` as ``MISSING``; failed interpolations are reported."""
    if OmegaConf.is_missing(parent, k):
        return MISSING
    try:
        node = parent[k]
    except Exception as e:  # noqa: BLE001 - any resolver error is the config's problem, named by key
        problems.append(f"{key}: interpolation {parent._get_node(k)._value()!r} failed: {str(e).splitlines()[0]}")
        return UNRESOLVED
    if isinstance(node, DictConfig):
        return {str(c): plain_values(node, f"{key}.{c}", c, problems) for c in node}
    if isinstance(node, ListConfig):
        return [plain_values(node, f"{key}[{i}]", i, problems) for i in range(len(node))]
    return node


def leaves(value: Any, key: str) -> typing.Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, f"{key}.{k}" if key else k)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):  # a list of nodes (eval.preference_sets, pairs.extra): "key[0].limit"
            yield from leaves(v, f"{key}[{i}]")
    else:
        yield key, value


def walk(value: Any, key: str, problems: list[str]) -> None:
    """Check every ``_target_`` node under ``value``, and report ``???`` left outside them."""
    if isinstance(value, dict) and "_target_" in value:
        _check_node(value, key, problems)
    elif isinstance(value, dict):
        for k, v in value.items():
            walk(v, f"{key}.{k}" if key else k, problems)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            walk(v, f"{key}[{i}]", problems)
    elif value is MISSING:
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
        if k in HYDRA_KEYS or value is UNRESOLVED:
            continue
        if k not in params or params[k].kind is inspect.Parameter.VAR_POSITIONAL:
            if open_kwargs:
                walk(value, sub, problems)
                continue
            near = difflib.get_close_matches(k, names, n=1)
            problems.append(f"{sub}: unknown key for {node['_target_']}{f'; did you mean {near[0]}?' if near else ''} (allowed: {', '.join(names)})")
            continue
        hint = hints.get(k, Any)
        if value is MISSING:
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
    if isinstance(value, dict) and isinstance(hint, type) and dataclasses.is_dataclass(hint):
        # a plain mapping where a settings dataclass is annotated (the owner builds it: PairSettings.extra): its fields are checked
        made = _check_node({**value, "_target_": f"{hint.__module__}.{hint.__qualname__}"}, key, problems)
        return made is None or _makes(made, hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        walk(value, key, problems)
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
