"""Supervised fine-tuning on IFT + EFT (M0 -> M1, paper Sec. 3.1 and 4.1).

``SFTModule`` wires the model to ``losses.model_logprobs`` (loss on reply tokens only, output head
on those tokens alone); ``SFTDataModule``
batches encoded examples with right padding. ``SFTSettings`` is what ``conf/sft`` builds: the
effective batch is reached by gradient accumulation over micro-batches.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any, Callable, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from srl.core import distributed
from srl.training.batching import (
    StepBatches,
    Tagged,
    item_length,
    item_weight,
    step_loss_scale,
)
from srl.training.encoding import collate_right
from srl.training.losses import model_logprobs
from srl.training.schedules import build_optimization
from srl.training.selection import SelectSettings
from srl.training.steps import StepStats, checkpoint_state, restore_state

log = logging.getLogger(__name__)


DROPOUT_CONFIG_KEYS = ("attention_dropout", "hidden_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout")


@dataclasses.dataclass
class SFTSettings:
    """SFT hyper-parameters (paper: lr 5.5e-6 -> 1.1e-6, batch 16, dropout 0.1)."""

    optimizer: Callable[..., torch.optim.Optimizer]
    scheduler: Callable[..., Any] | None = None
    batch_size: int = 16
    micro_batch_size: int = 4
    max_epochs: int = 1
    max_length: int = 1024
    dropout: float | None = 0.1
    use_eft: bool = True
    max_ift_examples: int | None = None
    max_eft_examples: int | None = None
    max_val_examples: int | None = 64
    seed: int = 0
    group_by_length: bool = True  # micro-batches of similar length: less padding, same examples per epoch
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute
    select: SelectSettings = dataclasses.field(default_factory=SelectSettings)  # checkpoint selection (srl.training.selection): off by default

    def __post_init__(self) -> None:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"sft.batch_size ({self.batch_size}) must be a multiple of sft.micro_batch_size ({self.micro_batch_size})")

    @property
    def accumulate_grad_batches(self) -> int:
        return self.batch_size // self.micro_batch_size


def set_dropout(model: torch.nn.Module, p: float) -> dict[str, float]:
    """Set dropout to ``p`` in the model config's dropout fields and every ``nn.Dropout``.

    Returns the previous config values so they can be restored before saving. Architectures whose
    config has only attention dropout (Llama) get dropout there alone: the paper's 0.1 cannot be
    applied to residual streams that have no dropout layer.
    """
    previous = {}
    for key in DROPOUT_CONFIG_KEYS:
        if isinstance(getattr(model.config, key, None), (int, float)):
            previous[key] = getattr(model.config, key)
            setattr(model.config, key, p)
    for name, module in model.named_modules():
        if "lora_dropout" in name:
            continue  # the adapter's own dropout is peft.dropout
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        elif hasattr(module, "attention_dropout") and isinstance(module.attention_dropout, float):
            module.attention_dropout = p  # HF attention modules read this float at call time
    if not previous:
        log.warning("model config has no dropout field; dropout %.2f applies only to nn.Dropout layers", p)
    return previous


def restore_dropout(model: torch.nn.Module, previous: dict[str, float]) -> None:
    for key, value in previous.items():
        setattr(model.config, key, value)
    for module in model.modules():
        if hasattr(module, "attention_dropout") and isinstance(module.attention_dropout, float):
            module.attention_dropout = previous.get("attention_dropout", 0.0)


class SFTModule(L.LightningModule):
    """Next-token loss on completion tokens, the token mean over the whole effective batch.

    Per optimizer step, ``stats`` collects ``loss`` (mean NLL per target token), ``target_tokens``
    and ``lr`` (``steps.StageProgress`` turns them into rows and stage statistics); logs
    ``<prefix>/val_loss`` (token-weighted over the validation set).
    """

    strict_loading = False  # checkpoints hold the trainable weights only (steps.checkpoint_state)

    def __init__(self, model: torch.nn.Module, settings: SFTSettings, metric_prefix: str = "m1/sft") -> None:
        super().__init__()
        self.model = model
        self.settings = settings
        self.prefix = metric_prefix
        self._val_sum = torch.zeros(())
        self._val_tokens = torch.zeros(())
        self.tokens_seen = 0
        self.stats = StepStats()

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean NLL over the batch's target tokens (output head on those tokens only), and their count."""
        logprobs, _ = model_logprobs(self.model, batch)
        n_tokens = torch.tensor(logprobs.numel(), device=logprobs.device)
        return -logprobs.sum() / n_tokens.clamp(min=1), n_tokens

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logprobs, _ = model_logprobs(self.model, batch)
        nll_sum, n_tokens = -logprobs.sum(), logprobs.numel()
        self.tokens_seen += int(batch["attention_mask"].sum())
        self.stats.add("loss", nll_sum.detach(), n_tokens)
        self.stats.add("target_tokens", n_tokens)
        self.stats.add("lr", self.trainer.optimizers[0].param_groups[0]["lr"], 1)
        return nll_sum * step_loss_scale(batch, self._trainer, n_tokens)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint_state(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_state(checkpoint)

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), device=self.device)
        self._val_tokens = torch.zeros((), device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, n_tokens = self._loss(batch)
        self._val_sum += loss.detach() * n_tokens
        self._val_tokens += n_tokens

    def on_validation_epoch_end(self) -> None:
        # Token-weighted mean over the whole validation set, not a mean of batch means.
        self.log(f"{self.prefix}/val_loss", self._val_sum / self._val_tokens.clamp(min=1), prog_bar=True, sync_dist=True)

    def on_fit_start(self) -> None:
        checkpointing(self.model, self.settings.gradient_checkpointing)

    def on_fit_end(self) -> None:
        checkpointing(self.model, False)

    def configure_optimizers(self) -> Any:
        s = self.settings
        return build_optimization(self.model.parameters(), s.optimizer, s.scheduler, self.trainer.estimated_stepping_batches)


def checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Switch HF gradient checkpointing (non-reentrant, so frozen inputs still get gradients).

    transformers 5.24 renamed it activation checkpointing; older versions have the old name only.
    """
    new = hasattr(model, "activation_checkpointing_enable")
    if on and new:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif is_checkpointing(model):
        (model.activation_checkpointing_disable if new else model.gradient_checkpointing_disable)()


def is_checkpointing(model: torch.nn.Module) -> bool:
    name = "is_activation_checkpointing" if hasattr(model, "activation_checkpointing_enable") else "is_gradient_checkpointing"
    return bool(getattr(model, name, False))


class SFTDataModule(L.LightningDataModule):
    """Right-padded micro-batches of encoded examples (or DPO pairs) in a seeded order.

    Training batches come from ``batching.StepBatches``: each carries ``step_weight``, the total
    weight of its optimizer step (target tokens for SFT, pairs for DPO, over all processes), so the
    modules' losses are exact means over the effective batch; under a Trainer, an epoch resumed from
    a checkpoint starts at the micro-batch it stopped at. ``collate`` turns a list of items into a
    batch (default: ``collate_right`` of SFT examples; DPO passes its pair collation).
    """

    def __init__(
        self, train: Sequence[Any], val: Sequence[Any], micro_batch_size: int, pad_id: int, seed: int = 0,
        collate: Callable[[Sequence[Any], int], dict[str, torch.Tensor]] = collate_right, group_by_length: bool = False,
    ) -> None:
        super().__init__()
        if not train:
            raise ValueError("no training examples: check the data files and the max_length setting")
        self.train, self.val = list(train), list(val)
        self.micro_batch_size, self.pad_id, self.seed, self.collate = micro_batch_size, pad_id, seed, collate
        self.group_by_length = group_by_length

    def _position(self) -> tuple[int, int]:
        """(epoch, micro-batches of it this process already trained): Lightning's restored loop state."""
        trainer = self.trainer
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        # Restored from an epoch-end checkpoint, the counter still holds the finished epoch's batches.
        return trainer.current_epoch, 0 if done >= trainer.num_training_batches else done

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        sampler = StepBatches(
            [item_length(x) for x in self.train], [item_weight(x) for x in self.train], self.micro_batch_size, accumulate,
            self.seed, self.group_by_length, position=self._position if trainer is not None else None,
        )

        def collate(tagged: list[tuple[Any, float]]) -> dict[str, torch.Tensor]:
            batch = self.collate([item for item, _ in tagged], self.pad_id)
            batch["step_weight"] = torch.tensor(tagged[0][1], dtype=torch.float32)
            return batch

        # Its own generator: building the iterator draws no number from the global RNG (dropout's).
        return DataLoader(Tagged(self.train), batch_sampler=sampler, collate_fn=collate, generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader | list:
        if not self.val:
            return []
        collate = lambda items: self.collate(items, self.pad_id)  # noqa: E731
        sampler = DistributedSampler(self.val, shuffle=False) if distributed.active() else None
        return DataLoader(self.val, batch_size=self.micro_batch_size, sampler=sampler, collate_fn=collate,
                          generator=torch.Generator().manual_seed(self.seed))


def cap(items: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    """At most ``limit`` items, a seeded random subset in the original order (all if ``limit`` is None)."""
    if limit is None or len(items) <= limit:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]
