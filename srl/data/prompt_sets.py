"""Evaluation prompt sets, reply files and the AlpacaEval export (paper Sec. 4.2, head-to-head).

Prompt sets (``eval.h2h.prompts.kind``), each read into ``PromptRecord`` with a stable id:

- ``heldout``: the first-turn prompts of the held-out oasst1 trees (``data/ift_heldout.jsonl``),
  so evaluation prompts never come from a training tree;
- ``self_instruct``: Self-Instruct's user-oriented format, one task a line with ``instruction`` and
  ``instances[{input, output}]``; the prompt is the instruction, then a blank line and the first
  instance's input when it is not empty (the way those tasks are posed to a model);
- ``mt_bench``: MT-Bench questions (``question_id``, ``turns``); the first turn only (srl's loop is
  single-turn);
- ``jsonl``: any prompt column (``field``; null: ``prompt``, or ``instruction`` and optional
  ``input``) of a JSONL/JSON/Parquet file, a ``save_to_disk`` folder or a Hub data set (``split``);
  a row's ``id`` names it, else its line or row.

Reply files hold ``Candidate`` records (``replies.jsonl``, written by srl); reference replies may
also come from an AlpacaEval-format file (a JSON list or JSONL of ``instruction``/``output``),
matched to prompts by text. The export writes AlpacaEval's model-outputs format: a JSON list of
``{"instruction", "output", "generator"}``.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any, Sequence

from srl.data.tables import read_rows
from srl.data.records import (
    Candidate,
    IFTExample,
    PromptRecord,
    RecordError,
    atomic_write_text,
    iter_json_lines,
    loads_json,
    read_jsonl,
    read_text,
)

KINDS = ("heldout", "self_instruct", "mt_bench", "jsonl")


@dataclasses.dataclass
class PromptSetSettings:
    """``eval.h2h.prompts``: which prompts, from which file, and a seeded subset of ``limit``."""

    kind: str = "heldout"
    path: str | None = None
    limit: int | None = None
    seed: int = 0
    field: str | None = None  # kind=jsonl: the prompt column (null: prompt, or instruction + input)
    split: str = "train"  # kind=jsonl from a Hub data set or a saved DatasetDict

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"eval prompt set kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.kind != "heldout" and not self.path:
            raise ValueError(f"eval prompt set kind={self.kind!r} needs a path (e.g. ../shared/data/prompts/...)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"eval prompt set limit must be >= 1 or null, got {self.limit}")


def _field(row: Any, name: str, where: str, kind: type = str) -> Any:
    if not isinstance(row, dict) or name not in row:
        raise RecordError(f"{where}: missing field '{name}'")
    if not isinstance(row[name], kind):
        raise RecordError(f"{where}: field '{name}' should be {kind.__name__}, got {type(row[name]).__name__}")
    return row[name]


def _with_input(instruction: str, extra: Any) -> str:
    return f"{instruction.strip()}\n\n{extra.strip()}" if isinstance(extra, str) and extra.strip() else instruction.strip()


def read_self_instruct(path: str | Path) -> list[PromptRecord]:
    out = []
    for lineno, row in iter_json_lines(path):
        where = f"{path}:{lineno}"
        instruction = _field(row, "instruction", where)
        instances = row.get("instances") or [{}]
        if not isinstance(instances, list) or not isinstance(instances[0], dict):
            raise RecordError(f"{where}: field 'instances' should be a list of objects")
        out.append(PromptRecord(str(row.get("id", f"line{lineno}")), _with_input(instruction, instances[0].get("input")), "self_instruct"))
    return out


def read_mt_bench(path: str | Path) -> list[PromptRecord]:
    out = []
    for lineno, row in iter_json_lines(path):
        where = f"{path}:{lineno}"
        turns = _field(row, "turns", where, list)
        if not turns or not isinstance(turns[0], str):
            raise RecordError(f"{where}: field 'turns' should be a non-empty list of strings")
        out.append(PromptRecord(f"mt_bench_{row.get('question_id', lineno)}", turns[0].strip(), "mt_bench"))
    return out


def _column_text(value: Any, where: str, field: str) -> str:
    """A prompt from a column: a string, or a list of messages (its first user message: srl's loop is single-turn)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for i, msg in enumerate(value):
            if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
                raise RecordError(f"{where}: field '{field}' message {i}: expected an object with 'role' and string 'content'")
            if msg.get("role") == "user":
                return msg["content"]
        raise RecordError(f"{where}: field '{field}': no message with role 'user'")
    raise RecordError(f"{where}: field '{field}' should be a string or a list of messages, got {type(value).__name__}")


def _prompt_id(row: dict, label: str) -> str:
    """The row's ``id`` (a string or an integer), else its label without the space (``line3``, ``row0``)."""
    value = row.get("id")
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else label.replace(" ", "")


def read_prompt_column(path: str, split: str = "train", field: str | None = None, what: str = "prompt set") -> tuple[str, list[tuple[str, str]]]:
    """``(source, [(id, prompt), ...])`` from any rows ``srl.data.tables.read_rows`` reads (a file, a saved data set, the Hub).

    ``field`` names the text column (a string, or messages: the first user message); null: ``prompt``,
    else ``instruction`` followed by a blank line and ``input`` when that is not empty (Alpaca,
    Self-Instruct). Rows whose text is empty are left out. A row's ``id`` names it, else its label
    (``line3``, ``row0``).
    """
    source, rows = read_rows(path, split, what=what)
    if not rows:
        raise RecordError(f"{source}: no rows (an empty {what})")
    out = []
    for label, row in rows:
        where = f"{source} {label}"
        if not isinstance(row, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if field is not None:
            if field not in row:
                raise RecordError(f"{where}: missing field '{field}' (fields of the row: {sorted(row)})")
            text = _column_text(row[field], where, field)
        elif "prompt" in row:
            text = _column_text(row["prompt"], where, "prompt")
        elif "instruction" in row:
            text = _with_input(_field(row, "instruction", where), row.get("input"))
        else:
            raise RecordError(f"{where}: missing field 'prompt' (or 'instruction'; name another column with the set's field setting)")
        if text.strip():
            out.append((_prompt_id(row, label), text.strip()))
    if not out:
        raise RecordError(f"{source}: no non-empty prompt among {len(rows)} rows ({what})")
    return source, out


def heldout_prompts(examples: Sequence[IFTExample]) -> list[PromptRecord]:
    return [PromptRecord(f"oasst_{ex.message_id}", ex.prompt.strip(), "heldout") for ex in examples]


def load_prompt_set(settings: PromptSetSettings, heldout: Sequence[IFTExample] = ()) -> list[PromptRecord]:
    """The prompt set, cut to a seeded subset of ``limit`` prompts (kept in file order)."""
    if settings.kind == "heldout":
        prompts = heldout_prompts(heldout)
    else:
        path = Path(settings.path).expanduser()
        if not path.is_file() and settings.kind != "jsonl":
            raise FileNotFoundError(f"eval prompt file not found: {path}")
        if settings.kind == "jsonl":
            _, texts = read_prompt_column(settings.path, settings.split, settings.field, what="jsonl prompt set")
            prompts = [PromptRecord(prompt_id, text, "jsonl") for prompt_id, text in texts]
        else:
            prompts = {"self_instruct": read_self_instruct, "mt_bench": read_mt_bench}[settings.kind](path)
        if not prompts:
            raise RecordError(f"{path}: no rows (an empty {settings.kind} prompt set)")
    ids = [p.prompt_id for p in prompts]
    if len(set(ids)) != len(ids):
        raise RecordError(f"eval prompt set {settings.kind} ({settings.path}): prompt ids are not unique")
    if settings.limit is not None and len(prompts) > settings.limit:
        keep = sorted(random.Random(settings.seed).sample(range(len(prompts)), settings.limit))
        prompts = [prompts[i] for i in keep]
    return prompts


def read_reference(path: str | Path, prompts: Sequence[PromptRecord]) -> tuple[dict[str, Candidate], int]:
    """Reference replies for ``prompts`` by prompt id, and how many prompts have none.

    ``path`` holds srl ``Candidate`` records (matched by ``prompt_id``) or AlpacaEval rows
    (``instruction``/``output``, a JSON list or JSONL, matched by prompt text).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"reference replies file not found: {file}")
    text = read_text(file)
    if text.lstrip().startswith("["):
        rows = [(i + 1, row) for i, row in enumerate(loads_json(text, file))]
    else:
        rows = list(iter_json_lines(file))
    if not rows:
        raise RecordError(f"{file}: no rows (an empty reference replies file)")
    if rows and isinstance(rows[0][1], dict) and "candidate" in rows[0][1]:
        by_id = {c.prompt_id: c for c in read_jsonl(file, Candidate)}
    else:
        by_text = {}
        for lineno, row in rows:
            where = f"{file}:{lineno}"
            by_text[_field(row, "instruction", where).strip()] = _field(row, "output", where)
        by_id = {p.prompt_id: Candidate(p.prompt_id, 0, p.prompt, by_text[p.prompt], -1, True) for p in prompts if p.prompt in by_text}
    found = {p.prompt_id: by_id[p.prompt_id] for p in prompts if p.prompt_id in by_id}
    return found, len(prompts) - len(found)


def alpaca_eval_rows(replies: Sequence[Candidate], generator: str) -> list[dict[str, str]]:
    return [{"instruction": r.prompt, "output": r.response, "generator": generator} for r in replies]


def write_alpaca_eval(path: str | Path, replies: Sequence[Candidate], generator: str) -> Path:
    """AlpacaEval model outputs (``alpaca_eval --model_outputs FILE``): a JSON list."""
    atomic_write_text(path, json.dumps(alpaca_eval_rows(replies, generator), indent=2, ensure_ascii=False) + "\n")
    return Path(path)
