"""The schedule of semi-online self-rewarding (Lanchantin et al. 2025, arXiv 2506.21495): the model that
generates and judges is synced with the policy every ``sync_every`` optimizer steps, instead of once
per model (offline, the 2024 paper: sync_every = infinity) or every step (fully online: 1).

An iteration's prompts are cut into chunks of ``sync_every x dpo.batch_size`` prompts, in order. Chunk
k is answered, judged and paired by the policy as it is after training on chunks 0..k-1, then trained
on (``dpo.max_epochs`` passes over its pairs); so, with a pair from every prompt, the policy is synced
every ``sync_every`` optimizer steps, and a chunk with fewer pairs trains fewer steps before the next
sync (``sync_steps``). The reference of DPO stays M_t, the model the iteration started from.
"""

from __future__ import annotations

import math
from typing import Sequence


def chunk_ranges(num_prompts: int, sync_every: int, batch_size: int) -> list[range]:
    """Prompt indices of each chunk: ``sync_every * batch_size`` prompts a chunk, the last one shorter."""
    if sync_every < 1 or batch_size < 1:
        raise ValueError(f"sync_every ({sync_every}) and batch_size ({batch_size}) must be >= 1")
    size = sync_every * batch_size
    return [range(start, min(start + size, num_prompts)) for start in range(0, num_prompts, size)]


def chunk_steps(num_pairs: int, batch_size: int, epochs: int = 1) -> int:
    """Optimizer steps a chunk of ``num_pairs`` pairs trains: ``epochs`` passes of ceil(pairs / batch) steps."""
    return epochs * math.ceil(num_pairs / batch_size)


def sync_steps(pairs_per_chunk: Sequence[int], batch_size: int, epochs: int = 1) -> list[int]:
    """The policy step that generates each chunk: chunk k is generated after every step of chunks 0..k-1."""
    out, step = [], 0
    for n in pairs_per_chunk:
        out.append(step)
        step += chunk_steps(n, batch_size, epochs)
    return out
