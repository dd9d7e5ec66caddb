"""A user's own SFT data: instruction data (IFT) and judge-training rows (EFT), from a file or the Hub.

Both read their rows through ``srl.data.tables.read_rows`` (``.jsonl``/``.json``/gzip/``.parquet``,
a ``save_to_disk`` folder, or a Hub id with ``split``); every error names the file (or data set
and split), the line or row, and the field.

**Instruction data** (``data.instructions``, ``InstructionSource``), in TRL's two conventions:

- ``format=messages``: a row holds a conversation, ``messages`` = a list of ``{"role", "content"}``
  with role ``system`` (first message only), ``user`` and ``assistant``, user and assistant
  alternating from a user message. SFT trains on **every assistant turn** (labels on each reply and
  its end-of-turn, -100 on system, user and template text: ``srl.training.encoding.encode_turns``).
  A final user message with no reply is dropped (counted ``trailing_user_dropped``).
- ``format=prompt_completion``: ``prompt`` (a string, or a list of messages ending with a user
  message) and ``completion`` (a string, or a list holding one assistant message). SFT trains on
  the completion only, as TRL does for this format.

Each row becomes an ``IFTExample``: ``prompt``/``response`` are its first user message and first
reply (what single-turn consumers use: the self-instruction demonstrations, held-out prompts for
the head-to-head, held-out NLL), ``turns`` the whole conversation when it is more than one plain
user -> assistant exchange. Skipped and counted (``instructions_skipped_<reason>``): a row with no
assistant reply (``no_reply``), an empty user or assistant text (``empty_text``), a conversation
that repeats one already read (``duplicate``). A wrong type, an unknown role, a system message
after the first, two user (or assistant) messages in a row: an error. The rows are split into
train and held-out by a seeded shuffle of their ids (``heldout_fraction``), as oasst1 is by tree.

**EFT rows** (``data.eft_rows``, ``EFTRowsSource``): judge-training examples given directly, one
per row: ``prompt``, ``response``, ``judgement`` (the judge's reasoning) and ``score`` (an integer
in the judge template's range). The judge prompt is the run's template over (prompt, response);
the target is the judgement, then the template's score line: if the judgement already ends with a
score line, that score must equal ``score``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Iterator, Sequence

from srl.data.oasst import split_trees
from srl.data.records import EFTExample, IFTExample, RecordError
from srl.data.tables import read_rows

log = logging.getLogger(__name__)

FORMATS = ("messages", "prompt_completion")
ROLES = ("system", "user", "assistant")
Turns = tuple[tuple[str, str], ...]


@dataclasses.dataclass
class InstructionSource:
    """``data.instructions``: the IFT data of the run in place of oasst1's first turns (module docstring)."""

    path: str | None = None  # null: IFT comes from data.source (oasst1)
    format: str = "messages"  # messages | prompt_completion
    split: str = "train"  # a Hub data set's or saved DatasetDict's split
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    id_field: str | None = "id"  # absent in a row: the row's position names it
    heldout_fraction: float = 0.05
    seed: int = 0
    limit: int | None = None  # a seeded subset of this many rows (train + held-out), null: all

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"data.instructions.format must be one of {list(FORMATS)}, got {self.format!r}")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"data.instructions.heldout_fraction must be in [0, 1), got {self.heldout_fraction}")

    def describe(self) -> str:
        return f"{self.path} ({self.format})"

    def load(self) -> tuple[list[IFTExample], list[IFTExample], dict[str, int]]:
        """``(train, heldout, counts)`` of the source's rows."""
        source, rows = read_rows(self.path, self.split, what="data.instructions")
        counts: collections.Counter = collections.Counter({f"instructions_skipped_{k}": 0 for k in ("no_reply", "empty_text", "duplicate")})
        examples: list[IFTExample] = []
        seen_turns: set[Turns] = set()
        for where, row, row_id in identified(source, rows, self.id_field):
            try:
                turns, last_only = self._turns(row, where, counts)
            except _Skip as skip:
                counts[f"instructions_skipped_{skip.args[0]}"] += 1
                continue
            if turns in seen_turns:
                counts["instructions_skipped_duplicate"] += 1
                continue
            seen_turns.add(turns)
            examples.append(example(turns, row_id, last_only))
        if not examples:
            raise RecordError(f"{source}: no usable {self.format} row among {len(rows)} (data.instructions; counts {dict(counts)})")
        if self.limit is not None and len(examples) > self.limit:
            import random

            keep = sorted(random.Random(self.seed).sample(range(len(examples)), self.limit))
            examples = [examples[i] for i in keep]
        train_ids, heldout_ids = split_trees({ex.tree_id for ex in examples}, self.heldout_fraction, self.seed)
        train = [ex for ex in examples if ex.tree_id in train_ids]
        heldout = [ex for ex in examples if ex.tree_id in heldout_ids]
        counts.update(instructions_rows=len(rows), instructions_examples=len(examples),
                      instructions_multi_turn=sum(1 for ex in examples if sum(r == "assistant" for r, _ in ex.turns) > 1))
        log.info("data.instructions %s: %d train, %d held-out; %s", source, len(train), len(heldout), dict(counts))
        return train, heldout, dict(sorted(counts.items()))

    def _turns(self, row: dict, where: str, counts: collections.Counter) -> tuple[Turns, bool]:
        if self.format == "messages":
            turns = messages(_get(row, self.messages_field, where, list), where, self.messages_field)
            _check_roles(turns, where, self.messages_field)
            if turns and turns[-1][0] == "user":
                turns = turns[:-1]
                counts["instructions_trailing_user_dropped"] += 1
            _check_conversation(turns, where, self.messages_field)
            return turns, False
        prompt = _get(row, self.prompt_field, where, (str, list))
        completion = _get(row, self.completion_field, where, (str, list))
        p_turns = (("user", prompt),) if isinstance(prompt, str) else messages(prompt, where, self.prompt_field)
        if not p_turns or p_turns[-1][0] != "user":
            raise RecordError(f"{where}: field '{self.prompt_field}': the last message should be role 'user'")
        if isinstance(completion, str):
            reply = completion
        else:
            c_turns = messages(completion, where, self.completion_field)
            if len(c_turns) != 1 or c_turns[0][0] != "assistant":
                raise RecordError(f"{where}: field '{self.completion_field}': expected one message with role 'assistant', "
                                  f"got roles {[r for r, _ in c_turns]}")
            reply = c_turns[0][1]
        turns = p_turns + (("assistant", reply),)
        _check_conversation(turns, where, self.prompt_field)
        return turns, True


