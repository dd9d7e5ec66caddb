"""A user's own SFT data: conversations and prompt/completion rows from files and saved data sets,
multi-turn label masks checked by hand, EFT rows, and errors that name the file, line and field."""

from __future__ import annotations

import json

import pytest

from srl.data.instructions import EFTRowsSource, InstructionSource
from srl.data.oasst import embedded_seed_source
from srl.data.records import IFTExample, RecordError, read_jsonl, write_jsonl
from srl.judging.templates import load_judge_template, load_pairwise_template
from srl.training.encoding import IGNORE_INDEX, encode_example, encode_ift, encode_sft, encode_turns
from srl.training.sft_data import BuildSettings, compose

CHAT = [("system", "Be brief."), ("user", "Name a colour."), ("assistant", "Blue."), ("user", "Another?"), ("assistant", "Red.")]


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _msgs(*turns):
    return [{"role": r, "content": c} for r, c in turns]


def test_every_assistant_turn_is_a_target_and_nothing_else(tiny_tokenizer):
    tok = tiny_tokenizer
    example, reason = encode_turns(tok, CHAT, max_length=512)
    assert reason is None
    # ChatML by hand: context pieces, then each reply with its end-of-turn.
    ctx1 = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    ctx2 = "<|im_start|>user\nAnother?<|im_end|>\n<|im_start|>assistant\n"
    a1, a2 = _ids(tok, "Blue.<|im_end|>\n"), _ids(tok, "Red.<|im_end|>\n")
    c1, c2 = _ids(tok, ctx1), _ids(tok, ctx2)
    assert list(example.input_ids) == c1 + a1 + c2 + a2
    assert list(example.labels) == [IGNORE_INDEX] * len(c1) + a1 + [IGNORE_INDEX] * len(c2) + a2
    assert tok.decode([t for t in example.labels if t != IGNORE_INDEX]) == "Blue.<|im_end|>\nRed.<|im_end|>\n"
    assert example.num_target_tokens == len(a1) + len(a2)


def test_last_only_labels_the_final_reply_and_one_turn_equals_encode_example(tiny_tokenizer):
    tok = tiny_tokenizer
    last, _ = encode_turns(tok, CHAT, max_length=512, last_only=True)
    assert tok.decode([t for t in last.labels if t != IGNORE_INDEX]) == "Red.<|im_end|>\n"
    full, _ = encode_turns(tok, CHAT, max_length=512)
    assert last.input_ids == full.input_ids
    one, _ = encode_turns(tok, [("user", "hi"), ("assistant", "Hello there")], max_length=256)
    assert one == encode_example(tok, "hi", "Hello there", max_length=256)[0]
    # An IFT example without turns encodes as prompt -> response, with turns as the conversation.
    assert encode_ift(tok, IFTExample("hi", "Hello there", "t", "m"), 256)[0] == one
    assert encode_ift(tok, IFTExample("Name a colour.", "Blue.", "t", "m", turns=tuple(CHAT)), 512)[0] == full


def test_long_conversations_are_cut_or_skipped(tiny_tokenizer):
    tok = tiny_tokenizer
    full, _ = encode_turns(tok, CHAT, max_length=512)
    first_target = next(i for i, t in enumerate(full.labels) if t != IGNORE_INDEX)
    cut, reason = encode_turns(tok, CHAT, max_length=first_target + 2)
    assert reason == "completion_truncated" and cut.input_ids == full.input_ids[: first_target + 2]
    assert cut.num_target_tokens == 2
    assert encode_turns(tok, CHAT, max_length=first_target) == (None, "prompt_too_long")


def test_messages_rows_read_with_skips_counted(tmp_path, tiny_tokenizer):
    path = _write(tmp_path / "chats.jsonl", [
        {"id": "a", "messages": _msgs(*CHAT)},
        {"id": "b", "messages": _msgs(("user", "hi"), ("assistant", "Hello"), ("user", "and then?"))},  # trailing user dropped
        {"id": "c", "messages": _msgs(("user", "only a question"))},  # no reply
        {"id": "d", "messages": _msgs(("user", "q"), ("assistant", "  "))},  # empty reply
        {"id": "e", "messages": _msgs(*CHAT)},  # the same conversation as a
        {"messages": _msgs(("user", "no id"), ("assistant", "fine"))},
    ])
    train, heldout, counts = InstructionSource(path=str(path), heldout_fraction=0.0).load()
    assert heldout == []
    by_id = {ex.tree_id: ex for ex in train}
    assert sorted(by_id) == ["a", "b", "line6"]
    assert (by_id["a"].prompt, by_id["a"].response, by_id["a"].turns) == ("Name a colour.", "Blue.", tuple(CHAT))
    assert (by_id["b"].prompt, by_id["b"].response, by_id["b"].turns) == ("hi", "Hello", ())  # a plain exchange: no turns
    assert counts["instructions_skipped_no_reply"] == 1 and counts["instructions_skipped_empty_text"] == 1
    assert counts["instructions_skipped_duplicate"] == 1 and counts["instructions_trailing_user_dropped"] == 2
    assert counts["instructions_multi_turn"] == 1 and counts["instructions_rows"] == 6
    # The records round-trip through data/ift_train.jsonl with their turns.
    write_jsonl(tmp_path / "ift.jsonl", train)
    again = read_jsonl(tmp_path / "ift.jsonl", IFTExample)
    assert again == train
    encoded, enc_counts = encode_sft(tiny_tokenizer, again, [], 512)
    assert enc_counts["ift_examples"] == 3
    assert tiny_tokenizer.decode([t for t in encoded[0].labels if t != IGNORE_INDEX]) == "Blue.<|im_end|>\nRed.<|im_end|>\n"


