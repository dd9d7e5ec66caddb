"""Records that cross stage boundaries, and their JSONL I/O.

Every stage reads the files of the stage before and writes its own (DESIGN.md, rule 5): records are
frozen dataclasses, one JSON object a line. Writes are atomic (temporary name, then rename) so a
crash never leaves a half-written file under the final name; reads validate every line and name
the file, the line and the field when something is wrong (rule 8).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar


class RecordError(ValueError):
    """A record file is malformed; the message names the file, the line and the field."""


@dataclasses.dataclass(frozen=True)
class IFTExample:
    """Instruction fine-tuning example: a first-turn prompt and its best-ranked (rank 0) reply."""

    prompt: str
    response: str
    tree_id: str
    message_id: str


@dataclasses.dataclass(frozen=True)
class EFTExample:
    """Evaluation fine-tuning example: the judge prompt for one reply and the judgement to learn.

    ``judge_prompt`` is the rendered LLM-as-a-Judge prompt (``prompt`` and ``response`` inside the
    judge template); ``target`` is what the judge should write: ``justification`` then the final
    line ``Score: <score>``. The SFT loss covers ``target`` only.
    """

    prompt: str
    response: str
    justification: str
    score: int
    judge_prompt: str
    target: str
    tree_id: str
    message_id: str
    human_rank: int
    num_siblings: int
    mode: str  # "ranked" (score derived from the human ranking) or "paper" (judge-model written)


@dataclasses.dataclass(frozen=True)
class RankedPrompt:
    """A first-turn prompt with two or more human-ranked replies (rank 0 = best), for judge evaluation."""

    prompt: str
    replies: tuple[str, ...]
    ranks: tuple[int, ...]
    tree_id: str
    message_id: str


T = TypeVar("T")


def _check_type(value: Any, annotation: Any) -> bool:
    """Shallow type check of a decoded JSON value against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (tuple, list):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_check_type(v, args[0]) for v in value) if args else isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def record_from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build a record of type ``cls`` from a decoded JSON object; ``where`` prefixes any error."""
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RecordError(f"{where}: unknown field(s) {unknown} for {cls.__name__}")
    kwargs = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING:
                continue
            raise RecordError(f"{where}: missing field '{name}' for {cls.__name__}")
        value = data[name]
        if not _check_type(value, hints[name]):
            raise RecordError(f"{where}: field '{name}' has {type(value).__name__} {value!r:.60}, expected {hints[name]}")
        if typing.get_origin(hints[name]) is tuple:
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, decoded_object)`` for each non-blank line; bad JSON names file and line."""
    path = Path(path)
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def read_jsonl(path: str | os.PathLike, cls: type[T]) -> list[T]:
    """Read a JSONL file of ``cls`` records, validating each line."""
    return [record_from_dict(cls, obj, f"{path}:{lineno}") for lineno, obj in iter_json_lines(path)]


def to_json_line(record: Any) -> str:
    obj = dataclasses.asdict(record) if dataclasses.is_dataclass(record) else record
    return json.dumps(obj, ensure_ascii=False)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Write records (dataclasses or dicts) atomically, one JSON object a line; returns the count."""
    lines = [to_json_line(r) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
