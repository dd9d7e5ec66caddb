from __future__ import annotations

import math

import pytest
import torch

from srl.training.schedules import warmup_cosine


def lrs(total: int, warmup: int, base: float, final: float) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = warmup_cosine(opt, total_steps=total, final_lr=final, warmup_steps=warmup)
    out = []
    for _ in range(total + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_from_base_to_final():
    values = lrs(total=4, warmup=0, base=5.5e-6, final=1.1e-6)
    # step k: final + (base - final) * (1 + cos(pi k / 4)) / 2
    expected = [1.1e-6 + 4.4e-6 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(5)]
    assert values == pytest.approx(expected, rel=1e-9)
    assert values[0] == pytest.approx(5.5e-6) and values[-1] == pytest.approx(1.1e-6)


def test_warmup_is_linear():
    values = lrs(total=6, warmup=2, base=1.0, final=0.1)
    assert values[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert values[-1] == pytest.approx(0.1)


def test_final_above_base_is_rejected():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-6)
    with pytest.raises(ValueError, match="final_lr"):
        warmup_cosine(opt, total_steps=3, final_lr=1e-5)
