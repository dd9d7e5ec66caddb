"""Stage manifest and chunked partial files."""

from __future__ import annotations

import pytest

from srl.records import IFTExample, PartialJsonl
from srl.stages import Manifest, StageConfigMismatch


def test_manifest_round_trip_and_fingerprint(tmp_path):
    out = tmp_path / "x.jsonl"
    out.write_text("")
    Manifest(tmp_path).record("data", "abc", {"data/n": 3}, [str(out)])
    again = Manifest(tmp_path)
    assert again.done("data", "abc") and again.metrics("data") == {"data/n": 3}
    assert not again.done("m1", "abc")
    with pytest.raises(StageConfigMismatch, match="different config"):
        again.done("data", "xyz")


def test_finished_stage_with_missing_output_runs_again(tmp_path):
    out = tmp_path / "x.jsonl"
    out.write_text("")
    Manifest(tmp_path).record("data", "abc", {}, [str(out)])
    out.unlink()
    assert not Manifest(tmp_path).done("data", "abc")


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


def test_adopt_links_outputs_of_a_matching_stage_from_another_run(tmp_path):
    from srl.stages import find_manifests

    src_dir, mine_dir = tmp_path / "sweep" / "0", tmp_path / "sweep" / "1"
    (src_dir / "data").mkdir(parents=True)
    (src_dir / "data" / "ift.jsonl").write_text("x\n")
    (src_dir / "iter1").mkdir()
    (src_dir / "iter1" / "prompts.jsonl").write_text("p\n")
    src = Manifest(src_dir)
    src.record("data", "f1", {"data/n": 3}, [str(src_dir / "data")])
    src.record("iter1/prompts", "f2", {"iter1/prompts/accepted": 1}, [str(src_dir / "iter1" / "prompts.jsonl")])
    sources = find_manifests(tmp_path / "sweep", exclude=mine_dir)
    assert [m.run_dir for m in sources] == [src_dir]
    mine = Manifest(mine_dir)
    assert mine.adopt("data", "f1", sources) == {"data/n": 3}
    assert (mine_dir / "data" / "ift.jsonl").read_text() == "x\n"
    assert (mine_dir / "data" / "ift.jsonl").stat().st_ino == (src_dir / "data" / "ift.jsonl").stat().st_ino  # a hard link
    assert mine.adopt("iter1/prompts", "other-config", sources) is None  # a different fingerprint is not reused
    assert not (mine_dir / "iter1").exists()
    again = Manifest(mine_dir)  # recorded on disk with its origin, and done for a resumed run
    assert again.done("data", "f1") and again.data["stages"]["data"]["reused_from"] == str(src_dir)
    assert again.data["stages"]["data"]["outputs"] == [str(mine_dir / "data")]
    assert find_manifests(tmp_path / "missing", exclude=mine_dir) == []


def test_adopt_skips_a_source_whose_outputs_are_gone(tmp_path):
    src = Manifest(tmp_path / "a")
    src.record("data", "f1", {}, [str(tmp_path / "a" / "data")])  # never written
    assert Manifest(tmp_path / "b").adopt("data", "f1", [src]) is None
