"""Losses and sequence log-probabilities (pure functions, unit-tested against hand computations)."""

from __future__ import annotations

from typing import Callable

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


def selected_logprobs(hidden: torch.Tensor, labels: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the label tokens, computing the vocabulary projection only where a label is.

    hidden: (batch, seq, dim) final hidden states, position t predicts token t+1; labels: (batch, seq)
    with -100 where no loss is taken; head maps (n, dim) -> (n, vocab) logits. Returns (logprobs (n,),
    row (n,)): one entry per target token, with its batch row. Equal to ``token_logprobs`` on the
    full logits, without the (batch, seq, vocab) tensor: prompts and padding never reach the head.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    rows = mask.nonzero()[:, 0]
    logits = head(hidden[:, :-1][mask]).float()
    logprobs = torch.gather(F.log_softmax(logits, dim=-1), 1, targets[mask].unsqueeze(-1)).squeeze(-1)
    return logprobs, rows


def model_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``selected_logprobs`` through an HF causal LM: decoder body once, output head on target tokens only.

    Models whose head is more than a linear map (logit soft-capping, logit scaling) or that do not
    expose their decoder go through the full forward instead, which gives the same values.
    """
    cfg = getattr(model, "config", None)
    plain_head = getattr(cfg, "final_logit_softcapping", None) is None and getattr(model, "logit_scale", None) is None
    decoder = model.get_decoder() if plain_head and hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings() if decoder is not None else None
    if decoder is None or head is None:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        logprobs, mask = token_logprobs(logits, batch["labels"])
        return logprobs[mask], mask.nonzero()[:, 0]
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    return selected_logprobs(hidden, batch["labels"], head)


def row_sums(values: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Sum per batch row: (n,) values with their rows -> (num_rows,)."""
    return values.new_zeros(num_rows).index_add(0, rows, values)


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