@pytest.mark.parametrize("row, message", [
    ({"messages": _msgs(("user", "q"), ("bot", "a"))}, r"chats\.jsonl line 1: field 'messages' message 1: role should be one of"),
    ({"messages": _msgs(("user", "q"), ("user", "q2"), ("assistant", "a"))}, r"line 1: field 'messages' message 1: expected role 'assistant'"),
    ({"messages": _msgs(("user", "q"), ("system", "s"), ("assistant", "a"))}, r"line 1: field 'messages': a system message may only be the first"),
    ({"messages": [{"role": "user", "content": 3}]}, r"line 1: field 'messages' message 0: content should be a string, got int"),
    ({"messages": "hello"}, r"line 1: field 'messages' should be list, got str"),
    ({"conversation": []}, r"line 1: missing field 'messages' \(fields of the row: \['conversation'\]\)"),
    ({"id": 1.5, "messages": _msgs(("user", "q"), ("assistant", "a"))}, r"line 1: field 'id' should be a string or an integer"),
])
def test_malformed_messages_rows_name_file_line_and_field(tmp_path, row, message):
    path = _write(tmp_path / "chats.jsonl", [row])
    with pytest.raises(RecordError, match=message):
        InstructionSource(path=str(path)).load()


def test_repeated_ids_and_an_empty_source_are_errors(tmp_path):
    row = {"id": "x", "messages": _msgs(("user", "q"), ("assistant", "a"))}
    with pytest.raises(RecordError, match=r"chats\.jsonl line 2: id 'x' repeats the one at line 1"):
        InstructionSource(path=str(_write(tmp_path / "chats.jsonl", [row, row]))).load()
    with pytest.raises(RecordError, match=r"no usable messages row among 1 .*no_reply': 1"):
        InstructionSource(path=str(_write(tmp_path / "none.jsonl", [{"messages": _msgs(("user", "q"))}]))).load()
    with pytest.raises(FileNotFoundError, match="data.instructions: file not found"):
        InstructionSource(path=str(tmp_path / "missing.jsonl")).load()
    with pytest.raises(ValueError, match="format must be one of"):
        InstructionSource(path="x.jsonl", format="sharegpt")


def test_prompt_completion_rows_plain_and_conversational(tmp_path, tiny_tokenizer):
    path = _write(tmp_path / "pc.jsonl", [
        {"prompt": "Say hi.", "completion": "Hi!"},
        {"prompt": _msgs(("user", "Name a colour."), ("assistant", "Blue."), ("user", "Another?")),
         "completion": _msgs(("assistant", "Red."))},
    ])
    train, _, _ = InstructionSource(path=str(path), format="prompt_completion", heldout_fraction=0.0).load()
    plain, conv = train
    assert (plain.prompt, plain.response, plain.turns) == ("Say hi.", "Hi!", ())
    assert conv.train_last_only and conv.turns[-1] == ("assistant", "Red.") and conv.response == "Blue."
    encoded, _ = encode_ift(tiny_tokenizer, conv, 512)
    assert tiny_tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX]) == "Red.<|im_end|>\n"  # the completion only
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "q", "completion": _msgs(("user", "a"))}])
    with pytest.raises(RecordError, match=r"bad\.jsonl line 1: field 'completion': expected one message with role 'assistant'"):
        InstructionSource(path=str(bad), format="prompt_completion").load()
    missing = _write(tmp_path / "missing.jsonl", [{"prompt": "q"}])
    with pytest.raises(RecordError, match=r"missing\.jsonl line 1: missing field 'completion'"):
        InstructionSource(path=str(missing), format="prompt_completion").load()
    renamed = _write(tmp_path / "renamed.jsonl", [{"question": "q?", "answer": "a."}])
    train, _, _ = InstructionSource(path=str(renamed), format="prompt_completion", prompt_field="question",
                                    completion_field="answer", heldout_fraction=0.0).load()
    assert (train[0].prompt, train[0].response) == ("q?", "a.")


