"""The pointwise head-to-head reuses M0's reply scores from an earlier evaluation only when the same
judge scored them under the same config."""

from __future__ import annotations

from types import SimpleNamespace

from srl.core.rundir import Stamp
from srl.data.records import Judgement, write_jsonl
from srl.pipeline.manifest import Manifest
from srl.pipeline.stages.evaluation import reusable_baseline_scores

CONFIG = {"eval.h2h.judge": "m1", "eval.h2h.judge_sampling.temperature": 0.0, "model.dtype": "float32"}


def settings(**h2h):
    base = dict(enabled=True, protocol="pointwise", reference=None, against="start", judge="m1")
    base.update(h2h)
    return SimpleNamespace(h2h=SimpleNamespace(**base))


def run_with_eval_m1(tmp_path, recorded: dict) -> SimpleNamespace:
    folder = tmp_path / "eval" / "m1"
    folder.mkdir(parents=True)
    records = [Judgement("a", 0, ("Score: 2",), (2.0,), 2.0), Judgement("a", 1, ("Score: 4",), (4.0,), 4.0),
               Judgement("b", 0, ("x",), (None,), None), Judgement("b", 1, ("Score: 1",), (1.0,), 1.0)]
    write_jsonl(folder / "h2h_scores.jsonl", records)
    Manifest(tmp_path).record("eval/m1", Stamp("eval/m1", "f1", recorded), {}, [str(folder / "h2h_scores.jsonl")])
    current = {**CONFIG, "dpo.beta": 0.1}  # eval/m2 also covers M2's training
    return SimpleNamespace(run_dir=tmp_path, stamp=lambda stage: Stamp(stage, "f2", current))


def test_baseline_scores_of_the_same_judge_and_config_are_reused(tmp_path):
    ctx = run_with_eval_m1(tmp_path, CONFIG)
    known, source = reusable_baseline_scores(ctx, 2, settings())
    assert source == "eval/m1"
    assert {p: j.score for p, j in known.items()} == {"a": 4.0, "b": 1.0}  # the baseline side (candidate 1) only
    assert all(j.candidate == 1 for j in known.values())


def test_an_evaluation_that_reused_them_is_skipped_for_the_one_that_judged_them(tmp_path):
    ctx = run_with_eval_m1(tmp_path, CONFIG)
    folder = tmp_path / "eval" / "m2"
    folder.mkdir()
    write_jsonl(folder / "h2h_scores.jsonl", [Judgement("a", 0, ("Score: 3",), (3.0,), 3.0)])  # M2's side only
    Manifest(tmp_path).record("eval/m2", Stamp("eval/m2", "f2", CONFIG), {}, [str(folder / "h2h_scores.jsonl")])
    known, source = reusable_baseline_scores(ctx, 3, settings())
    assert source == "eval/m1" and {p: j.score for p, j in known.items()} == {"a": 4.0, "b": 1.0}


def test_no_reuse_when_anything_differs(tmp_path):
    changed = run_with_eval_m1(tmp_path / "changed", {**CONFIG, "eval.h2h.judge_sampling.temperature": 0.7})
    assert reusable_baseline_scores(changed, 2, settings()) == ({}, None)
    ctx = run_with_eval_m1(tmp_path / "same", CONFIG)
    for h2h in (dict(judge=None), dict(judge="external"), dict(against="previous"), dict(reference="ref.jsonl"), dict(protocol="pairwise")):
        assert reusable_baseline_scores(ctx, 2, settings(**h2h)) == ({}, None), h2h
    assert reusable_baseline_scores(ctx, 2, settings(judge="m2")) == ({}, None)  # eval/m1 ran before M2 existed
    assert reusable_baseline_scores(ctx, 1, settings()) == ({}, None)  # nothing earlier
