"""Learning-rate schedules, built with ``_partial_: true`` and completed with the step count."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, final_lr: float, warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to each group's lr, then cosine decay to ``final_lr`` at ``total_steps``.

    The paper states SFT lr 5.5e-6 decaying to 1.1e-6 and DPO 1e-6 to 1e-7 (Sec. 4.1); the cosine
    shape and the warm-up are our choice.
    """
    total_steps = max(int(total_steps), 1)
    base = [group["lr"] for group in optimizer.param_groups]
    for lr in base:
        if final_lr > lr:
            raise ValueError(f"final_lr {final_lr} is above the base lr {lr}")

    def factor(i: int):
        floor = final_lr / base[i]

        def f(step: int) -> float:
            if warmup_steps and step < warmup_steps:
                return (step + 1) / warmup_steps
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        return f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(i) for i in range(len(base))])


def build_optimization(
    params: Iterable[torch.nn.Parameter], optimizer: Callable[..., torch.optim.Optimizer], scheduler: Callable[..., Any] | None, total_steps: int
) -> Any:
    """What ``LightningModule.configure_optimizers`` returns for an optimizer partial and an optional
    scheduler partial (stepped every optimizer step)."""
    opt = optimizer([p for p in params if p.requires_grad])
    if scheduler is None:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler(opt, total_steps=total_steps), "interval": "step"}}
