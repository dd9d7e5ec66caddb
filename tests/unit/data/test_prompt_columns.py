"""Prompt sets from any column of a file, a saved data set or the Hub: the self-instruction pool,
its few-shot demonstrations and the head-to-head prompts."""

from __future__ import annotations

import json

import pytest

from srl.data.prompt_sets import PromptSetSettings, load_prompt_set, read_prompt_column
from srl.data.records import RecordError
from srl.generation.prompts import PromptGenSettings, demonstrations, pool_prompts


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_any_column_string_or_messages(tmp_path):
    path = _write(tmp_path / "p.jsonl", [
        {"id": "q1", "question": "What is rain?"},
        {"question": [{"role": "system", "content": "s"}, {"role": "user", "content": "Why is the sky blue?"}]},
        {"question": "   "},  # empty: left out
    ])
    source, rows = read_prompt_column(str(path), field="question")
    assert source == str(path) and rows == [("q1", "What is rain?"), ("line2", "Why is the sky blue?")]
    assert read_prompt_column(str(_write(tmp_path / "a.jsonl", [{"instruction": "Sort these.", "input": "3 1 2"}])))[1] == [
        ("line1", "Sort these.\n\n3 1 2")]
    with pytest.raises(RecordError, match=r"p\.jsonl line 1: missing field 'text' \(fields of the row: \['id', 'question'\]\)"):
        read_prompt_column(str(path), field="text")
    with pytest.raises(RecordError, match=r"b\.jsonl line 1: field 'q' should be a string or a list of messages, got int"):
        read_prompt_column(str(_write(tmp_path / "b.jsonl", [{"q": 3}])), field="q")
    with pytest.raises(RecordError, match=r"c\.jsonl line 1: field 'q': no message with role 'user'"):
        read_prompt_column(str(_write(tmp_path / "c.jsonl", [{"q": [{"role": "assistant", "content": "x"}]}])), field="q")
    with pytest.raises(RecordError, match=r"no non-empty prompt among 1 rows"):
        read_prompt_column(str(_write(tmp_path / "d.jsonl", [{"prompt": ""}])))


def test_pool_and_demonstrations_from_a_saved_data_set(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": f"Write a poem about topic number {i}."} for i in range(10)])}).save_to_disk(
        str(tmp_path / "pool"))
    settings = PromptGenSettings(num_prompts=4, source="pool", pool_path=str(tmp_path / "pool"), pool_field="text")
    records, metrics = pool_prompts(settings.pool_path, settings, seed=0, iteration=1)
    assert metrics["pool_size"] == 10 and len(records) == 4
    assert all(r.prompt.startswith("Write a poem about topic number") and r.source == "pool" for r in records)
    assert [r.prompt_id for r in records] == [r.prompt_id for r in pool_prompts(settings.pool_path, settings, 0, 1)[0]]  # seeded
    demos = PromptGenSettings(demos_path=str(tmp_path / "pool"), demos_field="text")
    assert demonstrations(demos, ["ignored"]) == [f"Write a poem about topic number {i}." for i in range(10)]
    assert demonstrations(PromptGenSettings(), ["an IFT prompt"]) == ["an IFT prompt"]
    with pytest.raises(RecordError, match=r"pool \(train\) row 0: missing field 'prompt' \(or 'instruction'"):
        pool_prompts(settings.pool_path, PromptGenSettings(num_prompts=4, source="pool", pool_path=settings.pool_path), 0, 1)


def test_head_to_head_prompts_from_a_parquet_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"id": f"x{i}", "instruction_text": f"Task {i}"} for i in range(5)]).to_parquet(str(tmp_path / "e.parquet"))
    prompts = load_prompt_set(PromptSetSettings(kind="jsonl", path=str(tmp_path / "e.parquet"), field="instruction_text", limit=3))
    assert len(prompts) == 3 and {p.prompt_id for p in prompts} <= {f"x{i}" for i in range(5)}
    assert all(p.prompt == f"Task {p.prompt_id[1:]}" and p.source == "jsonl" for p in prompts)
    with pytest.raises(FileNotFoundError, match="jsonl prompt set: file not found"):
        load_prompt_set(PromptSetSettings(kind="jsonl", path=str(tmp_path / "missing.jsonl")))
