"""Training batches: micro-batches grouped into optimizer steps, weighted so accumulation is exact.

An optimizer step sums the gradients of ``accumulate`` micro-batches on each of ``world`` processes.
Its loss must be the mean over the whole effective batch (SFT: over its target tokens; DPO: over its
pairs), not a mean of micro-batch means, which would give a token of a short micro-batch the weight
of many tokens of a long one. ``StepBatches`` therefore tags every micro-batch with the total weight
of the optimizer step it belongs to (summed over all processes), and the training modules divide
their summed loss by it (``step_loss_scale``). Micro-batches of an epoch are cut from one seeded
order (length-grouped or not); a short last micro-batch stays last. The sampler can start an epoch
part-way (``position``), so a resumed stage sees exactly the micro-batches an uninterrupted one would.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterator, Sequence

import torch

from srl.core import distributed


class StepBatches(torch.utils.data.Sampler):
    """This process's micro-batches of an epoch, as lists of ``(item index, step weight)``.

    lengths: tokens each item puts in a row (length grouping); weights: each item's share of the loss
    denominator (target tokens for SFT, 1 for a DPO pair); accumulate: micro-batches per optimizer
    step on each process. ``group_by_length``: items are shuffled, cut into windows of ``window``
    micro-batches, sorted by length inside a window and cut, and the full micro-batches shuffled.
    Without it the shuffled order is cut as it is. In both the one short micro-batch (if any) is the
    epoch's last. In a multi-process run rank r takes micro-batches r, r + world, ...; every rank
    takes the same number (DDP steps together), so up to world - 1 trailing ones are left out.
    ``position()`` returns (epoch, micro-batches of it already done on this process); the default
    counts epochs itself and starts each from its beginning.
    """

    def __init__(
        self, lengths: Sequence[int], weights: Sequence[float], micro_batch_size: int, accumulate: int = 1, seed: int = 0,
        group_by_length: bool = True, window: int = 16, position: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        if micro_batch_size < 1 or accumulate < 1:
            raise ValueError(f"micro_batch_size ({micro_batch_size}) and accumulate ({accumulate}) must be >= 1")
        if len(lengths) != len(weights):
            raise ValueError("lengths and weights must have one entry per item")
        self.lengths, self.weights = list(lengths), [float(w) for w in weights]
        self.micro_batch_size, self.accumulate, self.seed = micro_batch_size, accumulate, seed
        self.group_by_length, self.window = group_by_length, window
        self.position = position
        self._epoch = 0

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Every micro-batch of ``epoch`` over all processes, in order (rank r's j-th is ``[j * world + r]``)."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        size = self.micro_batch_size
        if not self.group_by_length:
            return [order[i:i + size] for i in range(0, len(order), size)]
        span = size * self.window
        batches: list[list[int]] = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=lambda i: -self.lengths[i])
            batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
        full = [b for b in batches if len(b) == size]
        short = [b for b in batches if len(b) < size]
        rng.shuffle(full)
        return full + short  # at most one short micro-batch: the epoch's last

    def rank_batches(self, epoch: int) -> list[list[tuple[int, float]]]:
        """This process's micro-batches of ``epoch``, each item tagged with its optimizer step's weight."""
        world, rank = distributed.world_size(), distributed.rank()
        batches = self.epoch_batches(epoch)
        per_rank = len(batches) // world
        batches = batches[:per_rank * world]
        span = self.accumulate * world  # micro-batches of one optimizer step, all processes together
        totals = []
        for start in range(0, len(batches), span):
            total = sum(self.weights[i] for b in batches[start:start + span] for i in b)
            totals += [total] * len(batches[start:start + span])
        return [[(i, totals[j]) for i in batches[j]] for j in range(rank, len(batches), world)]

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.micro_batch_size) // distributed.world_size()

    def __iter__(self) -> Iterator[list[tuple[int, float]]]:
        if self.position is not None:
            epoch, done = self.position()
        else:
            epoch, done = self._epoch, 0
            self._epoch += 1
        return iter(self.rank_batches(epoch)[done:])


class Tagged(torch.utils.data.Dataset):
    """``data`` indexed by ``(index, step weight)``: returns ``(item, step weight)``."""

    def __init__(self, data: Sequence[Any]) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, float]) -> tuple[Any, float]:
        return self.data[key[0]], key[1]


def item_weight(item: Any) -> float:
    """An item's share of the loss denominator: its target tokens (SFT example), or 1 (DPO pair)."""
    return float(item.num_target_tokens) if hasattr(item, "num_target_tokens") else 1.0


def item_length(item: Any) -> int:
    """Tokens an item puts in a batch row: an example's length, or a pair's longer reply."""
    if hasattr(item, "input_ids"):
        return len(item.input_ids)
    return max(len(item.chosen.input_ids), len(item.rejected.input_ids))


def step_loss_scale(batch: dict[str, torch.Tensor], trainer: Any, own_weight: torch.Tensor | float) -> torch.Tensor | float:
    """Factor that turns a micro-batch's SUMMED loss into its share of the effective batch's mean.

    Lightning divides each micro-batch loss by ``accumulate_grad_batches`` and DDP averages gradients
    over processes, so the summed loss is multiplied by both and divided by the step's total weight
    (``batch["step_weight"]``, from ``StepBatches``). A batch from a plain loader, without it, is
    averaged over its own weight (``own_weight``: its target tokens or pairs).
    """
    if "step_weight" not in batch:
        return 1.0 / max(float(own_weight), 1.0)
    accumulate = getattr(trainer, "accumulate_grad_batches", 1) if trainer is not None else 1
    return accumulate * distributed.world_size() / batch["step_weight"].clamp(min=1e-12)
