"""The N candidate replies of the current model to each prompt (paper Sec. 3.2, step 2), sampled
in resumable chunks with a seed per (prompt, candidate), and their length/truncation metrics."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Sequence

import torch

from srl.core.hashing import derive_seed
from srl.core.progress import ChunkHook, progress_bar
from srl.data.partial import PartialJsonl
from srl.data.records import Candidate, PromptRecord
from srl.generation.sample import sample_chat
from srl.generation.sampling import SamplingSettings


@dataclasses.dataclass
class CandidateSettings:
    """``conf/generation``: N replies per prompt from the current model (paper: 4, T=0.7, p=0.9)."""

    num_candidates: int = 4
    sampling: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)


def generate_candidates(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[PromptRecord], settings: CandidateSettings,
    seed: int, iteration: int, store: PartialJsonl, hook: ChunkHook | None = None,
) -> dict[str, Any]:
    """N sampled replies per prompt, written as ``Candidate`` records in (prompt, candidate) order."""
    items = [(p, k) for p in prompts for k in range(settings.num_candidates)]
    chunk = settings.sampling.batch_size
    done = store.read(chunk)
    bar = progress_bar(len(items), len(done), f"iter{iteration} candidates")
    for start in range(len(done), len(items), chunk):
        part = items[start:start + chunk]
        seeds = [derive_seed(seed, iteration, "candidates", p.prompt_id, k) for p, k in part]
        outputs = sample_chat(model, tokenizer, [p.prompt for p, _ in part], seeds, settings.sampling)
        store.append(Candidate(p.prompt_id, k, p.prompt, o.text, o.num_tokens, o.finished) for (p, k), o in zip(part, outputs))
        bar.update(len(part))
        if hook:
            hook("candidates", start + len(part))
    bar.close()
    return {}


def candidate_metrics(candidates: Sequence[Candidate]) -> dict[str, Any]:
    lengths = [c.num_tokens for c in candidates] or [0]
    return {
        "count": len(candidates),
        "tokens_mean": statistics.fmean(lengths),
        "tokens_median": statistics.median(lengths),
        "tokens_max": max(lengths),
        "truncated_rate": sum(not c.finished for c in candidates) / max(1, len(candidates)),
        "empty": sum(not c.response for c in candidates),
    }
