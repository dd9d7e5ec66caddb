"""Sampling text from a causal LM in left-padded batches.

This is the straightforward engine (HF ``generate`` on length-sorted batches); the loop's stages
call it through ``sample_texts`` so a faster engine can replace it without touching them.
Repeatability: prompts are sorted by length and cut into fixed batches, and each batch's RNG is
seeded from the seed of its first item, so the same inputs and seeds give the same texts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from srl.chat import collate_left, render_prompt


@dataclasses.dataclass
class SamplingSettings:
    """Sampling parameters (paper: candidates T=0.7, p=0.9; prompt generation T=0.6, p=0.9)."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    batch_size: int = 16


@torch.no_grad()
def sample_texts(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], seeds: Sequence[int], settings: SamplingSettings) -> list[str]:
    """One sampled reply per user prompt (chat template applied), in the order of ``prompts``."""
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt is needed")
    was_training = model.training
    model.eval()
    encoded = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    out: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), settings.batch_size):
        rows = order[start:start + settings.batch_size]
        batch = {k: v.to(device) for k, v in collate_left([encoded[i] for i in rows], tokenizer.pad_token_id).items()}
        torch.manual_seed(seeds[rows[0]])
        greedy = settings.temperature <= 0
        generated = model.generate(
            **batch,
            do_sample=not greedy,
            temperature=None if greedy else settings.temperature,
            top_p=None if greedy else settings.top_p,
            max_new_tokens=settings.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row, seq in zip(rows, generated[:, batch["input_ids"].shape[1]:]):
            out[row] = tokenizer.decode(seq, skip_special_tokens=True).strip()
    model.train(was_training)
    return out
