"""The SFT data of a run (paper Sec. 3.1): IFT examples, EFT examples and the held-out split by
message tree, built from oasst1 messages and written to ``data/``; a user's own instruction data
and EFT rows (``srl.data.instructions``) replace oasst1's IFT and add to its EFT (``compose``)."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any, Sequence

from srl.data.instructions import EFTRowsSource, InstructionSource
from srl.data.oasst import Message, first_turns, ift_examples, ranked_prompts, split_trees
from srl.data.records import EFTExample, IFTExample, RankedPrompt, RecordError, write_json, write_jsonl
from srl.judging.eft import JudgeFn, eft_paper, eft_ranked
from srl.judging.templates import JudgeTemplate


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


def compose(
    source: Any | None, instructions: InstructionSource | None, eft_rows: EFTRowsSource | None, settings: BuildSettings,
    template: JudgeTemplate, judge_fn: JudgeFn | None = None,
) -> BuildResult:
    """The run's SFT data from every source the config names.

    ``source`` (oasst1, or None) gives IFT, EFT and the held-out rankings as ``build`` does;
    ``instructions`` (when its path is set) replaces the IFT train and held-out examples with the
    user's own; ``eft_rows`` (when its path is set) adds judge-training rows to the EFT examples.
    Counts of each part are kept; ``ift_train``, ``ift_heldout`` and ``eft_train`` count what the run uses.
    """
    use_instructions = instructions is not None and bool(instructions.path)
    use_rows = eft_rows is not None and bool(eft_rows.path)
    if source is None and not use_instructions:
        raise ValueError("no instruction data: data.source is null and data.instructions.path is not set")
    if source is not None:
        result = build(source.load(), settings, template, judge_fn)
    else:
        result = BuildResult([], [], [], [], [], {})
    counts = dict(result.counts)
    if use_instructions:
        train, heldout, extra = instructions.load()
        if source is not None:
            counts.update(oasst_ift_train_replaced=len(result.ift_train), oasst_ift_heldout_replaced=len(result.ift_heldout))
        result.ift_train, result.ift_heldout = train, heldout
        counts.update(extra)
    if use_rows:
        rows, extra = eft_rows.load(template)
        result.eft_train = result.eft_train + rows
        counts.update(extra)
    counts.update(ift_train=len(result.ift_train), ift_heldout=len(result.ift_heldout), eft_train=len(result.eft_train))
    result.counts = dict(sorted(counts.items()))
    return result
