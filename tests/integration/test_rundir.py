"""Run-dir integrity on the smoke loop: copies and moves of run dirs, half-finished stages under a
changed config, corrupted manifests and models (srl/core/rundir.py, srl/pipeline/manifest.py)."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest
from test_run import FAST, loop_for

from srl.core.rundir import StageConfigMismatch
from srl.models.loading import HFModelSpec, ModelLoadError
from srl.pipeline.manifest import CorruptedOutput, ManifestError


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative path, with its SHA-256."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A run stopped after eval/m1: data, eval/m0, m1 and eval/m1 finished."""
    run = tmp_path_factory.mktemp("rundir") / "a"
    loop_for(run, *FAST, "iteration.stop_after=eval/m1", evaluate=True).run()
    return run


def copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)  # as cp -a
    return dest


def test_a_copied_run_dir_reruns_its_evaluation_without_touching_the_original(base, tmp_path):
    before = tree(base)
    b = copy(base, tmp_path / "b")
    summary = loop_for(b, *FAST, "iteration.stop_after=eval/m1", "eval.h2h.prompts.limit=2", evaluate=True).run()
    assert summary["eval/m1/h2h/prompts"] == 2 and len((b / "eval" / "m1" / "replies.jsonl").read_text().splitlines()) == 2
    assert tree(base) == before  # the original's eval/m0 and eval/m1 are untouched


def test_a_moved_run_dir_resumes_with_every_finished_stage_skipped(base, tmp_path, caplog):
    moved = tmp_path / "elsewhere" / "c"
    moved.parent.mkdir()
    shutil.move(copy(base, tmp_path / "c"), moved)
    stamps = {p: p.stat().st_mtime_ns for p in moved.rglob("*") if p.is_file() and p.name != "manifest.json"}
    with caplog.at_level(logging.INFO, logger="srl.pipeline.loop"):
        loop_for(moved, *FAST, "iteration.stop_after=eval/m1", evaluate=True).run()
    skipped = [r.getMessage() for r in caplog.records if "already finished, skipped" in r.getMessage()]
    assert len(skipped) == 4 and not [r for r in caplog.records if r.getMessage().endswith(": running")]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.name != "summary.json" and p.suffix != ".md")


def test_a_copied_sweep_reuses_its_own_jobs_and_leaves_the_original_sweep_alone(base, tmp_path):
    sweep_a = tmp_path / "sweepA"
    copy(base, sweep_a / "0")
    before = tree(sweep_a)
    sweep_b = copy(sweep_a, tmp_path / "sweepB")
    summary = loop_for(sweep_b / "1", *FAST, "iteration.stop_after=m1", f"iteration.reuse_from={sweep_b}").run()
    weights = Path("m1") / "model" / "model.safetensors"
    assert (sweep_b / "1" / weights).stat().st_ino == (sweep_b / "0" / weights).stat().st_ino  # linked from B's own job
    assert summary["m1/sft/loss_mean"] > 0
    assert tree(sweep_a) == before


@pytest.mark.parametrize(
    ("override", "changed"),
    [("generation.sampling.temperature=1.5", "generation.sampling.temperature: 0.7 -> 1.5"), ("generation.num_candidates=2", "generation.num_candidates: 4 -> 2")],
    ids=["temperature", "num_candidates"],
)
def test_a_half_finished_stage_with_a_changed_config_is_refused_and_kept(base, tmp_path, override, changed):
    run = copy(base, tmp_path / "d")

    class Stop(Exception):
        pass

    def stop_in_candidates(stage: str, done: int) -> None:
        if stage == "candidates":
            raise Stop

    loop = loop_for(run, *FAST, "iteration.stop_after=iter1/candidates")
    loop.hook = stop_in_candidates
    with pytest.raises(Stop):
        loop.run()
    partial = run / "iter1" / "candidates.jsonl.partial"
    written = partial.read_bytes()
    assert written
    with pytest.raises(StageConfigMismatch, match=rf"iter1/candidates.*half-finished .*candidates\.jsonl\.partial.*{changed}.*new run dir"):
        loop_for(run, *FAST, "iteration.stop_after=iter1/candidates", override).run()
    assert partial.read_bytes() == written and not (run / "iter1" / "candidates.jsonl").exists()


def test_a_truncated_manifest_stops_before_any_work_and_names_the_file(base, tmp_path):
    run = copy(base, tmp_path / "e")
    manifest = run / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:100])
    with pytest.raises(ManifestError, match=rf"{manifest}: not valid JSON"):
        loop_for(run, *FAST, "iteration.stop_after=m1")


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_model_in_the_run_dir_is_refused_with_its_path(base, tmp_path, damage):
    run = copy(base, tmp_path / "f")
    weights = run / "m1" / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[-1000] ^= 0x55  # inside a tensor: the file still loads, with a wrong weight
    weights.unlink()  # a hard link to the base run's file: write a new file
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptedOutput, match=rf"stage 'm1'.*{weights}"):
        loop_for(run, *FAST, "iteration.stop_after=iter1/prompts").run()
    assert not (run / "iter1").exists()  # stopped before the next stage started


def test_a_truncated_weights_file_outside_a_run_names_the_file(base, tmp_path):
    folder = copy(base / "m1" / "model", tmp_path / "model")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match=rf"{weights}: the model's weights cannot be read"):
        HFModelSpec(str(folder)).load()
