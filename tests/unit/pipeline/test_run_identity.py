"""How a job names itself to W&B: one run per job, grouped by sweep, tagged by overrides."""

from __future__ import annotations

from srl.pipeline.tracking import MAX_TAG, run_identity


def test_multirun_job_is_named_by_its_swept_values_and_grouped_by_sweep():
    got = run_identity(
        ["judge=buckets", "+sweeps=judge_format", "+experiment=smoke"], multirun=True, sweep_name="judge_format",
        sweep_dir="multirun/judge_format/2026-11-24_10-00-00", swept_keys=["judge"], job_num=1, question="Which judge?",
    )
    assert got == {
        "name": "1:judge=buckets",
        "group": "judge_format/2026-11-24_10-00-00",
        "tags": ["+experiment=smoke", "+sweeps=judge_format", "judge=buckets"],
        "job_type": "judge_format",
        "notes": "Which judge?",
    }


def test_command_line_sweep_names_jobs_by_their_overrides():
    got = run_identity(["generation.num_candidates=8", "seed=1"], multirun=True, sweep_dir="multirun/x/t", job_num=2)
    assert got["name"] == "2:generation.num_candidates=8,seed=1" and got["group"] == "multirun/t" and got["job_type"] == "multirun"


def test_single_run_has_tags_only_and_long_tags_are_cut():
    long = "data.source.path=/" + "x" * 100
    got = run_identity([long], multirun=False)
    assert got["name"] is None and got["group"] is None and got["job_type"] == "run"
    assert got["tags"] == [long[:MAX_TAG]]
