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
import itertools
import logging
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from srl.records import (
    EFTExample,
    IFTExample,
    RankedPrompt,
    RecordError,
    iter_json_lines,
    loads_json,
    read_text,
    write_json,
    write_jsonl,
)
from srl.templates import JudgeTemplate, PairwiseTemplate

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


def _eft(group: RankedPrompt, i: int, template: JudgeTemplate, justification: str, score: int, mode: str) -> EFTExample:
    return EFTExample(
        prompt=group.prompt,
        response=group.replies[i],
        justification=justification,
        score=score,
        judge_prompt=template.render(group.prompt, group.replies[i]),
        target=template.target(justification, score),
        tree_id=group.tree_id,
        message_id=group.message_id,
        human_rank=group.ranks[i],
        num_siblings=len(group.replies),
        mode=mode,
    )


def eft_ranked(groups: Iterable[RankedPrompt], template: JudgeTemplate | PairwiseTemplate) -> list[EFTExample]:
    """EFT examples whose score comes from the human ranking (see the module docstring).

    A pointwise format scores the reply at rank position i of n with ``template.ranked_score`` (the
    additive rubric: 1..5 as ``rank_score``) and words the justification its own way; a pairwise
    format gets every ordered pair of differently ranked replies (``eft_pairwise``).
    """
    if template.kind == "pairwise":
        return eft_pairwise(groups, template)
    out = []
    for g in groups:
        n = len(g.replies)
        for i in range(n):
            score = template.ranked_score(i, n)
            out.append(_eft(g, i, template, template.justification(score), score, "ranked"))
    return out


def eft_pairwise(groups: Iterable[RankedPrompt], template: PairwiseTemplate) -> list[EFTExample]:
    """Pairwise EFT: for replies i, j of a group with different human ranks, both orders (A=i, B=j and
    A=j, B=i), the target naming the better-ranked one. ``response`` and ``human_rank`` are reply A's;
    ``score`` is 1 when A wins, else 0. A group of n replies gives up to n(n-1) examples, half won by A.
    """
    out = []
    for g in groups:
        for a, b in itertools.permutations(range(len(g.replies)), 2):
            if g.ranks[a] == g.ranks[b]:
                continue
            winner = "A" if g.ranks[a] < g.ranks[b] else "B"
            justification = f"Response {winner} answers the request more helpfully, accurately and completely."
            out.append(EFTExample(
                prompt=g.prompt, response=g.replies[a], justification=justification, score=int(winner == "A"),
                judge_prompt=template.render(g.prompt, g.replies[a], g.replies[b]), target=template.target(justification, winner),
                tree_id=g.tree_id, message_id=g.message_id, human_rank=g.ranks[a], num_siblings=len(g.replies), mode="ranked_pairwise",
            ))
    return out


JudgeFn = Callable[[list[str], list[int]], list[str]]
"""Writes one sampled judgement per judge prompt; the second argument gives a seed per prompt."""


def eft_paper(
    groups: Sequence[RankedPrompt],
    template: JudgeTemplate,
    judge_fn: JudgeFn,
    seed: int,
    attempts: int = 1,
    counts: collections.Counter | None = None,
) -> list[EFTExample]:
    """EFT examples written by a judge model, kept only when they agree with the human ranking.

    Each reply is judged once per attempt (seed derived from (seed, group, reply, attempt)); a group
    is kept at its first attempt whose scores all parse and strictly decrease with human rank.
    Then the most frequent score is down-sampled to the second most frequent's count.
    """
    counts = counts if counts is not None else collections.Counter()
    pending = list(range(len(groups)))
    accepted: dict[int, list[tuple[str, float]]] = {}
    for attempt in range(attempts):
        if not pending:
            break
        prompts, seeds, owners = [], [], []
        for gi in pending:
            for ri, reply in enumerate(groups[gi].replies):
                prompts.append(template.render(groups[gi].prompt, reply))
                seeds.append(derive_seed(seed, "eft_paper", gi, ri, attempt))
                owners.append(gi)
        texts = judge_fn(prompts, seeds)
        by_group: dict[int, list[str]] = collections.defaultdict(list)
        for gi, text in zip(owners, texts):
            by_group[gi].append(text)
        still = []
        for gi in pending:
            scores = [template.parse(t) for t in by_group[gi]]
            if any(s is None for s in scores):
                counts["eft_paper_unparsable"] += 1
                still.append(gi)
            elif all(a > b for a, b in zip(scores, scores[1:])):
                accepted[gi] = list(zip(by_group[gi], scores))
            else:
                counts["eft_paper_disagrees_with_humans"] += 1
                still.append(gi)
        pending = still
    counts["eft_paper_groups_kept"] = len(accepted)
    counts["eft_paper_groups_dropped"] = len(pending)
    examples = []
    for gi in sorted(accepted):
        for ri, (text, score) in enumerate(accepted[gi]):
            justification = text.rsplit("\n", 1)[0] if "\n" in text else text
            ex = _eft(groups[gi], ri, template, justification, int(round(score)), "paper")
            examples.append(dataclasses.replace(ex, target=text.strip()))
    return balance_scores(examples, seed, counts)


