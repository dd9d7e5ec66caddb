"""Every sweep file runs through real Hydra multirun at smoke scale; the jobs compare locally and in W&B.

The multirun tests take minutes each (a smoke-scale loop per job): they are the ``sweeps`` tier,
``python -m pytest -m sweeps``; the default tier checks that every job of every sweep composes.

All sweeps share one folder of runs (``iteration.reuse_from``), so a stage finished with the same
config by an earlier job (M1 of the smoke experiment, most of all) is linked, not run again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, compose

SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
# The sweeps over later stages first: their first job trains the M1 that the rest reuse.
ORDER = ["pair_rule", "loss", "num_candidates", "eft", "judge_format", "meta_judge"]
SMOKE = ["+experiment=smoke", "iteration.num_models=2"]
# The tiny model needs more epochs to learn the other formats' answer lines well enough for pairs.
EXTRA = {"judge_format": ["sft.max_epochs=12"]}


def swept(name: str) -> dict[str, list[str]]:
    params = yaml.safe_load((ROOT / "sweeps" / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]
    return {key: [v.strip() for v in str(values).split(",")] for key, values in params.items()}


def test_every_sweep_file_is_tested_and_answers_one_question():
    assert sorted(ORDER) == SWEEPS
    for name in SWEEPS:
        text = (ROOT / "sweeps" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_") and f"python -m srl.run -m +sweeps={name}" in text
        assert len(swept(name)) == 1 and len(next(iter(swept(name).values()))) >= 2


@pytest.mark.parametrize("name", ORDER)
def test_every_job_of_a_sweep_composes(name):
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    (key, values), = swept(name).items()
    for value in values:
        for experiment in ([], ["+experiment=smoke"], ["+experiment=paper"]):  # the scales the file's commands name
            cfg = compose([f"+sweeps={name}", f"{key}={value}", *experiment])
            HydraConfig.instance().set_config(cfg)  # ${hydra:sweep.dir} resolves as in a job
            assert cfg.sweep.name == name and f"multirun/{name}/" in instantiate(cfg.iteration).reuse_from
            for node in ("judge", "pairs", "dpo", "sft", "generation", "iteration"):
                instantiate(cfg[node])


@pytest.fixture(scope="module")
def sweeps_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweeps")


def multirun(name: str, root: Path, *extra: str, wandb: bool = False) -> list[Path]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline" if wandb else "disabled"}
    args = [f"+sweeps={name}", *SMOKE, f"hydra.sweep.dir={root / name}", f"iteration.reuse_from={root}",
            f"logger={'wandb' if wandb else 'none'}", *extra]
    result = subprocess.run([sys.executable, "-m", "srl.run", "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return sorted((p for p in (root / name).iterdir() if p.is_dir()), key=lambda p: int(p.name))


def job_value(job: Path, key: str) -> str:
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    return next(o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key)


@pytest.mark.sweeps
@pytest.mark.parametrize("name", ORDER)
def test_sweep_runs_every_job_at_smoke_scale(name, sweeps_root):
    (key, values), = swept(name).items()
    jobs = multirun(name, sweeps_root, *EXTRA.get(name, []), wandb=name == "pair_rule")
    assert [job_value(j, key) for j in jobs] == values
    summaries = [json.loads((j / "summary.json").read_text()) for j in jobs]
    for job, s in zip(jobs, summaries):
        assert s["status"] == "ok" and "| M2 |" in (job / "eval" / "table.md").read_text()
        if name == "eft" and job_value(job, key) == "ift_only":
            # Without EFT the tiny M1 never writes a score: no pair, and M2 is M1 carried on (on_no_pairs=carry).
            assert s["iter1/pairs/kept"] == 0 and s["m2/dpo/skipped"] == 1
        else:
            assert s["m2/dpo/steps"] >= 1 and s["iter1/pairs/kept"] >= 1, job
    check = CHECKS[name]
    for job, s in zip(jobs, summaries):
        check(job_value(job, key), s, job)


def _pairs(value, s, job):
    pairs = [json.loads(line) for line in (job / "iter1" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == s["iter1/pairs/kept"] and all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    manifest = json.loads((job / "manifest.json").read_text())["stages"]
    if job.name != "0":  # candidates and judgements come from job 0; the pairs are this job's own
        assert manifest["iter1/judgements"]["reused_from"].endswith("0") and "reused_from" not in manifest["iter1/pairs"]


def _loss(value, s, job):
    assert ("m2/dpo/nll_mean" in s) == (value == "rpo")
    stages = json.loads((job / "manifest.json").read_text())["stages"]
    # Up to the pairs every job reuses the pair-rule sweep's first job; DPO with the default loss is that job's M2.
    assert "reused_from" in stages["iter1/pairs"] and ("reused_from" in stages["m2"]) == (value == "default")


def _num_candidates(value, s, job):
    assert s["iter1/candidates/count"] == int(value) * s["iter1/prompts/accepted"]


def _eft(value, s, job):
    assert (s.get("m1/sft/data/eft_examples", 0) > 0) == (value == "default")


def _judge_format(value, s, job):
    n = s["iter1/candidates/count"]
    prompts = s["iter1/prompts/accepted"]
    per_reply = {"pairwise": None, "score_first": 1}.get(value, 2)  # smoke: judge.num_samples 2
    if per_reply is None:  # every reply meets its N-1 siblings in both orders, 2 samples each
        assert s["iter1/judge/samples"] == 2 * (n // prompts - 1) * 2 * n
        assert 0.0 <= s["iter1/judge/mean_score"] <= 1.0
    else:
        assert s["iter1/judge/samples"] == per_reply * n
    assert 0.0 <= s["iter1/judge/mean_score_frac"] <= 1.0


def _meta_judge(value, s, job):
    stages = json.loads((job / "manifest.json").read_text())["stages"]
    assert ("iter1/meta" in stages) == (value == "true")
    if value == "true":  # smoke: judge.num_samples 2, so each meta-judged reply has 2 orders
        assert s["iter1/meta/verdicts"] == 2 * s["iter1/meta/replies"] and "iter1/pairs/judge/kept" in s
    assert "reused_from" in stages["iter1/judgements"]  # the judgements are the same with and without the meta-judge


CHECKS = {"pair_rule": _pairs, "loss": _loss, "num_candidates": _num_candidates, "eft": _eft, "judge_format": _judge_format,
          "meta_judge": _meta_judge}


@pytest.mark.sweeps
def test_compare_and_wandb_on_a_multirun(sweeps_root):
    """After the pair-rule sweep: one W&B offline run per job with its group and tags; srl.compare's
    table has one row per job and its plots exist."""
    from srl.compare import main

    folder = sweeps_root / "pair_rule"
    if not folder.is_dir():
        multirun("pair_rule", sweeps_root, wandb=True)
    jobs = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: int(p.name))
    for job in jobs:
        runs = list((job / "wandb").glob("offline-run-*/*.wandb"))
        assert len(runs) == 1, job  # each job of the multirun is its own W&B run
        record = runs[0].read_bytes()
        assert f"pair_rule/{folder.name}".encode() in record  # the group: sweep name / sweep folder
        assert f"pairs={job_value(job, 'pairs')}".encode() in record  # tagged and named by the swept value
        assert list((job / "wandb").glob("offline-run-*/files/media/table/iter1/judge/samples_*.table.json")) or job.name != "0"
    out = folder / "report"
    assert main([str(folder), "--out", str(out)]) == 0
    table = [line for line in (out / "compare.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(jobs)  # header + a row per job
    assert all(f"| {v} |" in "\n".join(table) for v in swept("pair_rule")["pairs"])
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
