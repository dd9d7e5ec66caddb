"""Judge and implicit-reward evaluation on a human preference set (TRL / RewardBench rows): plain and
conversational rows and a tie through ``evaluate_model``; a malformed file stops ``srl.evaluate``
with the file, line and field before any model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from srl.data.preference_sets import PreferenceSetSettings, load_preference_set
from srl.data.records import Judgement, read_jsonl
from srl.evaluation.model_eval import ModelReference, evaluate_model, pairs_as_groups
from srl.generation.slot import ModelSlot
from tests.conftest import ROOT, compose

ROWS = [
    {"prompt": "Name a fruit.", "chosen": "An apple is a fruit you can eat.", "rejected": "Car."},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
     "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "It is 5, I believe."}]},
    {"chosen": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there, friend!"}],
     "rejected": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "No."}]},
    {"prompt": "Pick a colour.", "chosen": "Blue.", "rejected": "Red.", "tie": True},
]


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_preference_set_is_judged_with_the_length_baseline_and_implicit_reward(tmp_path):
    settings = PreferenceSetSettings(name="mine", path=str(write_rows(tmp_path / "prefs.jsonl", ROWS)))
    pairs, skipped = load_preference_set(settings)
    assert [p.prompt for p in pairs] == ["Name a fruit.", "Be brief.\n\nWhat is 2+2?", "Say hi.", "Pick a colour."]
    assert [p.tie for p in pairs] == [False, False, False, True] and not any(skipped.values())
    cfg = compose(["model=tiny", "eval.h2h.enabled=false", "eval.alpaca_export=false", "eval.rm.num_samples=1",
                   "judge.sampling.max_new_tokens=8", "eval.bootstrap_samples=50"])
    spec = instantiate(cfg.model)
    slot = ModelSlot(None, "cpu")
    ev, judge = instantiate(cfg.eval), instantiate(cfg.judge)
    out = tmp_path / "eval"
    reference = ModelReference("tiny", spec, slot, out, ev.implicit)
    result = evaluate_model("tiny", "model", spec, slot, out, ev, judge, [], [], None, 0, reference=reference,
                            preference_sets=[("mine", pairs_as_groups(pairs))])
    judged = read_jsonl(out / "pref" / "mine" / "rm_judgements.jsonl", Judgement)
    assert len(judged) == 8  # every reply of the four rows, the tie's included
    assert result["pref/mine/rm/pairs"] + result["pref/mine/rm/pairs_unscored"] == 3  # the tie is no pair
    assert result["pref/mine/rm/tie_label_pairs"] == 1
    # Longer wins on every pair: row 1 right (7 words vs 1), row 2 wrong (1 vs 5), row 3 right (3 vs 1).
    assert result["pref/mine/rm/length_pairwise_acc_all"] == pytest.approx(2 / 3)
    # The reference is the evaluated model itself: every margin is 0, a tie, never a win.
    assert result["pref/mine/implicit/pairs"] == 3
    assert result["pref/mine/implicit/accuracy"] == 0.0 and result["pref/mine/implicit/tie_rate"] == 1.0
    assert result["pref/mine/heldout/best_reply_nll"] > 0 and (out / "reference" / "pref" / "mine" / "heldout_logprobs.jsonl").is_file()


@pytest.mark.parametrize(("line", "field", "bad"), [
    (2, "chosen", {"prompt": "p", "chosen": 3, "rejected": "r"}),
    (3, "rejected", {"prompt": "p", "chosen": "c"}),
    (2, "tie", {"prompt": "p", "chosen": "c", "rejected": "r", "tie": "yes"}),
])
def test_a_malformed_preference_set_stops_evaluate_naming_file_line_and_field(tmp_path, line, field, bad):
    rows = [ROWS[0], ROWS[1], ROWS[3]]
    rows.insert(line - 1, bad)
    path = write_rows(tmp_path / "bad.jsonl", rows)
    override = f"eval.preference_sets=[{{_target_:srl.data.preference_sets.PreferenceSetSettings,name:mine,path:'{path}'}}]"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "srl.evaluate", "model=tiny", override, f"hydra.run.dir={tmp_path / 'out'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"bad.jsonl line {line}" in proc.stderr and f"field '{field}'" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out" / "summary.json").exists()
