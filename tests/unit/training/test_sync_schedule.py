"""The semi-online schedule by hand (``srl/training/semi_online.py``): which prompts each chunk holds and
which policy step generates each chunk."""

from __future__ import annotations

import pytest

from srl.training.semi_online import chunk_ranges, chunk_steps, sync_steps


def test_chunks_hold_sync_every_times_batch_prompts():
    # 10 prompts, s = 2 steps, batch 2: chunks of 4 prompts
    assert chunk_ranges(10, 2, 2) == [range(0, 4), range(4, 8), range(8, 10)]
    assert chunk_ranges(4, 1, 4) == [range(0, 4)]
    assert chunk_ranges(0, 3, 2) == []
    with pytest.raises(ValueError, match="must be >= 1"):
        chunk_ranges(10, 0, 2)


def test_which_policy_step_generates_each_chunk():
    # batch 2: chunk 0 (4 pairs) trains 2 steps, chunk 1 (3 pairs) 2 steps (the last one of 1 pair), chunk 2 (0 pairs) none
    assert [chunk_steps(n, 2) for n in (4, 3, 0, 1)] == [2, 2, 0, 1]
    assert sync_steps([4, 3, 0, 1], 2) == [0, 2, 4, 4]  # chunk 3 comes from the same policy as chunk 2: nothing trained between
    assert sync_steps([4, 3], 2, epochs=2) == [0, 4]  # two passes over each chunk's pairs
    # s = 1 with batch 1: the fully online limit, a sync before every step
    assert sync_steps([1, 1, 1], 1) == [0, 1, 2]
