"""Evaluation prompt sets (real files in ../shared/data/prompts), reference replies, AlpacaEval export."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA

from srl.data.prompt_sets import PromptSetSettings, load_prompt_set, read_reference, write_alpaca_eval
from srl.data.records import Candidate, IFTExample, RecordError, write_jsonl

PROMPTS = SHARED_DATA / "prompts"


@pytest.fixture(scope="module")
def shared_prompts():
    if not PROMPTS.is_dir():
        pytest.skip(f"shared prompts not found at {PROMPTS}")
    return PROMPTS


def test_self_instruct_user_oriented(shared_prompts):
    path = shared_prompts / "user_oriented_instructions.jsonl"
    prompts = load_prompt_set(PromptSetSettings("self_instruct", str(path)))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(prompts) == len(rows) == 252
    first = rows[0]
    # instruction, a blank line, the first instance's input
    assert prompts[0].prompt == first["instruction"].strip() + "\n\n" + first["instances"][0]["input"].strip()
    assert prompts[0].prompt_id == first["id"] and prompts[0].source == "self_instruct"
    no_input = next(i for i, r in enumerate(rows) if not r["instances"][0]["input"].strip())
    assert prompts[no_input].prompt == rows[no_input]["instruction"].strip()


def test_mt_bench_first_turns(shared_prompts):
    path = shared_prompts / "mt_bench_questions.jsonl"
    prompts = load_prompt_set(PromptSetSettings("mt_bench", str(path)))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(prompts) == 80
    assert [p.prompt for p in prompts] == [r["turns"][0].strip() for r in rows]
    assert prompts[0].prompt_id == f"mt_bench_{rows[0]['question_id']}"


def test_limit_is_a_seeded_subset_in_file_order(shared_prompts):
    settings = PromptSetSettings("mt_bench", str(shared_prompts / "mt_bench_questions.jsonl"), limit=10, seed=1)
    a = load_prompt_set(settings)
    all_ids = [p.prompt_id for p in load_prompt_set(PromptSetSettings("mt_bench", settings.path))]
    assert len(a) == 10 and [p.prompt_id for p in a] == [i for i in all_ids if i in {p.prompt_id for p in a}]
    assert a == load_prompt_set(settings)
    assert a != load_prompt_set(PromptSetSettings("mt_bench", settings.path, limit=10, seed=2))


def test_plain_jsonl_and_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "x", "prompt": " Hi? "}\n{"instruction": "Sum", "input": "1 2"}\n')
    prompts = load_prompt_set(PromptSetSettings("jsonl", str(path)))
    assert [(p.prompt_id, p.prompt) for p in prompts] == [("x", "Hi?"), ("line2", "Sum\n\n1 2")]
    path.write_text('{"prompt": "ok"}\n{"text": "no prompt field"}\n')
    with pytest.raises(RecordError, match=r"p\.jsonl line 2: missing field 'prompt' \(or 'instruction'"):
        load_prompt_set(PromptSetSettings("jsonl", str(path)))
    mt = tmp_path / "mt.jsonl"
    mt.write_text('{"question_id": 1, "turns": []}\n')
    with pytest.raises(RecordError, match=r"mt.jsonl:1: field 'turns'"):
        load_prompt_set(PromptSetSettings("mt_bench", str(mt)))
    with pytest.raises(ValueError, match="needs a path"):
        PromptSetSettings("mt_bench")
    with pytest.raises(ValueError, match="kind must be one of"):
        PromptSetSettings("alpaca")
    with pytest.raises(FileNotFoundError):
        load_prompt_set(PromptSetSettings("jsonl", str(tmp_path / "missing.jsonl")))


def test_heldout_prompts_come_from_the_ift_heldout_file():
    examples = [IFTExample("What is 2+2?", "4", "t1", "m1"), IFTExample("Name a colour.", "Red", "t2", "m2")]
    prompts = load_prompt_set(PromptSetSettings("heldout"), examples)
    assert [(p.prompt_id, p.prompt) for p in prompts] == [("oasst_m1", "What is 2+2?"), ("oasst_m2", "Name a colour.")]


def test_alpaca_export_round_trips_as_reference(tmp_path):
    replies = [Candidate("a", 0, "Q1", "R1", 2, True), Candidate("b", 0, "Q2", "R2 ü", 3, False)]
    path = write_alpaca_eval(tmp_path / "alpaca_eval.json", replies, "M1")
    rows = json.loads(path.read_text(encoding="utf-8"))
    assert rows == [{"instruction": "Q1", "output": "R1", "generator": "M1"}, {"instruction": "Q2", "output": "R2 ü", "generator": "M1"}]
    # Read back as reference replies for the same prompts (matched by text), one prompt without a reply.
    prompts = load_prompt_set(PromptSetSettings("heldout"), [IFTExample("Q2", "", "t", "b"), IFTExample("Q3", "", "t", "c")])
    found, missing = read_reference(path, prompts)
    assert missing == 1 and found["oasst_b"].response == "R2 ü"


def test_reference_from_srl_replies_file(tmp_path):
    path = tmp_path / "replies.jsonl"
    write_jsonl(path, [Candidate("oasst_b", 0, "Q2", "R", 1, True)])
    prompts = load_prompt_set(PromptSetSettings("heldout"), [IFTExample("Q2", "", "t", "b")])
    found, missing = read_reference(path, prompts)
    assert missing == 0 and found["oasst_b"].response == "R"


def test_prompt_set_not_utf8_or_empty(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "fine"}\n{"prompt": "na\xefve"}\n')  # latin-1 byte, not UTF-8
    # line 1 is 19 bytes with its newline, then 14 bytes of line 2 before 0xef: column 15, offset 33
    with pytest.raises(RecordError, match=rf"{path}:2: not UTF-8 text \(byte 0xef at column 15, byte offset 33 "):
        load_prompt_set(PromptSetSettings("jsonl", str(path)))
    for kind in ("jsonl", "mt_bench", "self_instruct"):
        path.write_text("\n  \n")  # blank lines only: no rows
        with pytest.raises(RecordError, match=rf"{path}: no rows \(an empty {kind} prompt set\)"):
            load_prompt_set(PromptSetSettings(kind, str(path)))


def test_reference_file_not_utf8_empty_or_broken(tmp_path):
    prompts = load_prompt_set(PromptSetSettings("heldout"), [IFTExample("Q2", "", "t", "b")])
    path = tmp_path / "ref.json"
    path.write_bytes(b'[\n{"instruction": "Q2", "output": "\xe9"}\n]\n')
    with pytest.raises(RecordError, match=rf"{path}:2: not UTF-8"):
        read_reference(path, prompts)
    path.write_text('[\n{"instruction": "Q2", "output": "x"},\n]\n')  # trailing comma
    with pytest.raises(RecordError, match=rf"{path}:3: not valid JSON"):
        read_reference(path, prompts)
    path.write_text("")
    with pytest.raises(RecordError, match=rf"{path}: no rows"):
        read_reference(path, prompts)
