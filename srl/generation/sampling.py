"""Sampling settings and one token draw: temperature, nucleus (top-p) filtering, per-row generators."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch


@dataclasses.dataclass
class SamplingSettings:
    """Sampling parameters (paper: candidates T=0.7, p=0.9; prompt generation T=0.6, p=0.9)."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    batch_size: int = 16  # rows decoding at once (and items per resumable chunk of a stage)
    max_batch_tokens: int | None = None  # rows x (context + new tokens) budget; None: from free memory


@dataclasses.dataclass(frozen=True)
class Generated:
    text: str
    num_tokens: int
    finished: bool  # ended with a stop token (False: cut at max_new_tokens)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (nucleus); others -inf.

    logits: (batch, vocab). The most likely token is always kept.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    # Drop a token when the mass before it already reaches top_p.
    drop_sorted = (probs.cumsum(-1) - probs) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


NUCLEUS_CANDIDATES = 64  # tokens looked at before falling back to a full sort of the vocabulary


def nucleus(logits: torch.Tensor, top_p: float, candidates: int = NUCLEUS_CANDIDATES) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per row, the nucleus as (token ids, probabilities renormalised over it), most likely first.

    The same set and probabilities as ``softmax(top_p_filter(logits))``, without sorting the whole
    vocabulary: the ``candidates`` largest logits are sorted, their probabilities taken against the
    full normaliser, and a row whose nucleus does not close inside them (its top ``candidates`` hold
    less than ``top_p``) is sorted in full.
    """
    k = min(candidates, logits.shape[-1])
    values, ids = logits.topk(k, dim=-1)
    # Normaliser from the row maximum (values[:, 0]); torch.logsumexp is several times slower on CPU.
    top = values[:, :1]
    probs = (values - top).exp() / (logits - top).exp().sum(-1, keepdim=True)
    keep = (probs.cumsum(-1) - probs) < top_p
    wide = [r for r in range(logits.shape[0]) if k < logits.shape[-1] and float(probs[r].sum()) < top_p]
    full = torch.softmax(top_p_filter(logits[wide], top_p), dim=-1) if wide else None  # exact slow path, one batch
    out = []
    for row in range(logits.shape[0]):
        if row in wide:
            dist = full[wide.index(row)]
            kept = torch.nonzero(dist).flatten()
            order = torch.argsort(dist[kept], descending=True)
            out.append((kept[order], dist[kept[order]]))
        else:
            p = probs[row][keep[row]]
            out.append((ids[row][keep[row]], p / p.sum()))
    return out


def sample_next(logits: torch.Tensor, settings: SamplingSettings, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Next token per row: argmax when temperature <= 0, else temperature + top-p sampling.

    Each row draws with its own generator. Under top-p the draw is over the nucleus alone
    (``nucleus``), which costs a top-k instead of a sort of the vocabulary per row and step.
    """
    if settings.temperature <= 0:
        return logits.argmax(-1)
    scaled = logits.float() / settings.temperature
    if settings.top_p >= 1.0:
        probs = torch.softmax(scaled, dim=-1)
        return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)])
    rows = nucleus(scaled, settings.top_p)
    return torch.stack([ids[torch.multinomial(p, 1, generator=g)[0]] for (ids, p), g in zip(rows, generators)])
