"""Record files: JSONL round-trip, atomic writes and line-precise validation errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

from srl.data.records import EFTExample, IFTExample, RankedPrompt, RecordError, read_jsonl, read_text, write_json, write_jsonl


def _ift(i: int = 0) -> IFTExample:
    return IFTExample(prompt=f"Question {i}?", response=f"Answer {i} — ünïcode ✓", tree_id=f"t{i}", message_id=f"m{i}")


def _eft() -> EFTExample:
    return EFTExample(
        prompt="Why is the sky blue?",
        response="Rayleigh scattering.",
        justification="Short but right.",
        score=4,
        judge_prompt="Judge: Why is the sky blue? / Rayleigh scattering.",
        target="Short but right.\nScore: 4",
        tree_id="t1",
        message_id="m1",
        human_rank=0,
        num_siblings=3,
        mode="ranked",
    )


def _ranked() -> RankedPrompt:
    return RankedPrompt(prompt="Name a colour.", replies=("Red.", "Blue, obviously."), ranks=(0, 2), tree_id="t2", message_id="m2")


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _ift_dict(**over):
    d = {"prompt": "p", "response": "r", "tree_id": "t", "message_id": "m"}
    d.update(over)
    return d


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "cls, records",
    [
        (IFTExample, [_ift(0), _ift(1), _ift(2)]),
        (EFTExample, [_eft()]),
        (RankedPrompt, [_ranked()]),
    ],
)
def test_round_trip(tmp_path, cls, records):
    path = tmp_path / "sub" / "records.jsonl"  # parent folder does not exist yet
    n = write_jsonl(path, records)
    assert n == len(records)
    # one JSON object a line
    assert len(path.read_text(encoding="utf-8").splitlines()) == len(records)
    assert read_jsonl(path, cls) == records


def test_round_trip_tuples_come_back_as_tuples(tmp_path):
    path = tmp_path / "ranked.jsonl"
    write_jsonl(path, [_ranked()])
    # on disk the tuples are JSON lists ...
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["replies"] == ["Red.", "Blue, obviously."] and raw["ranks"] == [0, 2]
    # ... and come back as tuples, so the frozen record compares equal and stays hashable
    (back,) = read_jsonl(path, RankedPrompt)
    assert isinstance(back.replies, tuple) and isinstance(back.ranks, tuple)
    assert back.replies == ("Red.", "Blue, obviously.") and back.ranks == (0, 2)
    hash(back)


def test_non_ascii_is_written_verbatim(tmp_path):
    path = tmp_path / "ift.jsonl"
    write_jsonl(path, [_ift(0)])
    # ensure_ascii=False: the text itself, not \\u escapes
    assert "ünïcode ✓" in path.read_text(encoding="utf-8")


def test_write_dicts_and_empty(tmp_path):
    path = tmp_path / "d.jsonl"
    assert write_jsonl(path, [_ift_dict(prompt="x")]) == 1
    assert read_jsonl(path, IFTExample) == [IFTExample("x", "r", "t", "m")]
    assert write_jsonl(path, []) == 0
    assert path.read_text(encoding="utf-8") == ""
    assert read_jsonl(path, IFTExample) == []


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_leaves_no_tmp_and_replaces(tmp_path):
    path = tmp_path / "ift.jsonl"
    write_jsonl(path, [_ift(0), _ift(1)])
    write_jsonl(path, [_ift(5)])  # overwrite: the old content is replaced entirely
    assert read_jsonl(path, IFTExample) == [_ift(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ift.jsonl"]
    write_json(tmp_path / "c.json", {"b": 1, "a": 2})
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": 2, "b": 1}
    assert not list(tmp_path.glob("*.tmp"))


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "ift.jsonl"
    write_jsonl(path, [_ift(0)])

    def records():
        yield _ift(1)
        raise RuntimeError("crash while producing records")

    with pytest.raises(RuntimeError):
        write_jsonl(path, records())
    # the crash happened before anything replaced the file: old content intact, no temp file
    assert read_jsonl(path, IFTExample) == [_ift(0)]
    assert not list(tmp_path.glob("*.tmp"))


# --------------------------------------------------------------------------- validation errors


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    _write_lines(path, [json.dumps(_ift_dict()), json.dumps(_ift_dict()), '{"prompt": "p", "response": '])
    with pytest.raises(RecordError) as exc:
        read_jsonl(path, IFTExample)
    assert f"{path}:3" in str(exc.value)


def test_blank_lines_skipped_and_line_numbers_count_them(tmp_path):
    path = tmp_path / "blank.jsonl"
    _write_lines(path, ["", json.dumps(_ift_dict(prompt="a")), "   ", "\t", json.dumps(_ift_dict(prompt="b")), ""])
    assert [r.prompt for r in read_jsonl(path, IFTExample)] == ["a", "b"]
    # lines 1..3 blank, line 4 broken: the reported line is the physical line 4
    _write_lines(path, ["", "  ", json.dumps(_ift_dict()), "{oops"])
    with pytest.raises(RecordError, match=rf"{path}:4"):
        read_jsonl(path, IFTExample)


@pytest.mark.parametrize(
    "obj, field",
    [
        ({"prompt": "p", "response": "r", "tree_id": "t"}, "message_id"),  # missing
        (_ift_dict(extra_field=1), "extra_field"),  # unknown
        (_ift_dict(prompt=3), "prompt"),  # int where str expected
        (_ift_dict(tree_id=None), "tree_id"),  # null where str expected
    ],
)
def test_ift_field_errors_name_file_line_field(tmp_path, obj, field):
    path = tmp_path / "ift.jsonl"
    _write_lines(path, [json.dumps(_ift_dict()), json.dumps(obj)])
    with pytest.raises(RecordError) as exc:
        read_jsonl(path, IFTExample)
    msg = str(exc.value)
    assert f"{path}:2" in msg and field in msg


@pytest.mark.parametrize(
    "field, value",
    [
        ("score", "4"),  # string for int
        ("score", True),  # bool is not an int here
        ("score", 4.5),  # float for int
        ("human_rank", None),
        ("mode", 1),
    ],
)
def test_eft_wrong_type(tmp_path, field, value):
    obj = dataclasses.asdict(_eft())
    obj[field] = value
    path = tmp_path / "eft.jsonl"
    _write_lines(path, [json.dumps(obj)])
    with pytest.raises(RecordError) as exc:
        read_jsonl(path, EFTExample)
    assert f"{path}:1" in str(exc.value) and f"'{field}'" in str(exc.value)


@pytest.mark.parametrize(
    "field, value",
    [
        ("replies", "Red."),  # a string is not a list
        ("replies", ["Red.", 2]),  # element of the wrong type
        ("ranks", [0, "1"]),
        ("ranks", [0, True]),
    ],
)
def test_ranked_sequence_field_errors(tmp_path, field, value):
    obj = {"prompt": "p", "replies": ["a", "b"], "ranks": [0, 1], "tree_id": "t", "message_id": "m"}
    obj[field] = value
    path = tmp_path / "ranked.jsonl"
    _write_lines(path, [json.dumps(obj)])
    with pytest.raises(RecordError) as exc:
        read_jsonl(path, RankedPrompt)
    assert f"{path}:1" in str(exc.value) and field in str(exc.value)


def test_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    _write_lines(path, [json.dumps(_ift_dict()), json.dumps(["p", "r", "t", "m"])])
    with pytest.raises(RecordError, match=rf"{path}:2"):
        read_jsonl(path, IFTExample)


# --------------------------------------------------------------------------- bytes that are not UTF-8


def test_non_utf8_line_names_file_line_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = (json.dumps(_ift_dict()) + "\n").encode("utf-8")
    bad = '{"prompt": "caf\xe9", "response": "r", "tree_id": "t", "message_id": "m"}\n'.encode("latin-1")
    path.write_bytes(good + good + bad)
    with pytest.raises(RecordError) as exc:
        read_jsonl(path, IFTExample)
    # byte 0xe9 is the 15th byte of line 3 ('{"prompt": "caf' is 15 bytes): column 16, offset 2 * len(good) + 15
    assert str(exc.value).startswith(f"{path}:3: not UTF-8")
    assert "0xe9" in str(exc.value) and "column 16" in str(exc.value) and f"byte offset {2 * len(good) + 15}" in str(exc.value)


def test_read_text_not_utf8_names_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"line one\nline two\n\xff\xfe three\n")
    with pytest.raises(RecordError, match=rf"{path}:3: not UTF-8 text \(byte 0xff at column 1, byte offset 18 "):
        read_text(path)
    path.write_text("ünïcode ✓\n", encoding="utf-8")
    assert read_text(path) == "ünïcode ✓\n"
