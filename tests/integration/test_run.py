"""The entry points end to end on the tiny model: smoke run, resume, data command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from conftest import ROOT, compose
from srl.run import build_loop
from srl.stages import StageConfigMismatch

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


def test_smoke_experiment_cli(tmp_path):
    result = run_cli("srl.run", "+experiment=smoke", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["m1/sft/steps"] > 0
    assert summary["m1/sft/val_loss"] < summary["m1/sft/val_loss_before"]
    for name in ("ift_train.jsonl", "eft_train.jsonl", "ift_heldout.jsonl", "ranked_heldout.jsonl", "heldout_tree_ids.json"):
        assert (tmp_path / "data" / name).is_file()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m1" / "model")
    assert model.config.num_hidden_layers == 2
    assert "srl run finished" in result.stdout


def loop_for(run_dir: Path, *overrides: str):
    cfg = compose(["+experiment=smoke", f"hydra.run.dir={run_dir}", *overrides])
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    return build_loop(cfg, run_dir)


def test_second_run_skips_finished_stages(tmp_path):
    first = loop_for(tmp_path).run()
    weights = tmp_path / "m1" / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    second = loop_for(tmp_path).run()
    assert weights.stat().st_mtime_ns == stamp  # not retrained
    assert second["m1/sft/loss"] == first["m1/sft/loss"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"data", "m1"}


def test_half_finished_run_continues_after_data(tmp_path):
    loop_for(tmp_path, "iteration.stop_after=data").run()
    assert not (tmp_path / "m1").exists()
    data_stamp = (tmp_path / "data" / "ift_train.jsonl").stat().st_mtime_ns
    summary = loop_for(tmp_path).run()
    assert (tmp_path / "data" / "ift_train.jsonl").stat().st_mtime_ns == data_stamp
    assert (tmp_path / "m1" / "model" / "config.json").is_file() and summary["m1/sft/steps"] > 0


def test_changed_config_on_a_finished_stage_is_an_error(tmp_path):
    loop_for(tmp_path, "iteration.stop_after=data").run()
    with pytest.raises(StageConfigMismatch, match="different config"):
        loop_for(tmp_path, "iteration.stop_after=data", "data.build.heldout_fraction=0.5").run()


def test_prepare_data_cli_on_shared_file(oasst_validation, tmp_path):
    result = run_cli("srl.prepare_data", "data=oasst_local", f"data.source.path={oasst_validation}", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads((tmp_path / "counts.json").read_text())
    assert f"ift_train                                {counts['ift_train']}" in result.stdout
    assert counts["ift_train"] + counts["ift_heldout"] == 186
    heldout = set(json.loads((tmp_path / "heldout_tree_ids.json").read_text()))
    train_trees = {json.loads(line)["tree_id"] for line in (tmp_path / "ift_train.jsonl").read_text().splitlines()}
    assert heldout and not heldout & train_trees


def test_malformed_source_fails_before_training(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"message_id": "a"}\n')
    result = run_cli("srl.run", "+experiment=smoke", "data=oasst_local", f"data.source.path={bad}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert f"{bad}:1: missing field 'parent_id'" in result.stderr
    assert not (tmp_path / "run" / "m1").exists()
