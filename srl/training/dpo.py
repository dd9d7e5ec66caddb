"""DPO on self-rewarding pairs (M_t -> M_{t+1}, paper Sec. 3.3 and 4.1).

The reference is the model the iteration started from. Its summed log-probs of each chosen and
rejected reply are computed once, before training (``reference_logprobs``, in eval mode), and stored
with the pairs, so training holds one model. Under LoRA (``conf/peft``) the reference is the policy
with its adapter switched off: pairs carry no stored log-probs and each step computes them with the
adapter off, without gradients (one extra forward a step, no second copy, and it runs wherever the
training strategy placed the base: sharded by FSDP, quantized by bitsandbytes). Chosen and rejected
rows go through the policy in one concatenated forward. The loss is one of ``losses.PREFERENCE_LOSSES`` (``dpo.loss``; the paper's is
``sigmoid``); the per-token losses (ipo, rpo) divide the summed log-probs, the stored reference ones
included, by each reply's label-token count.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Sequence

import lightning as L
import torch

from srl.core import distributed
from srl.training.adapters import is_adapter_model
from srl.training.batching import step_loss_scale
from srl.training.encoding import EncodedExample, collate_right, encode_example
from srl.training.losses import (
    PREFERENCE_LOSSES,
    PreferenceLoss,
    model_logprobs,
    preference_loss,
    row_sums,
)
from srl.training.schedules import build_optimization
from srl.training.selection import SelectSettings
from srl.training.sft import checkpointing
from srl.training.steps import StepStats, checkpoint_state, restore_state


@dataclasses.dataclass
class DPOSettings:
    """DPO hyper-parameters (paper: sigmoid loss, beta 0.1, lr 1e-6 -> 1e-7, batch 16, dropout 0.1).

    ``loss``: one of ``losses.PREFERENCE_LOSSES``; ``beta``: the KL strength (ipo: tau);
    ``label_smoothing``: cDPO's flip probability, conservative only; ``nll_alpha``: weight of the
    chosen reply's per-token NLL, rpo only.
    """

    optimizer: Callable[..., torch.optim.Optimizer]
    scheduler: Callable[..., Any] | None = None
    beta: float = 0.1
    loss: str = "sigmoid"
    label_smoothing: float = 0.0
    nll_alpha: float = 1.0
    batch_size: int = 16
    micro_batch_size: int = 2
    max_epochs: int = 1
    max_length: int = 1024
    dropout: float | None = 0.1
    ref_batch_size: int = 8
    seed: int = 0
    group_by_length: bool = True  # micro-batches of similar length (less padding)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, more compute
    select: SelectSettings = dataclasses.field(default_factory=SelectSettings)  # checkpoint selection (srl.training.selection): off by default

    def __post_init__(self) -> None:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"dpo.batch_size ({self.batch_size}) must be a multiple of dpo.micro_batch_size ({self.micro_batch_size})")
        if self.loss not in PREFERENCE_LOSSES:
            raise ValueError(f"dpo.loss={self.loss!r} is not a preference loss; choose one of {list(PREFERENCE_LOSSES)}")
        if self.beta <= 0:
            raise ValueError(f"dpo.beta={self.beta} must be > 0")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"dpo.label_smoothing={self.label_smoothing} must be in [0, 0.5) (probability that a preference is flipped)")
        if self.label_smoothing and self.loss != "conservative":
            raise ValueError(f"dpo.label_smoothing={self.label_smoothing} is used only by dpo.loss=conservative (cDPO), not dpo.loss={self.loss}")
        if self.nll_alpha < 0:
            raise ValueError(f"dpo.nll_alpha={self.nll_alpha} must be >= 0")

    @property
    def accumulate_grad_batches(self) -> int:
        return self.batch_size // self.micro_batch_size


@dataclasses.dataclass(frozen=True)
class EncodedPair:
    chosen: EncodedExample
    rejected: EncodedExample
    ref_chosen: float | None = 0.0  # None: computed online with the adapter off (LoRA)
    ref_rejected: float | None = 0.0
    judge: bool = False  # a Meta-Rewarding judge pair (judge prompt, two judgements); else an actor pair


def encode_pair(
    tokenizer: Any, prompt: str, chosen: str, rejected: str, max_length: int, chosen_finished: bool = True, rejected_finished: bool = True,
) -> EncodedPair | None:
    """Both replies with the shared prompt, labels on the reply tokens; None if the prompt is too long.
    A reply cut at max_new_tokens (``*_finished=False``) gets no end-of-turn after the cut."""
    c, _ = encode_example(tokenizer, prompt, chosen, max_length, chosen_finished)
    r, _ = encode_example(tokenizer, prompt, rejected, max_length, rejected_finished)
    if c is None or r is None:
        return None
    return EncodedPair(c, r)


def collate_pairs(pairs: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows 0..B-1 are the chosen replies, rows B..2B-1 the rejected ones, right-padded together; ``judge`` (B,) bool
    marks judge pairs when the batch holds any."""
    batch = collate_right([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    if any(p.judge for p in pairs):
        batch["judge"] = torch.tensor([p.judge for p in pairs], dtype=torch.bool)
    if all(p.ref_chosen is not None and p.ref_rejected is not None for p in pairs):
        batch["ref_chosen"] = torch.tensor([p.ref_chosen for p in pairs], dtype=torch.float32)
        batch["ref_rejected"] = torch.tensor([p.ref_rejected for p in pairs], dtype=torch.float32)
    return batch


def policy_logprobs_and_counts(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """(chosen logps, rejected logps, chosen tokens, rejected tokens), each (B,), from one forward.

    Log-probs are summed over each reply's label tokens; tokens counts them (float), for the
    per-token losses. The output head runs on reply tokens only (``losses.model_logprobs``).
    """
    values, rows = model_logprobs(model, batch)
    n = batch["input_ids"].shape[0]
    logps, tokens = row_sums(values, rows, n), row_sums(torch.ones_like(values), rows, n)
    half = n // 2
    return logps[:half], logps[half:], tokens[:half], tokens[half:]


def policy_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of chosen and rejected replies from one concatenated forward: two (B,) tensors."""
    chosen, rejected, _, _ = policy_logprobs_and_counts(model, batch)
    return chosen, rejected


@torch.no_grad()
def online_reference(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference log-probs of a batch from a PEFT model with its adapter off, in eval mode (no dropout)."""
    if not is_adapter_model(model):
        raise ValueError("pairs without reference log-probs need a LoRA policy (peft.method=lora) to take the reference from")
    was_training = model.training
    model.eval()
    with model.disable_adapter():
        chosen, rejected = policy_logprobs(model, batch)
    model.train(was_training)
    return chosen.detach(), rejected.detach()


def batch_preference_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], settings: DPOSettings) -> PreferenceLoss:
    """``settings.loss`` of the policy ``model`` on a collated batch, against its stored reference
    log-probs, or, without them, against ``online_reference`` (LoRA)."""
    if "ref_chosen" in batch:
        ref_chosen, ref_rejected = batch["ref_chosen"], batch["ref_rejected"]
    else:
        ref_chosen, ref_rejected = online_reference(model, batch)
    chosen, rejected, chosen_tokens, rejected_tokens = policy_logprobs_and_counts(model, batch)
    s = settings
    return preference_loss(
        chosen, rejected, ref_chosen, ref_rejected, s.loss, s.beta,
        label_smoothing=s.label_smoothing, nll_alpha=s.nll_alpha, chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens,
    )


def training_autocast(precision: Any, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast a Lightning Trainer of ``precision`` runs the training forward under (``bf16-mixed``,
    ``16-mixed`` and their short names), a no-op for every other precision (``32-true``, ``bf16-true``: the
    weights themselves are in that dtype)."""
    name = str(precision)
    if name in ("bf16-mixed", "bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if name in ("16-mixed", "16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, pairs: Sequence[EncodedPair], pad_id: int, batch_size: int = 8,
                       precision: Any = None) -> list[EncodedPair]:
    """The pairs with ``ref_chosen``/``ref_rejected`` filled by ``model`` in eval mode (no dropout), under the
    autocast of the training ``precision`` (the trainer's, e.g. ``bf16-mixed``): the policy's log-probs at DPO
    step 0 are then the reference's and the implicit rewards start at 0 (outside it, bf16-mixed training starts
    from rewards of ~1e-3 on the tiny model, a bias of every pair). In a multi-process run each rank computes
    whole batches of its share (the batches one process would form, so the values are the same) and all get all."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device

    def run(indices: list[int]) -> list[tuple[float, float]]:
        values = []
        for start in range(0, len(indices), batch_size):
            chunk = [pairs[i] for i in indices[start:start + batch_size]]
            batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items()}
            with training_autocast(precision, device):
                chosen, rejected = policy_logprobs(model, batch)
            values += [(float(c), float(r)) for c, r in zip(chosen, rejected)]
        return values

    values = distributed.sharded(run, len(pairs), keys=[i // batch_size for i in range(len(pairs))])
    model.train(was_training)
    return [dataclasses.replace(p, ref_chosen=c, ref_rejected=r) for p, (c, r) in zip(pairs, values)]


class DPOModule(L.LightningModule):
    """Wires the policy to ``losses.preference_loss`` (``settings.loss``), averaged over the pairs of
    the whole effective batch (``batching.step_loss_scale``).

    Per optimizer step, ``stats`` collects ``loss``, ``rewards/chosen``, ``rewards/rejected``,
    ``rewards/margin`` (beta * summed log-ratio, whatever the loss), ``rewards/accuracy`` (chosen
    reward > rejected reward), for rpo ``nll`` (the chosen reply's per-token NLL), ``pairs`` and
    ``lr``, each a mean over the step's pairs (``steps.StageProgress`` makes rows and stage statistics).
    With ``split_kinds`` (Meta-Rewarding: actor and judge pairs in one stage) also ``actor/*`` and
    ``judge/*``: ``loss``, ``rewards/accuracy``, ``rewards/margin`` over that kind's pairs of the step
    (absent from a step without one), and ``pairs`` of each kind.
    """

    strict_loading = False  # checkpoints hold the trainable weights only (steps.checkpoint_state)

    def __init__(self, model: torch.nn.Module, settings: DPOSettings, metric_prefix: str = "m2/dpo", split_kinds: bool = False,
                 planned_steps: int | None = None) -> None:
        """``planned_steps``: the optimizer and scheduler are built once, for that many steps, and every fit
        continues them (semi-online training fits chunk after chunk); None: a fresh one per fit, for its steps."""
        super().__init__()
        self.model = model
        self.settings = settings
        self.prefix = metric_prefix
        self.split_kinds = split_kinds
        self.planned_steps = planned_steps
        self._optimization: Any = None
        self.stats = StepStats()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = batch_preference_loss(self.model, batch, self.settings)
        chosen, rejected = out.chosen_rewards, out.rejected_rewards
        n = chosen.shape[0]
        loss_sum = out.loss * n  # preference_loss returns the batch mean
        add = self.stats.add
        add("loss", loss_sum.detach(), n)
        if out.nll is not None:
            add("nll", out.nll * n, n)
        add("rewards/chosen", chosen.sum(), n)
        add("rewards/rejected", rejected.sum(), n)
        add("rewards/margin", (chosen - rejected).sum(), n)
        add("rewards/accuracy", (chosen > rejected).float().sum(), n)
        add("pairs", n)
        add("lr", self.trainer.optimizers[0].param_groups[0]["lr"], 1)
        if self.split_kinds:  # every micro-batch adds both kinds (a count of 0 too): the same names on every process
            judge = batch["judge"] if "judge" in batch else torch.zeros_like(chosen, dtype=torch.bool)
            for kind, mask in (("actor", ~judge), ("judge", judge)):
                m = mask.to(chosen.dtype)
                count = m.sum()
                add(f"{kind}/loss", (out.losses * m).sum(), count)
                add(f"{kind}/rewards/accuracy", ((chosen > rejected).to(m.dtype) * m).sum(), count)
                add(f"{kind}/rewards/margin", ((chosen - rejected) * m).sum(), count)
                add(f"{kind}/pairs", count)
        return loss_sum * step_loss_scale(batch, self._trainer, n)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint_state(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_state(checkpoint)

    def on_fit_start(self) -> None:
        checkpointing(self.model, self.settings.gradient_checkpointing)

    def on_fit_end(self) -> None:
        checkpointing(self.model, False)

    def configure_optimizers(self) -> Any:
        s = self.settings
        if self.planned_steps is None:
            return build_optimization(self.model.parameters(), s.optimizer, s.scheduler, self.trainer.estimated_stepping_batches)
        if self._optimization is None:
            self._optimization = build_optimization(self.model.parameters(), s.optimizer, s.scheduler, self.planned_steps)
        return self._optimization