def balance_scores(examples: list[EFTExample], seed: int, counts: collections.Counter) -> list[EFTExample]:
    """Down-sample the most frequent score to the count of the second most frequent (seeded)."""
    by_score: dict[int, list[int]] = collections.defaultdict(list)
    for i, ex in enumerate(examples):
        by_score[ex.score].append(i)
    if len(by_score) < 2:
        return examples
    ordered = sorted(by_score, key=lambda s: (-len(by_score[s]), s))
    top, second = ordered[0], ordered[1]
    cap = len(by_score[second])
    rng = random.Random(derive_seed(seed, "eft_balance"))
    keep_top = set(rng.sample(by_score[top], cap))
    counts["eft_downsampled"] = len(by_score[top]) - cap
    return [ex for i, ex in enumerate(examples) if ex.score != top or i in keep_top]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from (run seed, stage, item, ...) that does not depend on Python's hash salt."""
    import hashlib

    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def embedded_seed_source() -> OasstSource:
    """The seed data shipped with srl (written for the project, oasst1 format; see README)."""
    return OasstSource(path=str(Path(__file__).parent / "data" / "seed_oasst.jsonl"))


@dataclasses.dataclass
class BuildSettings:
    """How IFT/EFT/held-out files are built from a source (``conf/data``)."""

    lang: str = "en"
    heldout_fraction: float = 0.2
    seed: int = 0
    eft_mode: str = "ranked"  # "ranked" | "paper"
    eft_attempts: int = 2


@dataclasses.dataclass
class BuildResult:
    ift_train: list[IFTExample]
    ift_heldout: list[IFTExample]
    eft_train: list[EFTExample]
    ranked_heldout: list[RankedPrompt]
    heldout_tree_ids: list[str]
    counts: dict[str, int]

    FILES = ("ift_train.jsonl", "eft_train.jsonl", "ift_heldout.jsonl", "ranked_heldout.jsonl", "heldout_tree_ids.json", "counts.json")

    def write(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        write_jsonl(out / "ift_train.jsonl", self.ift_train)
        write_jsonl(out / "eft_train.jsonl", self.eft_train)
        write_jsonl(out / "ift_heldout.jsonl", self.ift_heldout)
        write_jsonl(out / "ranked_heldout.jsonl", self.ranked_heldout)
        write_json(out / "heldout_tree_ids.json", self.heldout_tree_ids)
        write_json(out / "counts.json", self.counts)


def build(messages: Sequence[Message], settings: BuildSettings, template: JudgeTemplate, judge_fn: JudgeFn | None = None) -> BuildResult:
    """Build IFT, EFT and the held-out split from oasst1 messages (see the module docstring)."""
    counts: collections.Counter = collections.Counter()
    turns = first_turns(messages, settings.lang, counts)
    if not any(t.replies for t in turns):
        first = messages[0].where if messages else "the source"
        raise RecordError(f"no usable first-turn prompt in language {settings.lang!r} with a usable ranked reply among "
                          f"{len(messages)} messages (first row {first}); counts {dict(sorted(counts.items()))}")
    trees = {t.prompt.tree_id for t in turns}
    train_ids, heldout_ids = split_trees(trees, settings.heldout_fraction, settings.seed)
    train = [t for t in turns if t.prompt.tree_id in train_ids]
    heldout = [t for t in turns if t.prompt.tree_id in heldout_ids]
    ift_train = ift_examples(train, counts)
    heldout_counts: collections.Counter = collections.Counter()
    ift_heldout = ift_examples(heldout, heldout_counts)
    counts["ift_heldout_skipped_no_usable_rank0"] = heldout_counts["ift_skipped_no_usable_rank0"]
    groups_train = ranked_prompts(train)
    if settings.eft_mode == "ranked":
        eft_train = eft_ranked(groups_train, template)
    elif settings.eft_mode == "paper":
        if template.kind == "pairwise":
            raise ValueError("EFT mode 'paper' writes pointwise judgements; with a pairwise judge use data.build.eft_mode=ranked")
        if judge_fn is None:
            raise ValueError("EFT mode 'paper' needs a judge model (data.eft_judge) to write judgements")
        eft_train = eft_paper(groups_train, template, judge_fn, settings.seed, settings.eft_attempts, counts)
    else:
        raise ValueError(f"unknown EFT mode '{settings.eft_mode}'; choose 'ranked' or 'paper'")
    ranked_heldout = ranked_prompts(heldout)
    counts.update(
        first_turn_prompts=len(turns),
        trees_train=len(train_ids),
        trees_heldout=len(heldout_ids),
        ift_train=len(ift_train),
        ift_heldout=len(ift_heldout),
        ranked_groups_train=len(groups_train),
        ranked_groups_heldout=len(ranked_heldout),
        eft_train=len(eft_train),
    )
    return BuildResult(ift_train, ift_heldout, eft_train, ranked_heldout, sorted(heldout_ids), dict(sorted(counts.items())))
