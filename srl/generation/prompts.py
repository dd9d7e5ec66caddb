"""Self-instruction (paper Sec. 3.2, step 1): new prompts written few-shot by a model from human and
earlier generated prompts, filtered (``srl.data.prompt_filters``) and written in resumable chunks;
or prompts sampled from a pool file."""

from __future__ import annotations

import collections
import dataclasses
import random
from pathlib import Path
from typing import Any, Sequence

import torch

from srl.core.hashing import derive_seed
from srl.core.progress import ChunkHook, progress_bar
from srl.data.partial import PartialJsonl
from srl.data.prompt_filters import PromptFilters, few_shot_prompt, parse_task, reject_reason, words
from srl.data.prompt_sets import read_prompt_column
from srl.data.records import PromptAttempt, PromptRecord
from srl.generation.sample import newline_token_ids, sample_chat
from srl.generation.sampling import SamplingSettings


@dataclasses.dataclass
class PromptGenSettings:
    """``conf/prompt_gen``: how many prompts, from which demonstrations, model and filters."""

    num_prompts: int = 32
    num_human_shots: int = 6
    num_model_shots: int = 2
    max_attempts: int | None = None  # default: 4 x num_prompts
    source: str = "generate"  # generate | pool
    pool_path: str | None = None  # a JSONL/JSON/Parquet file, a save_to_disk folder or a Hub data set id
    pool_split: str = "train"
    pool_field: str | None = None  # the prompt column; null: prompt, or instruction + input
    demos_path: str | None = None  # the human demonstrations' set (same forms); null: the IFT prompts (data/ift_train.jsonl)
    demos_split: str = "train"
    demos_field: str | None = None
    model: str | None = None  # None: the starting model M0
    filters: PromptFilters = dataclasses.field(default_factory=PromptFilters)
    sampling: SamplingSettings = dataclasses.field(default_factory=lambda: SamplingSettings(temperature=0.6, top_p=0.9, max_new_tokens=128))

    def __post_init__(self) -> None:
        if self.source not in ("generate", "pool"):
            raise ValueError(f"prompt_gen.source must be 'generate' or 'pool', got {self.source!r}")
        if self.source == "pool" and not self.pool_path:
            raise ValueError("prompt_gen.source=pool needs prompt_gen.pool_path (a file, saved data set or Hub id with a prompt column)")


def generate_prompts(
    model: torch.nn.Module, tokenizer: Any, human_prompts: Sequence[str], avoid: Sequence[str], settings: PromptGenSettings,
    seed: int, iteration: int, store: PartialJsonl, hook: ChunkHook | None = None,
) -> tuple[list[PromptRecord], dict[str, Any]]:
    """Few-shot self-instruction until ``num_prompts`` pass the filters or attempts run out."""
    if not human_prompts:
        raise ValueError("prompt generation needs IFT prompts as demonstrations; data/ift_train.jsonl is empty")
    chunk = settings.sampling.batch_size
    max_attempts = settings.max_attempts or 4 * settings.num_prompts
    attempts: list[PromptAttempt] = store.read(chunk)
    existing = [words(p) for p in list(human_prompts) + list(avoid)]
    accepted = [a.text for a in attempts if a.rejected is None]
    existing += [words(t) for t in accepted]
    bar = progress_bar(settings.num_prompts, min(len(accepted), settings.num_prompts), f"iter{iteration} prompts")
    # Demonstrations are one task a line, so a task ends at the first line break (and the model
    # does not go on listing "Task 10: ...").
    newline_ids = newline_token_ids(tokenizer)
    while len(accepted) < settings.num_prompts and len(attempts) < max_attempts:
        ids = list(range(len(attempts), min(len(attempts) + chunk, max_attempts)))
        seeds = [derive_seed(seed, iteration, "prompts", i) for i in ids]
        demos = [few_shot_prompt(human_prompts, accepted, random.Random(s), settings.num_human_shots, settings.num_model_shots) for s in seeds]
        outputs = sample_chat(model, tokenizer, demos, seeds, settings.sampling, extra_stop_ids=newline_ids)
        new = []
        for i, out in zip(ids, outputs):
            task = parse_task(out.text)
            reason = reject_reason(task, existing, settings.filters)
            if reason is None and len(accepted) >= settings.num_prompts:
                reason = "enough_prompts"
            if reason is None:
                accepted.append(task)
                existing.append(words(task))
                bar.update(1)
            new.append(PromptAttempt(attempt=i, text=task, rejected=reason))
        store.append(new)
        attempts += new
        if hook:
            hook("prompts", len(attempts))
    bar.close()
    reasons = collections.Counter(a.rejected for a in attempts if a.rejected is not None)
    records = [PromptRecord(f"it{iteration}-p{a.attempt:05d}", a.text, "generated") for a in attempts if a.rejected is None]
    judged = len(records) + sum(n for r, n in reasons.items() if r != "enough_prompts")
    metrics: dict[str, Any] = {"attempts": len(attempts), "accepted": len(records), "acceptance_rate": len(records) / max(1, judged)}
    metrics.update({f"rejected/{k}": v for k, v in sorted(reasons.items())})
    return records, metrics


def pool_prompts(path: str | Path, settings: PromptGenSettings, seed: int, iteration: int) -> tuple[list[PromptRecord], dict[str, Any]]:
    """``num_prompts`` prompts sampled (seeded) from a pool: column ``pool_field``, or ``prompt``, or ``instruction`` (+ ``input``)."""
    _, rows = read_prompt_column(str(path), settings.pool_split, settings.pool_field, what="prompt_gen.pool_path")
    pool = [text for _, text in rows]
    rng = random.Random(derive_seed(seed, iteration, "pool"))
    picked = sorted(rng.sample(range(len(pool)), min(settings.num_prompts, len(pool))))
    records = [PromptRecord(f"it{iteration}-pool{i:05d}", pool[i].strip(), "pool") for i in picked]
    return records, {"attempts": len(records), "accepted": len(records), "acceptance_rate": 1.0, "pool_size": len(pool)}


def demonstrations(settings: PromptGenSettings, ift_prompts: Sequence[str]) -> list[str]:
    """The human prompts shown as few-shot demonstrations: ``demos_path``'s column, or the IFT prompts."""
    if not settings.demos_path:
        return list(ift_prompts)
    return [text for _, text in read_prompt_column(settings.demos_path, settings.demos_split, settings.demos_field, what="prompt_gen.demos_path")[1]]
