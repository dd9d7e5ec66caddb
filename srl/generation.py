"""Sampling from a causal LM: batched, left-padded, KV-cached, with one RNG per item.

Every row of a batch samples with its own ``torch.Generator`` seeded from the item's seed, so an
item's text does not depend on which other items share its batch through the RNG (floating-point
results of a batched forward can still differ in the last bits with the padding, which is why the
loop's stages batch items in fixed chunks: see ``loop.py``). Rows stop at EOS (or any id in
``stop_ids``) and the batch stops when every row has. Temperature 0 is greedy decoding.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Iterator, Sequence

import torch

from srl.chat import collate_left, render_prompt


@dataclasses.dataclass
class SamplingSettings:
    """Sampling parameters (paper: candidates T=0.7, p=0.9; prompt generation T=0.6, p=0.9)."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    batch_size: int = 16


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


def sample_next(logits: torch.Tensor, settings: SamplingSettings, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Next token per row: argmax when temperature <= 0, else temperature + top-p sampling."""
    if settings.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(top_p_filter(logits.float() / settings.temperature, settings.top_p), dim=-1)
    return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)])


def _cache_argument(model: torch.nn.Module) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache``; accept both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(output: Any) -> Any:
    return output["cache"] if "cache" in output else output["past_key_values"]


@torch.no_grad()
def generate_ids(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], seeds: Sequence[int], settings: SamplingSettings,
    pad_id: int, stop_ids: Sequence[int],
) -> list[tuple[list[int], bool]]:
    """Continue each token-id prompt; returns (new ids, finished) per prompt.

    The new ids end with the stop token when the row finished (decoding with
    ``skip_special_tokens`` drops EOS; other stop tokens, such as a newline, stay in the text).
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate_left(prompts, pad_id).items()}
    attention = batch["attention_mask"]
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    stops = torch.tensor(list(stop_ids), device=device)
    cache_arg = _cache_argument(model)
    out = model(input_ids=batch["input_ids"], attention_mask=attention, position_ids=positions, use_cache=True)
    past, logits = _cache_of(out), out.logits[:, -1, :]
    last_pos = positions[:, -1:]
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    tokens: list[list[int]] = [[] for _ in prompts]
    for _ in range(settings.max_new_tokens):
        nxt = sample_next(logits.cpu(), settings, generators).to(device)
        for i in torch.nonzero(~finished).flatten().tolist():
            tokens[i].append(int(nxt[i]))
        finished |= torch.isin(nxt, stops)
        if bool(finished.all()):
            break
        nxt = nxt.masked_fill(finished, pad_id)
        attention = torch.cat([attention, (~finished).long()[:, None]], dim=1)
        last_pos = last_pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=attention, position_ids=last_pos, use_cache=True, **{cache_arg: past})
        past, logits = _cache_of(out), out.logits[:, -1, :]
    return [(t, bool(f)) for t, f in zip(tokens, finished.tolist())]


def stop_token_ids(tokenizer: Any, model: torch.nn.Module) -> list[int]:
    ids = {tokenizer.eos_token_id}
    eos = getattr(model.generation_config, "eos_token_id", None) if getattr(model, "generation_config", None) else None
    ids.update(eos if isinstance(eos, list) else [eos])
    return sorted(i for i in ids if i is not None)


def iter_batches(order: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        yield list(order[start:start + size])


def newline_token_ids(tokenizer: Any) -> list[int]:
    """Ids of every vocabulary token whose text contains a line break (to stop at the end of a line)."""
    vocab = tokenizer.get_vocab()
    return sorted(i for i in vocab.values() if "\n" in tokenizer.decode([i]))


def sample_chat(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], seeds: Sequence[int], settings: SamplingSettings,
    extra_stop_ids: Sequence[int] = (),
) -> list[Generated]:
    """One reply per user prompt (chat template applied), in the order of ``prompts``.

    Prompts are sorted by length into batches of ``settings.batch_size`` so padding stays small.
    Rows stop at EOS or at any of ``extra_stop_ids``.
    """
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt is needed")
    was_training = model.training
    model.eval()
    encoded = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    stops = sorted(set(stop_token_ids(tokenizer, model)) | set(extra_stop_ids))
    out: list[Generated | None] = [None] * len(prompts)
    for rows in iter_batches(order, settings.batch_size):
        results = generate_ids(model, [encoded[i] for i in rows], [seeds[i] for i in rows], settings, tokenizer.pad_token_id, stops)
        for i, (ids, finished) in zip(rows, results):
            out[i] = Generated(tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids), finished)
    model.train(was_training)
    return out  # type: ignore[return-value]


def sample_texts(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], seeds: Sequence[int], settings: SamplingSettings) -> list[str]:
    return [g.text for g in sample_chat(model, tokenizer, prompts, seeds, settings)]