class _Skip(Exception):
    """The row is skipped and counted; ``args[0]`` names why."""


def _get(row: dict, field: str, where: str, kinds: type | tuple[type, ...]) -> Any:
    if field not in row:
        raise RecordError(f"{where}: missing field '{field}' (fields of the row: {sorted(row)})")
    value = row[field]
    if not isinstance(value, kinds) or isinstance(value, bool):
        names = "/".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
        raise RecordError(f"{where}: field '{field}' should be {names}, got {type(value).__name__} {value!r:.60}")
    return value


def _row_id(row: dict, id_field: str | None, label: str, where: str) -> str:
    if id_field and id_field in row and row[id_field] is not None:
        value = row[id_field]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise RecordError(f"{where}: field '{id_field}' should be a string or an integer, got {type(value).__name__}")
        return str(value)
    return label.replace(" ", "")  # "line3", "row0": stable for a given file


def identified(source: str, rows: Sequence[tuple[str, Any]], id_field: str | None) -> Iterator[tuple[str, dict, str]]:
    """``(where, row, id)`` of each row: an object, its id unique in the source (``id_field``, else its label)."""
    seen: dict[str, str] = {}
    for label, row in rows:
        where = f"{source} {label}"
        if not isinstance(row, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
        row_id = _row_id(row, id_field, label, where)
        if row_id in seen:
            raise RecordError(f"{where}: id {row_id!r} repeats the one at {seen[row_id]}")
        seen[row_id] = label
        yield where, row, row_id


def messages(value: list, where: str, field: str) -> Turns:
    """``(role, content)`` of each message, validated (roles system/user/assistant, string content)."""
    out = []
    for i, msg in enumerate(value):
        at = f"{where}: field '{field}' message {i}"
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise RecordError(f"{at}: expected an object with 'role' and 'content', got {type(msg).__name__} {msg!r:.60}")
        if msg["role"] not in ROLES:
            raise RecordError(f"{at}: role should be one of {list(ROLES)}, got {msg['role']!r:.40}")
        if not isinstance(msg["content"], str):
            raise RecordError(f"{at}: content should be a string, got {type(msg['content']).__name__}")
        out.append((msg["role"], msg["content"]))
    return tuple(out)


def _check_roles(turns: Turns, where: str, field: str) -> None:
    """An optional first system message, then user and assistant alternating from a user message."""
    body = turns[1:] if turns and turns[0][0] == "system" else turns
    for i, (role, _) in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if role == "system":
            raise RecordError(f"{where}: field '{field}': a system message may only be the first message")
        if role != expected:
            raise RecordError(f"{where}: field '{field}' message {i + len(turns) - len(body)}: expected role {expected!r} "
                              f"(user and assistant alternate, starting with user), got {role!r}")


def _check_conversation(turns: Turns, where: str, field: str) -> None:
    """Roles as ``_check_roles``, at least one reply, no empty text (else ``_Skip``)."""
    _check_roles(turns, where, field)
    body = turns[1:] if turns and turns[0][0] == "system" else turns
    if not any(role == "assistant" for role, _ in body):
        raise _Skip("no_reply")
    if any(not content.strip() for role, content in body):
        raise _Skip("empty_text")


def example(turns: Turns, row_id: str, last_only: bool = False) -> IFTExample:
    """The ``IFTExample`` of a checked conversation: first user text and first reply, and the turns when they say more."""
    body = turns[1:] if turns[0][0] == "system" else turns
    plain = len(body) == 2 and len(turns) == 2
    return IFTExample(prompt=body[0][1].strip(), response=body[1][1].strip(), tree_id=row_id, message_id=row_id,
                      turns=() if plain else tuple((r, c.strip()) for r, c in turns), train_last_only=last_only and not plain)


@dataclasses.dataclass
class EFTRowsSource:
    """``data.eft_rows``: judge-training rows given directly, added to the EFT data (module docstring)."""

    path: str | None = None  # null: none
    split: str = "train"
    prompt_field: str = "prompt"
    response_field: str = "response"
    judgement_field: str = "judgement"
    score_field: str = "score"
    id_field: str | None = "id"
    limit: int | None = None
    seed: int = 0

    def describe(self) -> str:
        return str(self.path)

    def load(self, template: Any) -> tuple[list[EFTExample], dict[str, int]]:
        if getattr(template, "kind", "pointwise") != "pointwise":
            raise ValueError("data.eft_rows holds pointwise judgements (a score per reply); the run's judge template is pairwise")
        source, rows = read_rows(self.path, self.split, what="data.eft_rows")
        out: list[EFTExample] = []
        skipped = 0
        for where, row, row_id in identified(source, rows, self.id_field):
            prompt, response, judgement = (_get(row, f, where, str) for f in (self.prompt_field, self.response_field, self.judgement_field))
            score = _get(row, self.score_field, where, int)
            if not template.min_score <= score <= template.max_score:
                raise RecordError(f"{where}: field '{self.score_field}' is {score}, outside the judge template's range "
                                  f"{template.min_score}..{template.max_score} ({template.name})")
            if not prompt.strip() or not response.strip():
                skipped += 1
                continue
            out.append(eft_row(template, prompt, response, judgement, score, row_id, where, self.judgement_field))
        if not out:
            raise RecordError(f"{source}: no usable EFT row among {len(rows)} (data.eft_rows; {skipped} with an empty prompt or response)")
        if self.limit is not None and len(out) > self.limit:
            import random

            keep = sorted(random.Random(self.seed).sample(range(len(out)), self.limit))
            out = [out[i] for i in keep]
        return out, {"eft_rows": len(out), "eft_rows_skipped_empty_text": skipped}


def eft_row(template: Any, prompt: str, response: str, judgement: str, score: int, row_id: str, where: str,
            field: str = "judgement") -> EFTExample:
    """One EFT example from a given judgement: its own score line is kept when it names ``score``, else the template's is added.

    ``template``: the run's pointwise ``srl.judging.templates.JudgeTemplate`` (render, parse, target, score range).
    """
    written = template.parse(judgement)
    if written is not None and float(written) != float(score):
        raise RecordError(f"{where}: field '{field}' ends with the score {written:g}, but field 'score' is {score:g}")
    target = judgement.strip() if written is not None else template.target(judgement, score)
    justification = judgement.strip()
    return EFTExample(prompt=prompt.strip(), response=response.strip(), justification=justification, score=score,
                      judge_prompt=template.render(prompt, response), target=target, tree_id=row_id, message_id=row_id,
                      human_rank=-1, num_siblings=0, mode="rows")
