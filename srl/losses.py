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


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's label tokens: (batch,)."""
    logprobs, _ = token_logprobs(logits, labels)
    return logprobs.sum(-1)


def dpo_loss(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO (Rafailov et al., 2023), as in the paper's Sec. 3.3; inputs are summed log-probs, (batch,).

    reward = beta * (log pi(y|x) - log pi_ref(y|x)); loss = -log sigmoid(reward_chosen - reward_rejected),
    averaged over the batch. Returns (loss, chosen rewards, rejected rewards); rewards are detached.
    """
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()
