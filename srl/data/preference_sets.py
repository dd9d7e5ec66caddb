"""Human preference sets for judge evaluation, in the TRL / RewardBench convention.

``eval.preference_sets`` lists ``PreferenceSetSettings``; each set is a local ``.jsonl`` (one row a
line) or ``.json`` file (a JSON list of rows), either one optionally gzipped (``.jsonl.gz``,
``.json.gz``: read through gzip, same line numbers and errors), or a Hugging Face Hub data set id.
A row is an object:

- plain text: ``{"prompt": str, "chosen": str, "rejected": str}``;
- conversational, explicit prompt: ``prompt`` a list of messages (``{"role", "content"}``, role
  system/user/assistant); ``chosen``/``rejected`` a list of messages whose last one is the
  assistant reply, or a string;
- conversational, implicit prompt (no ``prompt`` field): ``chosen`` and ``rejected`` are whole
  conversations; the prompt is their common leading messages, each reply the message after it;
- Anthropic HH-RLHF text (no ``prompt`` field): ``chosen`` and ``rejected`` are strings of turns
  ``"\n\nHuman: ...\n\nAssistant: ..."`` (the first marker may also open the string as
  ``"Human:"``); each is parsed into user/assistant messages (content stripped) and read as an
  implicit-prompt conversation, so the last turn must be the Assistant's;
- an optional bool ``tie`` (both replies equally good; absent or null: not a tie).

srl judges single-turn prompts: one user message, optionally after a system message (prepended to
the user text with a blank line). Rows with more turns are skipped (``multi_turn``), as are rows
with an empty (or whitespace) reply (``empty_reply``: public sets have them, e.g. HH-RLHF) and rows
whose two replies are the same text (``identical``). Anything malformed raises ``RecordError``
naming the file, the line (or Hub row) and the field.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

from srl.core.subsets import subset
from srl.data.instructions import ROLES, messages  # noqa: F401  (ROLES: the roles a message may have, one definition)
from srl.data.records import RecordError
from srl.data.tables import read_rows

log = logging.getLogger(__name__)

SKIPS = ("multi_turn", "empty_reply", "identical")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")  # on the lstripped text: "Human:" may open it
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """One human preference: a single-turn prompt, the preferred reply and the other one."""

    pair_id: str  # "<set>:<line>" (files), "<set>:<row>" (Hub), or the row's "id"
    prompt: str
    chosen: str
    rejected: str
    tie: bool = False


@dataclasses.dataclass
class PreferenceSetSettings:
    """One entry of ``eval.preference_sets``: a file or Hub set, its field names, a seeded subset."""

    name: str
    path: str
    split: str = "test"  # Hub only
    limit: int | None = None
    seed: int = 0
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    tie_field: str | None = "tie"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"preference set name must match [A-Za-z0-9_.-]+ (it is used in metric keys), got {self.name!r}")
        if not self.path:
            raise ValueError(f"preference set {self.name!r} needs a path (a .jsonl/.json file or a Hub data set id)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"preference set {self.name!r}: limit must be >= 1 or null, got {self.limit}")


class _Skip(Exception):
    """The row is skipped, not an error; ``args[0]`` is the reason (one of ``SKIPS``)."""


def _text(text: str, where: str, field: str) -> str:
    if not text.strip():
        raise RecordError(f"{where}: field '{field}' is empty")
    return text.strip()


def _prompt_text(messages: Sequence[tuple[str, str]], where: str, field: str) -> str:
    """The single-turn prompt of ``messages`` (system text, a blank line, the user text); ``_MultiTurn`` otherwise."""
    system, rest = (messages[0][1], messages[1:]) if messages and messages[0][0] == "system" else (None, messages)
    if any(role == "system" for role, _ in rest):
        raise RecordError(f"{where}: field '{field}': a system message may only be the first message")
    if any(role == "assistant" for role, _ in rest) or len(rest) > 1:
        raise _Skip("multi_turn")
    if not rest:
        raise RecordError(f"{where}: field '{field}': no user message")
    user = _text(rest[0][1], where, field)
    return f"{system.strip()}\n\n{user}" if system is not None and system.strip() else user


def _reply_text(messages: Sequence[tuple[str, str]], where: str, field: str) -> str:
    if not messages:
        raise RecordError(f"{where}: field '{field}': an empty list of messages")
    role, content = messages[-1]
    if role != "assistant":
        raise RecordError(f"{where}: field '{field}': the last message should be role 'assistant', got {role!r}")
    return content.strip()


def _is_hh(value: Any) -> bool:
    """Whether ``value`` is an HH-RLHF text conversation (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``)."""
    return isinstance(value, str) and ("\n\nHuman:" in value or value.lstrip().startswith("Human:"))


def _hh_messages(text: str, where: str, field: str) -> list[tuple[str, str]]:
    """``(role, content)`` of each turn of an HH-RLHF text conversation, content stripped."""
    parts = _HH_TURN.split(text.lstrip())  # [before, role, content, role, content, ...]
    if parts[0].strip():
        raise RecordError(f"{where}: field '{field}': text before the first 'Human:' turn: {parts[0].strip()!r:.60}")
    return [(_HH_ROLES[role], content.strip()) for role, content in zip(parts[1::2], parts[2::2])]


def _get(row: dict, field: str, where: str) -> Any:
    if field not in row:
        raise RecordError(f"{where}: missing field '{field}'")
    value = row[field]
    if not isinstance(value, (str, list)):
        raise RecordError(f"{where}: field '{field}': expected a string or a list of messages, got {type(value).__name__}")
    return value


def _pair(row: Any, where: str, settings: PreferenceSetSettings) -> tuple[str, str, str, bool]:
    """``(prompt, chosen, rejected, tie)`` of one row; ``_Skip`` when it is not single-turn or a reply is empty."""
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
    pf, cf, rf, tf = settings.prompt_field, settings.chosen_field, settings.rejected_field, settings.tie_field
    chosen, rejected = _get(row, cf, where), _get(row, rf, where)
    tie = row.get(tf) if tf is not None else None
    if tie is not None and not isinstance(tie, bool):
        raise RecordError(f"{where}: field '{tf}': expected true or false, got {type(tie).__name__} {tie!r:.40}")
    if pf in row:
        prompt = _get(row, pf, where)
        if isinstance(prompt, str):
            prompt_text = _text(prompt, where, pf)
        else:
            prompt_text = _prompt_text(messages(prompt, where, pf), where, pf)
        reply_c, reply_r = (
            v.strip() if isinstance(v, str) else _reply_text(messages(v, where, f), where, f) for f, v in ((cf, chosen), (rf, rejected))
        )
        if not reply_c or not reply_r:
            raise _Skip("empty_reply")
        return prompt_text, reply_c, reply_r, bool(tie)
    # Implicit prompt (TRL, or HH-RLHF text): the shared leading messages of the two conversations.
    convs = []
    for f, v in ((cf, chosen), (rf, rejected)):
        if isinstance(v, str) and not _is_hh(v):
            raise RecordError(f"{where}: missing field '{pf}' (needed when field '{f}' is a string, not a conversation)")
        convs.append(_hh_messages(v, where, f) if isinstance(v, str) else messages(v, where, f))
    conv_c, conv_r = convs
    n = 0
    while n < min(len(conv_c), len(conv_r)) - 1 and conv_c[n] == conv_r[n]:
        n += 1
    if n == 0:
        raise RecordError(f"{where}: fields '{cf}' and '{rf}' share no leading messages (no prompt; give field '{pf}')")
    reply_c, reply_r = _reply_text(conv_c, where, cf), _reply_text(conv_r, where, rf)
    prompt_text = _prompt_text(conv_c[:n], where, cf)
    if len(conv_c) - n > 1 or len(conv_r) - n > 1:
        raise _Skip("multi_turn")
    if not reply_c or not reply_r:
        raise _Skip("empty_reply")
    return prompt_text, reply_c, reply_r, bool(tie)


def _row_id(row: Any, label: str, name: str, where: str) -> str:
    if isinstance(row, dict) and "id" in row:
        value = row["id"]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise RecordError(f"{where}: field 'id' should be a string, got {type(value).__name__}")
        return str(value)
    return f"{name}:{label.rsplit(' ', 1)[-1]}"


def read_preference_rows(
    rows: Iterable[tuple[str, Any]], source: str, name: str, settings: PreferenceSetSettings
) -> tuple[list[PreferencePair], dict[str, int]]:
    """Pairs from ``(label, row)`` items (label ``"line N"`` or ``"row i"``) and the skip counts."""
    pairs: list[PreferencePair] = []
    skipped = dict.fromkeys(SKIPS, 0)
    seen: dict[str, str] = {}
    for label, row in rows:
        where = f"{source} {label}"
        try:
            prompt, chosen, rejected, tie = _pair(row, where, settings)
        except _Skip as skip:
            skipped[skip.args[0]] += 1
            continue
        pair_id = _row_id(row, label, name, where)
        if pair_id in seen:
            raise RecordError(f"{where}: pair id {pair_id!r} repeats the one at {seen[pair_id]}")
        seen[pair_id] = label
        if chosen == rejected:
            skipped["identical"] += 1
            continue
        pairs.append(PreferencePair(pair_id, prompt, chosen, rejected, tie))
    return pairs, skipped


def load_preference_set(settings: PreferenceSetSettings) -> tuple[list[PreferencePair], dict[str, int]]:
    """The set's pairs (a seeded subset of ``limit``, in order) and how many rows were skipped, by reason."""
    source, rows = read_rows(settings.path, settings.split, what=f"preference set {settings.name!r}")
    pairs, skipped = read_preference_rows(rows, source, settings.name, settings)
    if any(skipped.values()):
        log.warning("preference set %s: skipped %s", settings.name, ", ".join(f"{n} {k}" for k, n in skipped.items() if n))
    if not pairs:
        raise RecordError(f"{source}: no preference pairs (preference set {settings.name!r}; skipped {skipped})")
    return subset(pairs, settings.limit, settings.seed), skipped
