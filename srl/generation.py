"""Sampling settings and the per-row sampling step; chat prompts in, texts out (via ``srl/engine.py``).

Every row samples with its own ``torch.Generator`` seeded from the item's seed, so an item's text
does not depend on which other items share its batch through the RNG (floating-point results of a
batched forward can still differ in the last bits with the padding, which is why the loop's stages
run items in fixed chunks: see ``aift.py``). Rows stop at EOS, at the chat template's end-of-turn
token (``end_of_turn_id``), or at any id in ``stop_ids``.
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


def stop_token_ids(tokenizer: Any, model: Any | None) -> list[int]:
    """EOS of the tokenizer and of the model's generation config (a list for some chat models),
    and the chat template's end-of-turn token (``end_of_turn_id``).

    ``model`` is a torch model or a generation backend (``srl/vllm_backend.py``): only its
    ``generation_config`` is read.
    """
    ids = {tokenizer.eos_token_id, end_of_turn_id(tokenizer)}
    eos = getattr(model.generation_config, "eos_token_id", None) if getattr(model, "generation_config", None) else None
    ids.update(eos if isinstance(eos, list) else [eos])
    return sorted(i for i in ids if i is not None)


REPLY_MARK = "SRL-REPLY-MARK"  # an assistant reply whose end the template's text is found after


def end_of_turn_text(tokenizer: Any) -> str:
    """What the chat template writes right after an assistant reply, trailing whitespace dropped.

    ChatML: ``<|im_end|>``; Llama-2 ``[INST]``: the EOS text; "" when the template writes nothing.
    A conversation-final EOS some templates add after the turn's own end (``<|end|>\n</s>``) is
    dropped too: EOS stops generation anyway. Training targets end with the same text
    (``srl.chat.split_prompt_completion``), so the model learns to write this token.
    """
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": REPLY_MARK}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    at = full.rfind(REPLY_MARK)
    if at < 0:
        raise ValueError(f"the chat template does not write the assistant's reply into the conversation: {full!r}")
    tail = full[at + len(REPLY_MARK):].rstrip()
    eos = tokenizer.eos_token or ""
    if eos and tail.endswith(eos) and tail != eos:
        tail = tail[: -len(eos)].rstrip()
    return tail


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The token id that ends an assistant turn under the tokenizer's chat template, None when the
    template writes nothing after a reply or only EOS (already a stop).

    Generation stops there: with ChatML on a base tokenizer, ``<|im_end|>`` ends a turn but is not
    EOS, and without this stop every reply runs to max_new_tokens and into invented later turns.
    Raises ValueError when the end-of-turn is several tokens or an ordinary vocabulary token (which
    a reply could contain), since no single stop token would end a turn exactly.
    """
    text = end_of_turn_text(tokenizer)
    if not text or text == tokenizer.eos_token:
        return None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    if len(ids) != 1 or ids[0] not in special:
        shown = f"{len(ids)} tokens {ids}" if len(ids) != 1 else f"the ordinary vocabulary token {ids[0]}"
        raise ValueError(
            f"the chat template ends an assistant turn with {text!r}, which this tokenizer encodes as {shown}: "
            "generation could not stop at the end of a turn. Add it as a special token or use a template whose "
            f"end-of-turn is one token (model.chat_template; template: {_shorten(tokenizer.chat_template)})"
        )
    return ids[0] if ids[0] != tokenizer.eos_token_id else None


def _shorten(text: Any, limit: int = 300) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


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
    prompt, and refills finished rows. Rows stop at ``stop_token_ids`` (EOS, the template's end of
    turn) or at any of ``extra_stop_ids``.
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
    turn_ends = set(stop_token_ids(tokenizer, model))  # EOS and the template's end of turn
    stops = sorted(turn_ends | set(extra_stop_ids))
    if backend:
        results = model.generate_ids(encoded, seeds, settings, tokenizer.pad_token_id, stops)
    else:
        was_training = model.training
        model.eval()
        results = generate_ids(model, encoded, seeds, settings, tokenizer.pad_token_id, stops)
        model.train(was_training)
    # EOS and end-of-turn are cut off the text (an added end-of-turn token that is not "special"
    # would survive skip_special_tokens); extra stops such as a newline stay, then strip().
    return [
        Generated(tokenizer.decode(ids[:-1] if finished and ids and ids[-1] in turn_ends else ids, skip_special_tokens=True).strip(), len(ids), finished)
        for ids, finished in results
    ]


def sample_texts(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], seeds: Sequence[int], settings: SamplingSettings) -> list[str]:
    return [g.text for g in sample_chat(model, tokenizer, prompts, seeds, settings)]
