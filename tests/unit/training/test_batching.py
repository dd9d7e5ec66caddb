"""Micro-batches of an epoch (batching.StepBatches): every item once, similar lengths together,
seeded, the short micro-batch last, each tagged with its optimizer step's total weight, resumable."""

from __future__ import annotations

import random

import pytest

from srl.training.batching import StepBatches, step_loss_scale


def indices(batches):
    return [[i for i, _ in b] for b in batches]


def padded_tokens(batches, lengths):
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_every_item_once_per_epoch_and_epochs_differ():
    lengths = [random.Random(i).randint(5, 500) for i in range(37)]
    sampler = StepBatches(lengths, [1] * 37, micro_batch_size=4, seed=3, window=4)
    first, second = indices(sampler), indices(sampler)
    assert len(first) == len(sampler) == 10
    assert sorted(i for b in first for i in b) == list(range(37))
    assert sorted(i for b in second for i in b) == list(range(37))
    assert first != second  # reshuffled
    assert indices(StepBatches(lengths, [1] * 37, 4, seed=3, window=4)) == first  # seeded


@pytest.mark.parametrize("group", [True, False])
def test_the_short_micro_batch_is_the_epochs_last(group):
    # 9 items in micro-batches of 2: sizes [2, 2, 2, 2, 1], never [2, 2, 1, 2, 2].
    for seed in range(20):
        sizes = [len(b) for b in StepBatches(list(range(9)), [1] * 9, 2, seed=seed, group_by_length=group, window=2)]
        assert sizes == [2, 2, 2, 2, 1]


def test_grouping_cuts_padding():
    # Lengths alternate 10 and 1000: random batches of 2 almost always pair a short with a long one.
    lengths = [10, 1000] * 32
    grouped = indices(StepBatches(lengths, [1] * 64, 2, seed=0, window=32))
    # With the window covering everything, every batch is two equal lengths: no padding at all.
    assert padded_tokens(grouped, lengths) == sum(lengths)
    plain = indices(StepBatches(lengths, [1] * 64, 2, seed=0, group_by_length=False))
    assert padded_tokens(plain, lengths) > sum(lengths)


def test_each_micro_batch_carries_its_optimizer_steps_total_weight():
    weights = [1, 2, 3, 4, 5, 6, 7]  # e.g. target tokens
    sampler = StepBatches([1] * 7, weights, micro_batch_size=2, accumulate=2, seed=0, group_by_length=False)
    batches = list(sampler)
    assert [len(b) for b in batches] == [2, 2, 2, 1]
    steps = [batches[0] + batches[1], batches[2] + batches[3]]  # accumulate 2: two micro-batches a step
    for step in steps:
        total = sum(weights[i] for i, _ in step)
        assert all(w == total for _, w in step)
    assert sum(w for _, w in batches[0][:1]) + sum(w for _, w in batches[2][:1]) == sum(weights)


def test_a_resumed_epoch_starts_where_it_stopped():
    full = list(StepBatches(list(range(20)), [1] * 20, 3, seed=4, position=lambda: (1, 0)))
    resumed = list(StepBatches(list(range(20)), [1] * 20, 3, seed=4, position=lambda: (1, 5)))
    assert resumed == full[5:]
    assert full != list(StepBatches(list(range(20)), [1] * 20, 3, seed=4, position=lambda: (0, 0)))


def test_loss_scale_undoes_lightnings_division_and_divides_by_the_step_weight():
    import torch

    class Trainer:
        accumulate_grad_batches = 4

    assert float(step_loss_scale({"step_weight": torch.tensor(80.0)}, Trainer(), 10)) == pytest.approx(4 / 80)
    assert step_loss_scale({}, None, 10) == pytest.approx(1 / 10)  # a plain loader: the micro-batch's own mean
