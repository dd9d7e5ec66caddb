"""Stage manifest, run-dir guard, checksums and stamped partial files."""

from __future__ import annotations

import json
import shutil

import pytest

from srl.core import rundir
from srl.core.rundir import OutsideRunDir, StageConfigMismatch, Stamp
from srl.data.partial import PartialJsonl
from srl.data.records import IFTExample
from srl.pipeline.manifest import CorruptedOutput, Manifest, ManifestError, find_manifests

A = Stamp("data", "abc", {"data.build.seed": 0, "seed": 0})


def test_manifest_round_trip_and_fingerprint(tmp_path):
    out = tmp_path / "x.jsonl"
    out.write_text("")
    Manifest(tmp_path).record("data", A, {"data/n": 3}, [str(out)])
    again = Manifest(tmp_path)
    assert again.done("data", A) and again.metrics("data") == {"data/n": 3}
    assert not again.done("m1", A)
    with pytest.raises(StageConfigMismatch, match=r"different config.*data\.build\.seed: 0 -> 5.*new run dir"):
        again.done("data", Stamp("data", "xyz", {"data.build.seed": 5, "seed": 0}))


def test_outputs_are_recorded_relative_with_checksums_and_a_moved_run_dir_resumes(tmp_path):
    run = tmp_path / "a"
    (run / "data").mkdir(parents=True)
    (run / "data" / "ift.jsonl").write_text("x\n")
    Manifest(run).record("data", A, {}, [str(run / "data")])
    entry = json.loads((run / "manifest.json").read_text())["stages"]["data"]
    assert entry["outputs"] == ["data"]
    import hashlib

    assert entry["files"] == {"data/ift.jsonl": {"size": 2, "sha256": hashlib.sha256(b"x\n").hexdigest()}}
    moved = tmp_path / "elsewhere" / "b"
    moved.parent.mkdir()
    shutil.move(run, moved)
    assert Manifest(moved).done("data", A)


def test_finished_stage_with_missing_output_runs_again(tmp_path):
    out = tmp_path / "x.jsonl"
    out.write_text("")
    Manifest(tmp_path).record("data", A, {}, [str(out)])
    out.unlink()
    assert not Manifest(tmp_path).done("data", A)


def test_changed_records_run_again_and_a_changed_model_is_refused_with_its_path(tmp_path):
    (tmp_path / "iter1").mkdir()
    records = tmp_path / "iter1" / "candidates.jsonl"
    records.write_text('{"a": 1}\n')
    weights = tmp_path / "m1" / "model" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(bytes(range(200)))
    manifest = Manifest(tmp_path)
    manifest.record("iter1/candidates", Stamp("iter1/candidates", "c"), {}, [str(records)])
    manifest.record("m1", Stamp("m1", "m"), {}, [str(weights.parent)])
    records.write_text('{"a": 2}\n')  # same size, other bytes
    again = Manifest(tmp_path)
    assert not again.done("iter1/candidates", Stamp("iter1/candidates", "c"))
    assert "iter1/candidates" not in Manifest(tmp_path).data["stages"]  # forgotten on disk: it runs again
    flipped = bytearray(weights.read_bytes())
    flipped[100] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CorruptedOutput, match=rf"{weights}: content changed"):
        again.done("m1", Stamp("m1", "m"))
    weights.write_bytes(bytes(flipped[:50]))
    with pytest.raises(CorruptedOutput, match=rf"{weights}: 50 bytes, recorded 200"):
        Manifest(tmp_path).done("m1", Stamp("m1", "m"))


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "not valid JSON"), ('{"stages": {"data": {"fingerp', "not valid JSON"), ("{}", "no 'stages' object"),
     ('{"stages": {"data": {"outputs": []}}}', "stage 'data' has no 'fingerprint'"),
     ('{"stages": {"data": {"fingerprint": "f", "outputs": "data"}}}', "'outputs' is not a list")],
    ids=["empty", "truncated", "no_stages", "no_fingerprint", "outputs_not_a_list"],
)
def test_an_unreadable_manifest_names_the_file_and_what_to_do(tmp_path, text, message):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ManifestError, match=message) as err:
        Manifest(tmp_path)
    assert str(tmp_path / "manifest.json") in str(err.value) and "delete it to run every stage again" in str(err.value)


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_a_manifest_listing_a_path_outside_the_run_dir_is_refused_and_the_file_survives(tmp_path, where):
    outside = tmp_path / "other_run" / "eval"
    outside.mkdir(parents=True)
    (outside / "replies.jsonl").write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    listed = {"absolute": str(outside), "dotdot": "../other_run/eval", "symlink": "eval"}[where]
    if where == "symlink":
        (run / "eval").symlink_to(outside)
    (run / "manifest.json").write_text(json.dumps({"stages": {"eval/m0": {"fingerprint": "f", "outputs": [listed]}}}))
    with pytest.raises(ManifestError, match="outside this run dir"):
        Manifest(run)
    assert (outside / "replies.jsonl").read_text() == "precious\n"