def test_saved_hub_style_data_sets_and_parquet(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"id": f"r{i}", "messages": _msgs(("user", f"question {i}"), ("assistant", f"answer {i}"))} for i in range(20)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    train, heldout, _ = InstructionSource(path=str(tmp_path / "saved"), heldout_fraction=0.25, seed=3).load()
    assert len(heldout) == 5 and len(train) == 15
    assert not {ex.tree_id for ex in train} & {ex.tree_id for ex in heldout}
    again = InstructionSource(path=str(tmp_path / "saved"), heldout_fraction=0.25, seed=3).load()
    assert (again[0], again[1]) == (train, heldout)  # seeded
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:4]), "test": datasets.Dataset.from_list(rows[4:6])}).save_to_disk(
        str(tmp_path / "dict"))
    test, _, _ = InstructionSource(path=str(tmp_path / "dict"), split="test", heldout_fraction=0.0).load()
    assert [ex.tree_id for ex in test] == ["r4", "r5"]
    with pytest.raises(RecordError, match=r"dict: no split 'validation' in the saved data set \(it has \['test', 'train'\]\)"):
        InstructionSource(path=str(tmp_path / "dict"), split="validation").load()
    bad = [{"id": "x", "messages": _msgs(("user", "q"), ("user", "a"))}]
    datasets.Dataset.from_list(bad).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(RecordError, match=r"bad row 0: field 'messages' message 1: expected role 'assistant'"):
        InstructionSource(path=str(tmp_path / "bad")).load()
    datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}]).to_parquet(str(tmp_path / "pc.parquet"))
    train, _, _ = InstructionSource(path=str(tmp_path / "pc.parquet"), format="prompt_completion", heldout_fraction=0.0).load()
    assert (train[0].prompt, train[0].response, train[0].tree_id) == ("p", "c", "row1")


def test_eft_rows_become_judge_examples_in_the_template(tmp_path):
    template = load_judge_template("additive5")
    path = _write(tmp_path / "eft.jsonl", [
        {"id": "e1", "prompt": "What is 2+2?", "response": "4", "judgement": "Correct and direct.", "score": 4},
        {"id": "e2", "prompt": "Hi", "response": "Hello", "judgement": "Polite but thin.\nScore: 2", "score": 2},
        {"id": "e3", "prompt": "  ", "response": "x", "judgement": "j", "score": 1},
    ])
    rows, counts = EFTRowsSource(path=str(path)).load(template)
    assert counts == {"eft_rows": 2, "eft_rows_skipped_empty_text": 1}
    first, second = rows
    assert first.judge_prompt == template.render("What is 2+2?", "4")
    assert first.target == "Correct and direct.\nScore: 4"
    assert template.parse(first.target) == 4 and first.mode == "rows"
    assert second.target == "Polite but thin.\nScore: 2"  # its own score line, kept, not doubled
    wrong = _write(tmp_path / "wrong.jsonl", [{"prompt": "p", "response": "r", "judgement": "Fine.\nScore: 3", "score": 5}])
    with pytest.raises(RecordError, match=r"wrong\.jsonl line 1: field 'judgement' ends with the score 3, but field 'score' is 5"):
        EFTRowsSource(path=str(wrong)).load(template)
    out = _write(tmp_path / "out.jsonl", [{"prompt": "p", "response": "r", "judgement": "j", "score": 9}])
    with pytest.raises(RecordError, match=r"out\.jsonl line 1: field 'score' is 9, outside the judge template's range 0\.\.5"):
        EFTRowsSource(path=str(out)).load(template)
    typed = _write(tmp_path / "typed.jsonl", [{"prompt": "p", "response": "r", "judgement": "j", "score": "4"}])
    with pytest.raises(RecordError, match=r"typed\.jsonl line 1: field 'score' should be int, got str"):
        EFTRowsSource(path=str(typed)).load(template)
    with pytest.raises(ValueError, match="pairwise"):
        EFTRowsSource(path=str(path)).load(load_pairwise_template())


def test_compose_replaces_oasst_ift_and_adds_eft_rows(tmp_path):
    template = load_judge_template("additive5")
    chats = _write(tmp_path / "chats.jsonl", [{"id": f"c{i}", "messages": _msgs(*CHAT[:3], ("user", f"more {i}?"), ("assistant", "Yes."))}
                                              for i in range(10)])
    eft = _write(tmp_path / "eft.jsonl", [{"prompt": "p", "response": "r", "judgement": "Good.", "score": 4}])
    settings = BuildSettings()
    oasst = compose(embedded_seed_source(), None, None, settings, template)
    mixed = compose(embedded_seed_source(), InstructionSource(path=str(chats), heldout_fraction=0.2), EFTRowsSource(path=str(eft)),
                    settings, template)
    assert {ex.tree_id for ex in mixed.ift_train + mixed.ift_heldout} == {f"c{i}" for i in range(10)} and len(mixed.ift_heldout) == 2
    assert mixed.eft_train == oasst.eft_train + mixed.eft_train[-1:] and mixed.eft_train[-1].mode == "rows"
    assert mixed.ranked_heldout == oasst.ranked_heldout  # the judge's held-out rankings still come from oasst1
    assert mixed.counts["ift_train"] == 8 and mixed.counts["eft_train"] == len(oasst.eft_train) + 1
    assert mixed.counts["oasst_ift_train_replaced"] == len(oasst.ift_train)
    alone = compose(None, InstructionSource(path=str(chats), heldout_fraction=0.2), None, settings, template)
    assert alone.eft_train == [] and alone.ranked_heldout == [] and alone.ift_train == mixed.ift_train
    with pytest.raises(ValueError, match="no instruction data: data.source is null and data.instructions.path is not set"):
        compose(None, InstructionSource(), None, settings, template)
