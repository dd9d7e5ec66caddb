"""Model cards (what M_t is, its stage statistics, the command) and pushing the model folders."""

from __future__ import annotations

import pytest

from srl.pipeline.model_card import HubSettings, card_text, command_line, push, write_card

SUMMARY = {
    "data/ift_train": 30, "data/eft_train": 96, "data/ift_heldout": 7,
    "m1/sft/steps": 12, "m1/sft/loss_first": 2.5, "m1/sft/loss_mean": 2.125, "m1/sft/loss_last": 1.75, "m1/sft/val_loss": 1.9,
    "iter1/pairs/kept": 8, "iter1/pairs/mean_margin": 1.5, "iter1/judge/by": "self", "iter1/judge/parse_fail_rate": 0.25,
    "m2/dpo/steps": 4, "m2/dpo/pairs": 8, "m2/dpo/loss_first": 0.6931, "m2/dpo/loss_mean": 0.6, "m2/dpo/rewards/accuracy_mean": 0.75,
}


def test_cards_say_what_each_model_is_and_quote_its_stage_statistics(tmp_path):
    cmd = command_line(["+experiment=smoke", "eval.h2h.prompts.path=my prompts.jsonl"])
    assert cmd == "python -m srl.run +experiment=smoke 'eval.h2h.prompts.path=my prompts.jsonl'"
    m1 = card_text(1, "HuggingFaceTB/SmolLM2-135M-Instruct", "seed oasst1", SUMMARY, cmd, "abc123")
    assert m1.startswith('---\nbase_model: "HuggingFaceTB/SmolLM2-135M-Instruct"\nlibrary_name: transformers\ntags:\n- srl\n')
    assert "- sft\n---\n" in m1 and "M1: supervised fine-tuning" in m1
    for row in ("| m1/sft/steps | 12 |", "| m1/sft/loss_first | 2.5 |", "| m1/sft/loss_mean | 2.125 |", "| m1/sft/loss_last | 1.75 |"):
        assert row in m1
    assert "- data/ift_train: 30" in m1 and "- source: seed oasst1" in m1 and cmd in m1 and "`abc123`" in m1
    assert "m2/" not in m1  # another stage's numbers stay off this card
    m2 = card_text(2, "base", "seed", SUMMARY, cmd, "def")
    assert "M2: DPO of M1 on the preference pairs of iteration 1" in m2 and "(self)" in m2
    assert "| m2/dpo/rewards/accuracy_mean | 0.75 |" in m2 and "| m2/dpo/loss_first | 0.6931 |" in m2
    assert "- iter1/pairs/kept: 8" in m2 and "- iter1/judge/parse_fail_rate: 0.25" in m2 and "m1/sft" not in m2
    carried = card_text(2, "base", "seed", {"m2/dpo/pairs": 0, "m2/dpo/skipped": 1}, cmd, "f")
    assert "M2: a copy of M1: iteration 1 gave no preference pair" in carried
    path = write_card(tmp_path, 1, "base", "seed", SUMMARY, cmd, "abc")
    assert path == tmp_path / "README.md" and path.read_text() == card_text(1, "base", "seed", SUMMARY, cmd, "abc")


def test_push_uploads_each_model_to_its_folder(tmp_path):
    calls = []

    class FakeApi:  # the Hub's HfApi surface push uses; no network in tests
        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, path_in_repo, commit_message):
            calls.append(("upload", repo_id, folder_path, path_in_repo, commit_message))
            return type("Info", (), {"commit_url": f"https://hf.co/{repo_id}/commit/{path_in_repo}"})()

    folders = {2: tmp_path / "m2" / "model", 1: tmp_path / "m1" / "model"}
    urls = push(folders, "me/srl-run", private=True, api=FakeApi())
    assert calls == [("create", "me/srl-run", True, True),
                     ("upload", "me/srl-run", str(folders[1]), "m1", "srl: M1"), ("upload", "me/srl-run", str(folders[2]), "m2", "srl: M2")]
    assert urls == ["https://hf.co/me/srl-run/commit/m1", "https://hf.co/me/srl-run/commit/m2"]
    with pytest.raises(ValueError, match="hub.push=true needs hub.repo_id"):
        HubSettings(push=True)
