"""Sampling settings and the per-row sampling step; chat prompts in, texts out (via ``srl/engine.py``).

Every row samples with its own ``torch.Generator`` seeded from the item's seed, so an item's text
does not depend on which other items share its batch through the RNG (floating-point results of a
batched forward can still differ in the last bits with the padding, which is why the loop's stages
run items in fixed chunks: see ``aift.py``). Rows stop at EOS (or any id in ``stop_ids``).
Temperature 0 is greedy decoding.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from srl import distributed
from srl.chat import render_prompt


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


def generate_ids(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], seeds: Sequence[int], settings: SamplingSettings,
    pad_id: int, stop_ids: Sequence[int],
) -> list[tuple[list[int], bool]]:
    """Continue each token-id prompt with the engine (``srl/engine.py``); returns (new ids, finished).

    The new ids end with the stop token when the row finished (decoding with
    ``skip_special_tokens`` drops EOS; other stop tokens, such as a newline, stay in the text).
    """
    from srl.engine import Engine

    with torch.no_grad():
        return Engine(model, settings, pad_id, stop_ids).run(prompts, seeds)


def stop_token_ids(tokenizer: Any, model: torch.nn.Module | None) -> list[int]:
    """EOS of the tokenizer and of the model's generation config (a list for some chat models)."""
    ids = {tokenizer.eos_token_id}
    eos = getattr(model.generation_config, "eos_token_id", None) if getattr(model, "generation_config", None) else None
    ids.update(eos if isinstance(eos, list) else [eos])
    return sorted(i for i in ids if i is not None)


def newline_token_ids(tokenizer: Any) -> list[int]:
    """Ids of every vocabulary token whose text contains a line break (to stop at the end of a line)."""
    vocab = tokenizer.get_vocab()
    return sorted(i for i in vocab.values() if "\n" in tokenizer.decode([i]))


def sample_chat(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], seeds: Sequence[int], settings: SamplingSettings,
    extra_stop_ids: Sequence[int] = (),
) -> list[Generated]:
    """One reply per user prompt (chat template applied), in the order of ``prompts``.

    The engine batches across prompts, shares their common prefix and one prefill per distinct
    prompt, and refills finished rows. Rows stop at EOS or at any of ``extra_stop_ids``.
    """
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt is needed")
    if distributed.active() and not getattr(model, "spans_ranks", False):  # each rank its share, all results on every rank
        return distributed.sharded(
            lambda idx: _sample_local(model, tokenizer, [prompts[i] for i in idx], [seeds[i] for i in idx], settings, extra_stop_ids),
            len(prompts), keys=prompts,
        )
    return _sample_local(model, tokenizer, prompts, seeds, settings, extra_stop_ids)


def _sample_local(
    model: Any, tokenizer: Any, prompts: Sequence[str], seeds: Sequence[int], settings: SamplingSettings, extra_stop_ids: Sequence[int],
) -> list[Generated]:
    encoded = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    backend = hasattr(model, "generate_ids")  # a generation backend (srl/vllm_backend.py), not a torch module
    stops = sorted(set(stop_token_ids(tokenizer, model)) | set(extra_stop_ids))
    if backend:
        results = model.generate_ids(encoded, seeds, settings, tokenizer.pad_token_id, stops)
    else:
        was_training = model.training
        model.eval()
        results = generate_ids(model, encoded, seeds, settings, tokenizer.pad_token_id, stops)
        model.train(was_training)
    return [Generated(tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids), finished) for ids, finished in results]


def sample_texts(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], seeds: Sequence[int], settings: SamplingSettings) -> list[str]:
    return [g.text for g in sample_chat(model, tokenizer, prompts, seeds, settings)]
