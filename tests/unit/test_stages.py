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
