"""Checkpoint selection's choice rule, by hand, and its snapshots of the trainable weights."""

from __future__ import annotations

import pytest
import torch

from srl.training.selection import SelectSettings, load_snapshot, sequential_choice, snapshots, trainable_state


def test_a_judge_that_always_prefers_the_later_keeps_the_last_and_the_earlier_the_first():
    later, records = sequential_choice([2, 4, 6], lambda cand, kept: (3, 0, 1))
    assert later == 6 and [(r["candidate_step"], r["kept_step"], r["replaced"]) for r in records] == [(4, 2, True), (6, 4, True)]
    assert records[0]["win_rate"] == 0.75  # 3 wins of 4 scored prompts
    earlier, records = sequential_choice([2, 4, 6], lambda cand, kept: (0, 2, 0))
    assert earlier == 2 and [(r["candidate_step"], r["kept_step"], r["replaced"]) for r in records] == [(4, 2, False), (6, 2, False)]


def test_a_checkpoint_replaces_the_kept_one_only_with_more_wins_than_losses():
    table = {(4, 2): (2, 1, 5), (6, 4): (1, 1, 0), (8, 4): (0, 0, 0)}  # 6 vs 4: a draw keeps 4; 8 vs 4: nothing scored
    kept, records = sequential_choice([2, 4, 6, 8], lambda cand, kept: table[(cand, kept)])
    assert kept == 4
    assert [r["replaced"] for r in records] == [True, False, False] and records[2]["win_rate"] is None
    assert sequential_choice([5], lambda *_: pytest.fail("one snapshot needs no judge"))[0] == 5
    with pytest.raises(ValueError, match="no snapshot was written"):
        sequential_choice([], lambda *_: (0, 0, 0))
    with pytest.raises(ValueError, match="every_steps must be >= 0"):
        SelectSettings(every_steps=-1)


def test_snapshots_hold_the_trainable_weights_and_load_back(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[1].weight.requires_grad_(False)  # frozen (a LoRA base): not in a snapshot
    state = trainable_state(model)
    assert sorted(state) == ["0.bias", "0.weight", "1.bias"]
    torch.save(state, tmp_path / "step000004.pt")
    torch.save(state, tmp_path / "step000012.pt")
    (tmp_path / "step12.tmp").write_text("")
    assert [s for s, _ in snapshots(tmp_path)] == [4, 12]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    load_snapshot(model, tmp_path / "step000004.pt")
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in state)
    assert torch.equal(after["1.weight"], before["1.weight"] + 1.0)  # frozen weights are left as they are
    torch.save({"nope": torch.zeros(1)}, tmp_path / "step000099.pt")
    with pytest.raises(ValueError, match="names parameters the model does not have"):
        load_snapshot(model, tmp_path / "step000099.pt")
