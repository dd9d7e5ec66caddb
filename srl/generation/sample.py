"""Sampling settings and the per-row sampling step; chat prompts in, texts out (via ``srl/generation/engine.py``).

Every row samples with its own ``torch.Generator`` seeded from the item's seed, so an item's text
does not depend on which other items share its batch through the RNG (floating-point results of a
batched forward can still differ in the last bits with the padding, which is why the loop's stages
run items in fixed chunks: see ``srl/generation/candidates.py``). Rows stop at EOS, at the chat template's end-of-turn
token (``end_of_turn_id``), or at any id in ``stop_ids``.
Temperature 0 is greedy decoding.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from srl.core import distributed
from srl.generation.sampling import Generated, SamplingSettings
from srl.models.chat import end_of_turn_id, render_prompt


def generate_ids(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], seeds: Sequence[int], settings: SamplingSettings,
    pad_id: int, stop_ids: Sequence[int],
) -> list[tuple[list[int], bool]]:
    """Continue each token-id prompt with the engine (``srl/generation/engine.py``); returns (new ids, finished).

    The new ids end with the stop token when the row finished (decoding with
    ``skip_special_tokens`` drops EOS; other stop tokens, such as a newline, stay in the text).
    """
    from srl.generation.engine import Engine

    with torch.no_grad():
        return Engine(model, settings, pad_id, stop_ids).run(prompts, seeds)


def stop_token_ids(tokenizer: Any, model: Any | None) -> list[int]:
    """EOS of the tokenizer and of the model's generation config (a list for some chat models),
    and the chat template's end-of-turn token (``end_of_turn_id``).

    ``model`` is a torch model or a generation backend (``srl/generation/vllm.py``): only its
    ``generation_config`` is read.
    """
    ids = {tokenizer.eos_token_id, end_of_turn_id(tokenizer)}
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
    backend = hasattr(model, "generate_ids")  # a generation backend (srl/generation/vllm.py), not a torch module
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
