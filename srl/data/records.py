"""Records that cross stage boundaries, and their JSONL I/O.

Every stage reads the files of the stage before and writes its own (DESIGN.md, rule 5): records are
frozen dataclasses, one JSON object a line. Writes are atomic (temporary name, then rename) so a
crash never leaves a half-written file under the final name; reads validate every line and name
the file, the line and the field when something is wrong (rule 8).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

from srl.core.rundir import atomic_write_text  # noqa: F401  (part of this module's API: records are written through it)


class RecordError(ValueError):
    """A record file is malformed; the message names the file, the line and the field."""


@dataclasses.dataclass(frozen=True)
class IFTExample:
    """Instruction fine-tuning example: a first-turn prompt and its reply (oasst1: the best-ranked, rank 0).

    ``turns`` holds the whole conversation, ``(role, content)`` with role system/user/assistant, when
    it is more than one plain user -> assistant exchange (a user's ``messages`` data,
    ``srl.data.instructions``); then SFT trains on every assistant turn, or on the last one only when
    ``train_last_only`` (a prompt/completion row with a conversational prompt). ``prompt`` and
    ``response`` are always the first user message and the first reply.
    """

    prompt: str
    response: str
    tree_id: str
    message_id: str
    turns: tuple[tuple[str, str], ...] = ()
    train_last_only: bool = False


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


def _tuples(value: Any) -> Any:
    """JSON lists as tuples, nested too (records are frozen, their sequences hashable)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


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
            value = _tuples(value)
        kwargs[name] = value
    return cls(**kwargs)


def _not_utf8(path: str | os.PathLike, data: bytes, exc: UnicodeDecodeError, first_line: int = 1, base: int = 0) -> RecordError:
    """The error for bytes ``data`` (starting at line ``first_line``, byte ``base`` of ``path``) that are not UTF-8."""
    line = first_line + data.count(b"\n", 0, exc.start)
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return RecordError(
        f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}, byte offset {base + exc.start} "
        f"of the file); save the file as UTF-8"
    )


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's bytes; a ``.gz`` file decompressed (one that is not gzip raises ``RecordError``)."""
    data = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            raise RecordError(f"{path}: not a readable gzip file ({exc})") from None
    return data


def read_text(path: str | os.PathLike) -> str:
    """The whole file (``.gz``: decompressed) as UTF-8 text; bytes that are not UTF-8 raise
    ``RecordError`` naming file, line and byte offset."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, data, exc) from None


def loads_json(text: str, path: str | os.PathLike) -> Any:
    """``json.loads`` of a whole file's ``text``; bad JSON names the file, line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, decoded_object)`` for each non-blank line (a ``.gz`` file decompressed;
    offsets then count decompressed bytes); bad JSON or bytes that are not UTF-8 name the file and the line."""
    path = Path(path)
    offset = 0  # bytes before this line, for the not-UTF-8 message
    with (io.BytesIO(read_bytes(path)) if path.name.endswith(".gz") else path.open("rb")) as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, raw, exc, lineno, offset) from None
            offset += len(raw)
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


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Write records (dataclasses or dicts) atomically, one JSON object a line; returns the count."""
    lines = [to_json_line(r) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


@dataclasses.dataclass(frozen=True)
class PromptAttempt:
    """One self-instruction attempt: the parsed prompt, and why it was rejected (None: accepted)."""

    attempt: int
    text: str
    rejected: str | None


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    """A prompt for the iteration: generated by few-shot prompting, or read from a pool file."""

    prompt_id: str
    prompt: str
    source: str


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One of the N sampled replies of the current model to a prompt."""

    prompt_id: str
    candidate: int
    prompt: str
    response: str
    num_tokens: int
    finished: bool


@dataclasses.dataclass(frozen=True)
class Judgement:
    """K judge samples for one candidate: raw texts, parsed scores (None: unparsable), their mean."""

    prompt_id: str
    candidate: int
    texts: tuple[str, ...]
    scores: tuple[float | None, ...]
    score: float | None


@dataclasses.dataclass(frozen=True)
class MetaJudgement:
    """The meta-judge's comparisons of one candidate's K judgements (Meta-Rewarding, ``srl.judging.meta``):
    ``orders[i] = (first, second)`` judgement indices shown as A and B, ``texts[i]`` its reply and
    ``verdicts[i]`` the parsed ``A`` | ``B`` | ``tie`` (None: unparsable); verdict-first, ``first_probs[i]`` the
    probability of A (the first-shown judgement) against B."""

    prompt_id: str
    candidate: int
    orders: tuple[tuple[int, int], ...]
    texts: tuple[str, ...]
    verdicts: tuple[str | None, ...]
    first_probs: tuple[float, ...] = ()  # meta.mode=verdict_first: P(A) per order, renormalised over A and B


@dataclasses.dataclass(frozen=True)
class Pair:
    """A preference pair with the reference model's summed log-probs of each reply (for DPO).

    The log-probs are None under LoRA (``conf/peft``): DPO then computes them on the fly with the
    adapter switched off, inside the training strategy (the base may be sharded or quantized).
    """

    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_score: float | None  # the judge's; None for a given pair (source other than "self")
    rejected_score: float | None
    ref_chosen_logp: float | None
    ref_rejected_logp: float | None
    chosen_finished: bool = True  # False: cut at max_new_tokens (no end-of-turn is trained after it)
    rejected_finished: bool = True
    source: str = "self"  # "self": made from the iteration's judged candidates; else the name of a pairs.extra set