def test_the_guard_refuses_writes_moves_and_deletes_outside_the_run_dir(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside.txt"
    run.mkdir()
    outside.write_text("keep")
    (run / "link").symlink_to(tmp_path)
    from srl.data.records import atomic_write_text

    with rundir.working_in(run):
        for attempt in (lambda: rundir.remove(outside), lambda: atomic_write_text(outside, "x"), lambda: rundir.remove(run),
                        lambda: rundir.remove(run / ".." / "outside.txt"), lambda: atomic_write_text(run / "link" / "outside.txt", "x"),
                        lambda: rundir.link_or_copy(run / "a", outside), lambda: rundir.replace(run / "a", outside)):
            with pytest.raises(OutsideRunDir, match="not inside the run dir"):
                attempt()
        atomic_write_text(run / "inside.txt", "ok")  # inside is fine
        rundir.remove(run / "link")  # a symlink inside: the link goes, not what it points to
    assert outside.read_text() == "keep" and (run / "inside.txt").read_text() == "ok" and not (run / "link").exists()
    rundir.remove(outside)  # no run active (a library call): no restriction
    assert not outside.exists()


def ex(i: int) -> IFTExample:
    return IFTExample(prompt=f"p{i}", response=f"r{i}", tree_id="t", message_id=str(i))


def test_partial_file_keeps_whole_chunks_and_drops_torn_lines(tmp_path):
    store = PartialJsonl(tmp_path / "c.jsonl", IFTExample)
    store.append([ex(0), ex(1)])
    store.append([ex(2), ex(3)])
    store.append([ex(4)])  # half of a chunk of 2 (a stop between writes of one chunk)
    with store.partial.open("a") as fh:
        fh.write('{"prompt": "p5", "resp')  # torn line
    assert [r.message_id for r in store.read(chunk=2)] == ["0", "1", "2", "3"]
    assert store.partial.read_text().count("\n") == 4  # the file was cut back too
    store.append([ex(4), ex(5)])
    path = store.finish()
    assert [r.prompt for r in PartialJsonl(path, IFTExample).read()] == []  # partial gone
    assert path.read_text().count("\n") == 6 and not store.partial.exists()


def test_a_half_finished_partial_file_of_another_config_is_refused_or_discarded(tmp_path):
    t07 = Stamp("iter1/candidates", "f07", {"generation.sampling.temperature": 0.7})
    t15 = Stamp("iter1/candidates", "f15", {"generation.sampling.temperature": 1.5})
    store = PartialJsonl(tmp_path / "c.jsonl", IFTExample, t07)
    store.append([ex(0)])
    assert json.loads(store.stamp_path.read_text())["fingerprint"] == "f07"
    with pytest.raises(StageConfigMismatch, match=r"half-finished .*c\.jsonl\.partial.*temperature: 0\.7 -> 1\.5"):
        PartialJsonl(tmp_path / "c.jsonl", IFTExample, t15)
    assert store.partial.read_text().count("\n") == 1  # refused, nothing lost
    assert [r.message_id for r in PartialJsonl(tmp_path / "c.jsonl", IFTExample, t07).read()] == ["0"]  # same config resumes
    fresh = PartialJsonl(tmp_path / "c.jsonl", IFTExample, t15, on_stale="discard")
    assert not store.partial.exists() and fresh.read() == []
    fresh.append([ex(1)])
    fresh.finish()
    assert not fresh.stamp_path.exists() and (tmp_path / "c.jsonl").read_text().count("\n") == 1
    (tmp_path / "d.jsonl.partial").write_text('{"prompt": "p"}\n')  # an srl without stamps wrote it
    with pytest.raises(StageConfigMismatch, match="no record of its config"):
        PartialJsonl(tmp_path / "d.jsonl", IFTExample, t07)


def make_source(run, stamp=Stamp("data", "f1")):
    (run / "data").mkdir(parents=True)
    (run / "data" / "ift.jsonl").write_text("x\n")
    Manifest(run).record("data", stamp, {"data/n": 3}, [str(run / "data")])


def test_adopt_links_outputs_of_a_matching_stage_from_another_run(tmp_path):
    src_dir, mine_dir = tmp_path / "sweep" / "0", tmp_path / "sweep" / "1"
    make_source(src_dir)
    (src_dir / "iter1").mkdir()
    (src_dir / "iter1" / "prompts.jsonl").write_text("p\n")
    Manifest(src_dir).record("iter1/prompts", Stamp("iter1/prompts", "f2"), {}, [str(src_dir / "iter1" / "prompts.jsonl")])
    sources = find_manifests(tmp_path / "sweep", exclude=mine_dir)
    assert [m.run_dir for m in sources] == [src_dir]
    mine = Manifest(mine_dir)
    assert mine.adopt("data", Stamp("data", "f1"), sources) == {"data/n": 3}
    assert (mine_dir / "data" / "ift.jsonl").read_text() == "x\n"
    assert (mine_dir / "data" / "ift.jsonl").stat().st_ino == (src_dir / "data" / "ift.jsonl").stat().st_ino  # a hard link
    assert mine.adopt("iter1/prompts", Stamp("iter1/prompts", "other-config"), sources) is None  # a different fingerprint
    assert not (mine_dir / "iter1").exists()
    again = Manifest(mine_dir)  # recorded on disk with its origin, and done for a resumed run
    assert again.done("data", Stamp("data", "f1")) and again.data["stages"]["data"]["reused_from"] == str(src_dir)
    assert again.data["stages"]["data"]["outputs"] == ["data"]
    assert find_manifests(tmp_path / "missing", exclude=mine_dir) == []


def test_adopt_skips_a_source_whose_outputs_are_gone_or_changed(tmp_path):
    src = Manifest(tmp_path / "a")
    src.record("data", Stamp("data", "f1"), {}, [str(tmp_path / "a" / "data")])  # never written
    assert Manifest(tmp_path / "b").adopt("data", Stamp("data", "f1"), [src]) is None
    make_source(tmp_path / "c")
    (tmp_path / "c" / "data" / "ift.jsonl").write_text("y\n")  # changed after it was recorded
    assert Manifest(tmp_path / "d").adopt("data", Stamp("data", "f1"), [Manifest(tmp_path / "c")]) is None


def tree(root):
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_copied_sweep_reuses_its_own_jobs_and_never_touches_the_original(tmp_path):
    make_source(tmp_path / "sweepA" / "0")
    before = tree(tmp_path / "sweepA")
    shutil.copytree(tmp_path / "sweepA", tmp_path / "sweepB", symlinks=True)
    mine_dir = tmp_path / "sweepB" / "1"
    with rundir.working_in(mine_dir):
        mine = Manifest(mine_dir)
        assert mine.adopt("data", Stamp("data", "f1"), find_manifests(tmp_path / "sweepB", mine_dir)) == {"data/n": 3}
    assert (mine_dir / "data" / "ift.jsonl").stat().st_ino == (tmp_path / "sweepB" / "0" / "data" / "ift.jsonl").stat().st_ino
    assert tree(tmp_path / "sweepA") == before


def test_a_source_manifest_listing_outside_paths_is_not_reused(tmp_path, caplog):
    make_source(tmp_path / "sweepA" / "0")
    job = tmp_path / "sweepB" / "0"
    job.mkdir(parents=True)
    # a manifest written with absolute paths (srl before relative paths), then copied
    (job / "manifest.json").write_text(json.dumps({"stages": {"data": {"fingerprint": "f1", "outputs": [str(tmp_path / "sweepA" / "0" / "data")]}}}))
    before = tree(tmp_path / "sweepA")
    assert find_manifests(tmp_path / "sweepB", tmp_path / "sweepB" / "1") == []
    assert "outside this run dir" in caplog.text and str(job / "manifest.json") in caplog.text
    assert tree(tmp_path / "sweepA") == before
