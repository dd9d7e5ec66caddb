"""The entry points end to end on the tiny model: smoke run, resume, data command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import ROOT, compose
from srl.run import build_loop
from srl.loop import NoPairsError
from srl.stages import StageConfigMismatch

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


def test_smoke_experiment_cli_runs_m1_to_m3(tmp_path):
    result = run_cli("srl.run", "+experiment=smoke", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["m1/sft/steps"] > 0
    assert summary["m1/sft/val_loss"] < summary["m1/sft/val_loss_before"]
    for name in ("ift_train.jsonl", "eft_train.jsonl", "ift_heldout.jsonl", "ranked_heldout.jsonl", "heldout_tree_ids.json"):
        assert (tmp_path / "data" / name).is_file()
    for t in (1, 2):
        for name in ("prompts.jsonl", "prompt_attempts.jsonl", "candidates.jsonl", "judgements.jsonl", "pairs.jsonl"):
            assert (tmp_path / f"iter{t}" / name).is_file(), (t, name)
        assert summary[f"iter{t}/pairs/kept"] >= 1
        assert 0.0 <= summary[f"iter{t}/judge/parse_fail_rate"] < 1.0
        assert summary[f"m{t + 1}/dpo/steps"] >= 1
    n_prompts = len((tmp_path / "iter1" / "prompts.jsonl").read_text().splitlines())
    assert len((tmp_path / "iter1" / "candidates.jsonl").read_text().splitlines()) == 4 * n_prompts
    for t in (1, 2, 3):
        assert AutoModelForCausalLM.from_pretrained(tmp_path / f"m{t}" / "model").config.num_hidden_layers == 2
    # M3 differs from M2: DPO moved the weights.
    m2 = AutoModelForCausalLM.from_pretrained(tmp_path / "m2" / "model").state_dict()
    m3 = AutoModelForCausalLM.from_pretrained(tmp_path / "m3" / "model").state_dict()
    assert any(not torch.equal(m2[k], m3[k]) for k in m2)
    assert "srl run finished" in result.stdout


def loop_for(run_dir: Path, *overrides: str):
    cfg = compose(["+experiment=smoke", f"hydra.run.dir={run_dir}", *overrides])
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    return build_loop(cfg, run_dir)


def test_second_run_skips_finished_stages(tmp_path):
    first = loop_for(tmp_path, "iteration.stop_after=m1").run()
    weights = tmp_path / "m1" / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    second = loop_for(tmp_path, "iteration.stop_after=m1").run()
    assert weights.stat().st_mtime_ns == stamp  # not retrained
    assert second["m1/sft/loss"] == first["m1/sft/loss"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"data", "m1"}


def test_half_finished_run_continues_after_data(tmp_path):
    loop_for(tmp_path, "iteration.stop_after=data").run()
    assert not (tmp_path / "m1").exists()
    data_stamp = (tmp_path / "data" / "ift_train.jsonl").stat().st_mtime_ns
    summary = loop_for(tmp_path, "iteration.stop_after=m1").run()
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


class Stop(Exception):
    pass


FAST = ["sft.max_epochs=2", "iteration.num_models=2"]


def test_run_stopped_mid_judging_resumes_to_identical_records(tmp_path):
    import shutil

    base = tmp_path / "base"
    loop_for(base, *FAST, "iteration.stop_after=m1").run()
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    shutil.copytree(base, straight)
    shutil.copytree(base, resumed)
    loop_for(straight, *FAST, "iteration.stop_after=iter1/judgements").run()

    def stop_after_first_judge_chunk(stage: str, done: int) -> None:
        if stage == "judgements":
            raise Stop

    loop = loop_for(resumed, *FAST, "iteration.stop_after=iter1/judgements")
    loop.hook = stop_after_first_judge_chunk
    with pytest.raises(Stop):
        loop.run()
    partial = resumed / "iter1" / "judgements.jsonl.partial"
    written = partial.read_text().splitlines()
    assert 0 < len(written) < len((straight / "iter1" / "judgements.jsonl").read_text().splitlines())
    candidates_stamp = (resumed / "iter1" / "candidates.jsonl").stat().st_mtime_ns
    # A crash in the middle of writing the next chunk leaves a torn line; it must not survive.
    with partial.open("a") as fh:
        fh.write('{"prompt_id": "it1-p0')

    loop_for(resumed, *FAST, "iteration.stop_after=iter1/judgements").run()
    assert (resumed / "iter1" / "candidates.jsonl").stat().st_mtime_ns == candidates_stamp  # not redone
    assert not partial.exists()
    for name in ("prompt_attempts.jsonl", "prompts.jsonl", "candidates.jsonl", "judgements.jsonl"):
        assert (resumed / "iter1" / name).read_bytes() == (straight / "iter1" / name).read_bytes(), name
    assert (resumed / "iter1" / "judgements.jsonl").read_text().splitlines()[: len(written)] == written


def test_unparsable_judge_stops_with_a_reason(tmp_path):
    # One new token cannot hold "Score: N": every judgement is unparsable, so no pair exists.
    loop = loop_for(tmp_path, *FAST, "judge.sampling.max_new_tokens=1")
    with pytest.raises(NoPairsError, match="parse-failure rate 100%"):
        loop.run()
    assert (tmp_path / "iter1" / "judgements.jsonl").is_file()  # what was written stays
    assert not (tmp_path / "m2").exists()


def test_prompt_pool_source(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"instruction": f"Task number {i}: say something kind."}) + "\n" for i in range(10)))
    loop_for(tmp_path / "run", *FAST, "prompt_gen.source=pool", f"prompt_gen.pool_path={pool}", "prompt_gen.num_prompts=3",
             "iteration.stop_after=iter1/prompts").run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "iter1" / "prompts.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["source"] == "pool" and r["prompt"].startswith("Task number") for r in rows)


def test_evaluate_cli_on_held_out_trees(tmp_path):
    result = run_cli("srl.evaluate", "+experiment=smoke", "judge.num_samples=1", "judge.sampling.max_new_tokens=8", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    for key in ("pairwise_acc", "five_best_pct", "exact_match_pct", "spearman", "kendall_tau", "parse_fail_rate"):
        assert f"eval/rm/{key}" in result.stdout
    out = json.loads((tmp_path / "eval_rm.json").read_text())
    # The seed data's split holds out 9 trees, each with 2-4 ranked replies: every reply judged once.
    judged = (tmp_path / "rm_judgements.jsonl").read_text().splitlines()
    assert out["eval/rm/prompts"] == 9 and len(judged) == out["eval/rm/replies"] >= 18
    train_trees = {json.loads(line)["message_tree_id"] for line in (ROOT / "srl" / "data" / "seed_oasst.jsonl").read_text().splitlines()}
    assert out["eval/rm/prompts"] < len(train_trees)
