"""Losses and sequence log-probabilities (pure functions, unit-tested against hand computations)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from srl.chat import IGNORE_INDEX


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next label token, and its mask.

    logits: (batch, seq, vocab), position t predicts token t+1; labels: (batch, seq) with -100 where
    no loss is taken. Returns (logprobs, mask), each (batch, seq-1); logprobs are 0 where masked.
    """
    shifted_logits = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe = targets.masked_fill(~mask, 0)
    logprobs = torch.gather(F.log_softmax(shifted_logits, dim=-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return logprobs * mask, mask


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean negative log-likelihood over all target tokens of the batch; also returns the token count."""
    logprobs, mask = token_logprobs(logits, labels)
    n_tokens = mask.sum()
    return -logprobs.sum() / n_tokens.clamp(min=1), n_tokens
