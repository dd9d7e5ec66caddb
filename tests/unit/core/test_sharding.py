"""How work is dealt out to ranks (srl/core/distributed.py), checked by pretending to be each rank."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from srl.core import distributed
from srl.pipeline.context import accumulation
from srl.training.batching import StepBatches


def as_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: world)


def test_items_with_equal_keys_stay_on_one_rank_and_every_item_is_dealt_once(monkeypatch):
    keys = ["a", "a", "a", "b", "b", "b", "c", "c", "c", "d"]  # N=3 candidates of a prompt share a prefill
    shares = []
    for r in range(2):
        as_rank(monkeypatch, r, 2)
        shares.append(distributed.shard_indices(len(keys), keys))
    assert shares == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9]]
    as_rank(monkeypatch, 1, 3)
    assert distributed.shard_indices(7) == [1, 4]  # no keys: strided


def test_reference_batches_stay_whole(monkeypatch):
    batch = 4
    keys = [i // batch for i in range(10)]
    as_rank(monkeypatch, 1, 2)
    assert distributed.shard_indices(10, keys) == [4, 5, 6, 7]  # the second batch, as one process forms it


def test_one_process_runs_everything_in_order():
    assert not distributed.active()
    assert distributed.sharded(lambda idx: [i * 10 for i in idx], 4) == [0, 10, 20, 30]
    assert distributed.gather_shards(3, [0, 1, 2], ["x", "y", "z"]) == ["x", "y", "z"]
    assert distributed.on_main(lambda: 7) == 7 and distributed.broadcast("v") == "v"


def test_step_batches_split_evenly_over_ranks_with_global_step_weights(monkeypatch):
    lengths = [5, 9, 3, 7, 1, 8, 2, 6, 4, 10, 11]  # 11 items, micro-batch 2 -> 6 batches
    weights = [float(x) for x in lengths]
    per_rank = []
    for r in range(2):
        as_rank(monkeypatch, r, 2)
        sampler = StepBatches(lengths, weights, micro_batch_size=2, accumulate=3, seed=3)
        batches = list(iter(sampler))
        assert len(batches) == len(sampler) == 3  # DDP ranks must step together
        per_rank.append(batches)
    items = [i for batches in per_rank for b in batches for i, _ in b]
    assert len(items) == len(set(items)) == 11  # disjoint; 6 batches divide evenly, none left out
    # One optimizer step (3 micro-batches on each of 2 ranks): every item carries the global total.
    assert {w for batches in per_rank for b in batches for _, w in b} == {sum(weights)}


def test_global_batch_is_split_over_processes(monkeypatch):
    settings = SimpleNamespace(batch_size=16, micro_batch_size=2, accumulate_grad_batches=8)
    as_rank(monkeypatch, 0, 4)
    assert accumulation(settings, "m1") == 2  # 2 rows x 4 processes x 2 = 16
    as_rank(monkeypatch, 0, 3)
    with pytest.raises(ValueError, match="sft.batch_size=16 is not a multiple of sft.micro_batch_size x processes"):
        accumulation(settings, "m1")
