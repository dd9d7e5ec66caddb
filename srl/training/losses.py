"""Losses and sequence log-probabilities (pure functions, unit-tested against hand computations)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

from srl.training.encoding import IGNORE_INDEX


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


# Config fields of families whose forward changes the logits after the output head (Gemma 2/3
# soft-capping, Cohere's logit_scale, Granite's logits_scaling, FalconH1's lm_head_multiplier).
HEAD_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")


def _full_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logprobs, mask = token_logprobs(logits, batch["labels"])
    return logprobs[mask], mask.nonzero()[:, 0]


def _body_and_head(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    return selected_logprobs(hidden, batch["labels"], head)


@torch.no_grad()
def head_is_plain(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> bool:
    """Whether logits are exactly ``head(decoder(x))``, so the head may run on target tokens only.

    Decided once per model object: False for a config with a known logit transform (non-None and not
    1) or a model that does not expose decoder and head; otherwise checked on one row of ``batch``
    against the full forward (in eval mode), which catches a transform srl does not know by name.
    """
    cached = getattr(model, "_srl_head_is_plain", None)
    if cached is not None:
        return cached
    cfg = getattr(model, "config", None)
    transformed = any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in HEAD_TRANSFORMS) or getattr(model, "logit_scale", None) is not None
    plain = not transformed and hasattr(model, "get_decoder") and model.get_decoder() is not None and model.get_output_embeddings() is not None
    if plain:
        row = {k: v[:1] for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}
        was_training = model.training
        model.eval()
        fast, _ = _body_and_head(model, row)
        full, _ = _full_forward(model, row)
        model.train(was_training)
        plain = bool(torch.allclose(fast.float(), full.float(), atol=1e-4, rtol=1e-4))
    try:
        model._srl_head_is_plain = plain
    except AttributeError:
        pass
    return plain


def model_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``selected_logprobs`` through an HF causal LM: decoder body once, output head on target tokens only.

    Models whose logits are more than the head's linear map (``head_is_plain``: soft-capping, logit
    scaling) go through the full forward instead, so training sees the logits generation samples from.
    """
    if head_is_plain(model, batch):
        return _body_and_head(model, batch)
    return _full_forward(model, batch)


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


PREFERENCE_LOSSES = ("sigmoid", "ipo", "conservative", "rpo")


@dataclasses.dataclass(frozen=True)
class PreferenceLoss:
    """What ``preference_loss`` returns.

    ``loss``: scalar, mean over the batch, with gradient. ``chosen_rewards``/``rejected_rewards``:
    (batch,), beta * (log pi - log pi_ref) on SUMMED log-probs for every kind (so the logged rewards
    compare across losses), detached. ``nll``: rpo only, the batch mean of the length-normalised
    NLL of the chosen reply (already inside ``loss``, times nll_alpha), detached; None otherwise.
    ``losses``: (batch,), each pair's loss (``loss`` is their mean), detached: for statistics of a subset
    of the pairs (Meta-Rewarding's actor and judge pairs).
    """

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    nll: torch.Tensor | None = None
    losses: torch.Tensor | None = None


def _per_token(logps: torch.Tensor, tokens: torch.Tensor | None, kind: str, name: str) -> torch.Tensor:
    if tokens is None:
        raise ValueError(f"preference loss {kind!r} averages log-probs over each reply's tokens: pass {name} (batch,)")
    return logps / tokens.to(logps.dtype).clamp(min=1)


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    kind: str,
    beta: float,
    label_smoothing: float = 0.0,
    nll_alpha: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> PreferenceLoss:
    """A pairwise preference loss on SUMMED reply log-probs, each (batch,); returns ``PreferenceLoss``.

    With h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected), per pair:

    - ``sigmoid`` (DPO, Rafailov et al. 2023; the paper's Sec. 3.3): -log sigmoid(beta h).
    - ``ipo`` (Azar et al. 2023, arXiv 2310.12036): (h' - 1/(2 beta))^2, with h' as h but on
      log-probs averaged over each reply's tokens (``chosen_tokens``/``rejected_tokens``, as the
      IPO authors and TRL do); beta is the IPO tau, and h' is regressed to 1/(2 tau).
    - ``conservative`` (cDPO, Mitchell 2023): the preference label is wrong with probability
      eps = ``label_smoothing`` in [0, 0.5): -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h).
    - ``rpo`` (Iterative RPO, Pang et al. 2024, arXiv 2404.19733): sigmoid DPO + ``nll_alpha`` *
      (-policy_chosen / chosen_tokens), the chosen reply's NLL per token (paper: alpha 1).

    Options a kind does not use are ignored. Token counts are clamped to >= 1.
    """
    if kind not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {kind!r}; choose one of {list(PREFERENCE_LOSSES)}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 0.5) (probability that a preference is flipped)")
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    nll = None
    if kind == "ipo":
        chosen_ratio = _per_token(policy_chosen - ref_chosen, chosen_tokens, kind, "chosen_tokens")
        rejected_ratio = _per_token(policy_rejected - ref_rejected, rejected_tokens, kind, "rejected_tokens")
        losses = (chosen_ratio - rejected_ratio - 1.0 / (2.0 * beta)) ** 2
    else:
        logits = chosen_rewards - rejected_rewards  # beta * h
        losses = -F.logsigmoid(logits)
        if kind == "conservative":
            losses = (1.0 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-logits)
        elif kind == "rpo":
            per_pair_nll = -_per_token(policy_chosen, chosen_tokens, kind, "chosen_tokens")
            nll = per_pair_nll.mean()
            losses = losses + nll_alpha * per_pair_nll  # the mean is unchanged: mean(l + a n) = mean(l) + a mean(n)
    return PreferenceLoss(losses.mean(), chosen_rewards.detach(), rejected_rewards.detach(), None if nll is None else nll.detach(),
                          losses.detach())


def dpo_loss(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO (Rafailov et al., 2023), as in the paper's Sec. 3.3; inputs are summed log-probs, (batch,).

    reward = beta * (log pi(y|x) - log pi_ref(y|x)); loss = -log sigmoid(reward_chosen - reward_rejected),
    averaged over the batch. Returns (loss, chosen rewards, rejected rewards); rewards are detached.
    ``preference_loss(..., "sigmoid", beta)`` as a tuple.
    """
    out = preference_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, "sigmoid", beta)
    return out.loss, out.chosen_rewards, out.rejected_rewards
