"""Open Assistant (oasst1) data builders: IFT, EFT and the held-out split (paper, Sec. 3.1).

Input is oasst1's message table, from the Hub data set ``OpenAssistant/oasst1`` or a local
JSONL/Parquet file with its columns. A message is *usable* when it is not deleted, not synthetic
and passed review (``review_result`` true; false or missing means it did not pass).

- **IFT**: for every usable English first-turn prompt (a root prompter message), its usable rank-0
  assistant reply. A prompt whose rank-0 reply is missing or unusable gives no IFT example.
- **Ranked groups**: a usable English first-turn prompt with two or more usable ranked replies,
  ordered by their human rank (0 = best). EFT examples and judge evaluation come from these.
- **EFT** (judge training), one example per reply of a ranked group, in one of two modes:
  ``ranked`` (offline): score = round(1 + 4 * (n - 1 - i) / (n - 1)) for the reply at position i
  (0 = best) of a group of n, so the best reply gets 5 and the worst 1 (n=2: 5,1; n=3: 5,3,1;
  n=4: 5,4,2,1); the justification names the rubric criteria met and the first one missed.
  Other judge formats spread the ranks over their own scale and words (``JudgeTemplate.ranked_score``,
  ``justification``); a pairwise judge gets both orders of every differently ranked pair.
  ``paper``: a judge model writes justification and score; a group is kept only when every reply's
  score parses and the scores order the replies strictly as the humans did; then the most frequent
  score is down-sampled to the count of the second most frequent (the paper balances its
  over-represented score the same way).
- **Skipped, counted, logged**: an empty or blank prompt or reply (``roots_empty_text``,
  ``replies_skipped_empty_text``); a prompt whose usable ranked replies share a rank
  (``prompts_skipped_tied_ranks``): oasst1 ranks siblings strictly, so a tie is a damaged ranking
  that can neither name the IFT best reply nor order EFT scores; the whole prompt goes, not a guess.
  A negative rank, or a source with no (usable) row, is an error naming the file and line.
- **Split** by ``message_tree_id``: a seeded shuffle of the sorted tree ids puts
  round(heldout_fraction * trees) trees in the held-out part; no tree is on both sides.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
from pathlib import Path
from typing import Any, Iterable, Sequence

from srl.data.records import IFTExample, RankedPrompt, RecordError, iter_json_lines, loads_json, read_text

log = logging.getLogger(__name__)


# Columns the builders read, with the JSON types they accept.
REQUIRED_COLUMNS: dict[str, tuple[type, ...]] = {
    "message_id": (str,),
    "parent_id": (str, type(None)),
    "message_tree_id": (str,),
    "role": (str,),
    "text": (str,),
    "lang": (str,),
    "rank": (int, type(None)),
    "review_result": (bool, type(None)),
    "deleted": (bool,),
    "synthetic": (bool,),
}


SEED_OASST = Path(__file__).parent / "seed_oasst.jsonl"  # the seed data shipped inside srl (package data)
ROLES = ("prompter", "assistant")


@dataclasses.dataclass(frozen=True)
class Message:
    message_id: str
    parent_id: str | None
    tree_id: str
    role: str
    text: str
    lang: str
    rank: int | None
    review_result: bool | None
    deleted: bool
    synthetic: bool
    where: str = dataclasses.field(default="", compare=False)  # file and line (or data set and row), for messages

    @property
    def usable(self) -> bool:
        return not self.deleted and not self.synthetic and self.review_result is True


def message_from_row(row: Any, where: str) -> Message:
    """Validate one oasst1 row; errors name ``where`` (file and line, or data set and row) and the field."""
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for column, types_ in REQUIRED_COLUMNS.items():
        if column not in row:
            raise RecordError(f"{where}: missing field '{column}'")
        value = row[column]
        if isinstance(value, bool) and bool not in types_:
            ok = False
        else:
            ok = isinstance(value, types_)
        if not ok:
            raise RecordError(f"{where}: field '{column}' has {type(value).__name__} {value!r:.40}, expected {'/'.join(t.__name__ for t in types_)}")
    if row["role"] not in ROLES:
        raise RecordError(f"{where}: field 'role' is {row['role']!r}, expected one of {ROLES}")
    if row["rank"] is not None and row["rank"] < 0:
        raise RecordError(f"{where}: field 'rank' is {row['rank']}, expected a rank >= 0 (0 = best) or null")
    return Message(
        message_id=row["message_id"],
        parent_id=row["parent_id"],
        tree_id=row["message_tree_id"],
        role=row["role"],
        text=row["text"],
        lang=row["lang"],
        rank=row["rank"],
        review_result=row["review_result"],
        deleted=row["deleted"],
        synthetic=row["synthetic"],
        where=where,
    )


@dataclasses.dataclass
class OasstSource:
    """Where oasst1 comes from: a local ``path`` (.jsonl/.json/.parquet) or, if no path, ``hub_id``."""

    path: str | None = None
    hub_id: str = "OpenAssistant/oasst1"
    hub_splits: Sequence[str] = ("train", "validation")

    def describe(self) -> str:
        return str(self.path) if self.path else f"{self.hub_id}[{'+'.join(self.hub_splits)}]"

    def load(self) -> list[Message]:
        if self.path:
            return load_local(self.path)
        return load_hub(self.hub_id, self.hub_splits)


def _nonempty(messages: list[Message], where: str) -> list[Message]:
    """``messages``, unless there are none or none usable: a clear error before any model work."""
    if not any(m.usable for m in messages):
        why = f"all {len(messages)} messages are deleted, synthetic or did not pass review" if messages else "an empty oasst1 source"
        raise RecordError(f"{where}: no {'usable ' if messages else ''}rows ({why})")
    return messages


def load_local(path: str | Path) -> list[Message]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"oasst1 file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        return _nonempty([message_from_row(row, f"{path}: row {i + 1}") for i, row in enumerate(rows)], str(path))
    if path.suffix == ".json":
        data = loads_json(read_text(path), path)
        if not isinstance(data, list):
            raise RecordError(f"{path}: expected a JSON list of messages")
        return _nonempty([message_from_row(row, f"{path}: item {i + 1}") for i, row in enumerate(data)], str(path))
    return _nonempty([message_from_row(row, f"{path}:{lineno}") for lineno, row in iter_json_lines(path)], str(path))


def load_hub(hub_id: str, splits: Sequence[str]) -> list[Message]:
    import datasets

    messages: list[Message] = []
    for split in splits:
        ds = datasets.load_dataset(hub_id, split=split)
        messages.extend(message_from_row(row, f"{hub_id}[{split}] row {i}") for i, row in enumerate(ds))
    return _nonempty(messages, f"{hub_id}[{'+'.join(splits)}]")


@dataclasses.dataclass(frozen=True)
class FirstTurn:
    """A usable first-turn prompt with its usable ranked replies, best first."""

    prompt: Message
    replies: tuple[Message, ...]


def first_turns(messages: Iterable[Message], lang: str = "en", counts: collections.Counter | None = None) -> list[FirstTurn]:
    """Usable first-turn prompts in ``lang`` with their usable ranked replies sorted by rank."""
    counts = counts if counts is not None else collections.Counter()
    messages = list(messages)
    seen: dict[str, Message] = {}
    for m in messages:
        if seen.setdefault(m.message_id, m) is not m:
            raise RecordError(f"{m.where or 'the source'}: field 'message_id' {m.message_id!r} repeats the one at {seen[m.message_id].where}")
    children: dict[str, list[Message]] = collections.defaultdict(list)
    for m in messages:
        if m.parent_id is not None:
            children[m.parent_id].append(m)
        counts["messages"] += 1
        if m.deleted:
            counts["messages_deleted"] += 1
        if m.synthetic:
            counts["messages_synthetic"] += 1
        if m.review_result is not True:
            counts["messages_not_passed_review"] += 1
    turns, empty, tied = [], [], []
    for root in messages:
        if root.parent_id is not None:
            continue
        counts["roots"] += 1
        if root.role != "prompter" or not root.usable:
            counts["roots_unusable"] += 1
            continue
        if root.lang != lang:
            counts["roots_other_language"] += 1
            continue
        if not root.text.strip():
            counts["roots_empty_text"] += 1
            empty.append(root)
            continue
        ranked = [c for c in children[root.message_id] if c.role == "assistant" and c.rank is not None]
        usable = sorted((c for c in ranked if c.usable), key=lambda c: (c.rank, c.message_id))
        counts["replies_ranked_skipped_unusable"] += len(ranked) - len(usable)
        blank = [c for c in usable if not c.text.strip()]
        counts["replies_skipped_empty_text"] += len(blank)
        empty += blank
        usable = [c for c in usable if c.text.strip()]
        if len({c.rank for c in usable}) < len(usable):
            counts["prompts_skipped_tied_ranks"] += 1
            tied.append(f"{root.where} (ranks {[c.rank for c in usable]})")
            continue
        turns.append(FirstTurn(root, tuple(usable)))
    counts.update(dict.fromkeys(("roots_empty_text", "prompts_skipped_tied_ranks"), 0))  # present even when 0
    for what, items in (("empty prompt/reply text(s)", [m.where for m in empty]), ("prompt(s) whose usable replies share a rank", tied)):
        if items:
            log.warning("skipped %d %s, e.g. %s", len(items), what, ", ".join(items[:3]))
    return turns


def split_trees(tree_ids: Iterable[str], heldout_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Split tree ids into (train, heldout); deterministic in ``seed``, independent of input order."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    ids = sorted(set(tree_ids))
    random.Random(seed).shuffle(ids)
    n_heldout = round(heldout_fraction * len(ids))
    return set(ids[n_heldout:]), set(ids[:n_heldout])


def rank_score(position: int, n: int) -> int:
    """Score 1..5 for the reply at ``position`` (0 = best) among ``n`` >= 2 ranked siblings."""
    if n < 2 or not 0 <= position < n:
        raise ValueError(f"need n >= 2 and 0 <= position < n, got position={position}, n={n}")
    return int(round(1 + 4 * (n - 1 - position) / (n - 1)))


def ift_examples(turns: Iterable[FirstTurn], counts: collections.Counter) -> list[IFTExample]:
    out = []
    for t in turns:
        if not t.replies or t.replies[0].rank != 0:
            counts["ift_skipped_no_usable_rank0"] += 1
            continue
        best = t.replies[0]
        out.append(IFTExample(prompt=t.prompt.text, response=best.text, tree_id=t.prompt.tree_id, message_id=best.message_id))
    return out


def ranked_prompts(turns: Iterable[FirstTurn]) -> list[RankedPrompt]:
    return [
        RankedPrompt(
            prompt=t.prompt.text,
            replies=tuple(r.text for r in t.replies),
            ranks=tuple(r.rank for r in t.replies),
            tree_id=t.prompt.tree_id,
            message_id=t.prompt.message_id,
        )
        for t in turns
        if len(t.replies) >= 2
    ]


"""Writes one sampled judgement per judge prompt; the second argument gives a seed per prompt."""


def embedded_seed_source() -> OasstSource:
    """The seed data shipped with srl (written for the project, oasst1 format; see README)."""
    return OasstSource(path=str(SEED_OASST))
