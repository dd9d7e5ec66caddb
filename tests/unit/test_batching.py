"""Length-grouped micro-batches: every item once per epoch, similar lengths together, seeded."""

from __future__ import annotations

import random

from srl.sft import LengthGroupedBatches


def padded_tokens(batches, lengths):
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_every_item_once_per_epoch_and_epochs_differ():
    lengths = [random.Random(i).randint(5, 500) for i in range(37)]
    sampler = LengthGroupedBatches(lengths, batch_size=4, seed=3, window=4)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 10
    assert sorted(i for b in first for i in b) == list(range(37))
    assert sorted(i for b in second for i in b) == list(range(37))
    assert first != second  # reshuffled
    assert list(LengthGroupedBatches(lengths, 4, seed=3, window=4)) == first  # seeded


def test_grouping_cuts_padding():
    # Lengths alternate 10 and 1000: random batches of 2 almost always pair a short with a long one.
    lengths = [10, 1000] * 32
    grouped = list(LengthGroupedBatches(lengths, batch_size=2, seed=0, window=32))
    # With the window covering everything, every batch is two equal lengths: no padding at all.
    assert padded_tokens(grouped, lengths) == sum(lengths)
    rng = random.Random(0)
    order = list(range(64))
    rng.shuffle(order)
    plain = [order[i:i + 2] for i in range(0, 64, 2)]
    assert padded_tokens(plain, lengths) > sum(lengths)
