"""The GPU proof script (``experiments/gpu_check.py``, issue 20) at tiny shapes on the CPU, so that it
cannot rot between the runs on a lent GPU: every section runs (FSDP is skipped with Lightning's own
reason: it needs a GPU), and its figures mean what they say."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_tiny_runs_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "gpu_check.py"), "--tiny", "--out", str(out)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "section" in proc.stdout and "wall time" in proc.stdout  # the table was printed
    results = json.loads(out.read_text())
    assert json.loads(json.dumps(results)) == results  # plain JSON, no NaN
    sections = results["sections"]
    assert list(sections) == ["rates", "exactness", "generation", "training", "fsdp", "loop"]
    for name, record in sections.items():
        if name == "fsdp":
            assert record["status"] == "skipped" and "GPU" in record["skipped"], record
        else:
            assert record["status"] == "ok", (name, record.get("error"))

    rates = sections["rates"]
    assert rates["copy_gbs"] > 0 and rates["matmul_tflops_bfloat16"] > 0

    greedy = sections["exactness"]["greedy"]
    assert greedy["greedy_equal"] and greedy["equal"] == greedy["prompts"] == 8
    assert greedy["prefix_tokens"] > 8 and greedy["joins"] > 0 and len(greedy["lengths"]) > 1  # prefix, refill and stops exercised
    step0 = sections["exactness"]["dpo_step0"]
    assert step0["loss"][0] == pytest.approx(math.log(2), abs=1e-3)  # policy = reference at step 0
    assert step0["step0_max_abs_reward"] < 1e-5  # srl's path: the reference under the training autocast, as the policy: ~0
    assert step0["step0_max_abs_reward_ref_fp32"] > step0["step0_max_abs_reward"]  # the float32 reference (before the fix) is off

    runs = sections["generation"]["runs"]
    assert [(r["batch"], r["mode"]) for r in runs] == [(2, "greedy"), (4, "greedy"), (4, "T0.7 p0.9")]
    for r in runs:
        for side in ("engine", "hf_generate"):
            assert r[side]["decode_tokens_per_s"] > 0 and 0 < r[side]["roofline_fraction"] < r[side]["roofline_fraction_with_kv"]
            assert r[side]["tokens"] == r["batch"] * 8  # no stop ids: every row decodes max_new_tokens
        assert r["engine_over_hf_decode"] > 0

    training = sections["training"]
    for name in ("sft_1b_full", "dpo_1b_full", "sft_8b_lora", "dpo_8b_lora"):
        run = training[name]
        assert run["tokens_per_s"] > 0 and run["mean_step_s"] > 0 and 0 < run["mfu"], (name, run)
        assert run["precision"] == "bf16-mixed" and run["expected_gb"]["total_gb"] > 0
        assert all(loss is not None and math.isfinite(loss) for loss in run["loss"]) and len(run["loss"]) == 2
    assert training["dpo_8b_lora"]["step0_max_abs_reward"] == 0.0  # fresh adapter (B = 0): policy == adapter-off reference
    assert training["dpo_8b_lora"]["lora_params"] > 0 and training["sft_8b_lora"]["gradient_checkpointing"]

    loop = sections["loop"]
    assert loop["status"] == "ok" and loop["returncode"] == 0 and loop["all_on_expected_device"] and loop["devices"] == ["cpu"]
    assert loop["engine_calls"] > 0 and [f["module"] for f in loop["fits"]][:1] == ["sft"]

