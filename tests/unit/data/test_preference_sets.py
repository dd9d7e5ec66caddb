"""Human preference sets (TRL / RewardBench rows) read into PreferencePair records."""

from __future__ import annotations

import gzip
import json
import logging
import sys
import types

import pytest
from conftest import SHARED_DATA

from srl.data.preference_sets import (
    PreferencePair,
    PreferenceSetSettings,
    load_preference_set,
    read_preference_rows,
)
from srl.data.records import RecordError


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def write_jsonl(path, rows):
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def hh(*turns):
    """An HH-RLHF text conversation from alternating Human/Assistant turns."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def load(path, **kw):
    return load_preference_set(PreferenceSetSettings(kw.pop("name", "prefs"), str(path), **kw))


def test_plain_rows(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": " What is 2+2? ", "chosen": "4", "rejected": "5"},
        "",  # blank lines are passed over; line numbers count them
        {"id": "q7", "prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away.", "tie": False},
    ])
    pairs, skipped = load(path)
    assert pairs == [
        PreferencePair("prefs:1", "What is 2+2?", "4", "5", False),
        PreferencePair("q7", "Say hi", "Hi!", "Go away.", False),
    ]
    assert skipped == {"multi_turn": 0, "empty_reply": 0, "identical": 0}


def test_explicit_conversational_rows_prepend_the_system_message(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": [system("Be brief."), user("Capital of France?")], "chosen": [assistant("Paris.")], "rejected": "Lyon."},
        {"prompt": [user("Capital of Spain?")], "chosen": [user("Capital of Spain?"), assistant("Madrid.")],
         "rejected": [assistant("Seville.")]},
    ])
    pairs, _ = load(path)
    assert pairs == [
        PreferencePair("prefs:1", "Be brief.\n\nCapital of France?", "Paris.", "Lyon."),
        PreferencePair("prefs:2", "Capital of Spain?", "Madrid.", "Seville."),
    ]


def test_implicit_prompt_rows(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"chosen": [system("S"), user("Q"), assistant("good")], "rejected": [system("S"), user("Q"), assistant("bad")]},
        {"chosen": [user("Q2"), assistant("yes")], "rejected": [user("Q2"), assistant("no")]},
    ])
    pairs, skipped = load(path)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("S\n\nQ", "good", "bad"), ("Q2", "yes", "no")]
    assert skipped == {"multi_turn": 0, "empty_reply": 0, "identical": 0}


def test_tie_true_is_a_tie(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "p", "chosen": "a", "rejected": "b", "tie": True},
        {"prompt": "p", "chosen": "a", "rejected": "c", "tie": None},  # null: not a tie (Hub rows without it)
        {"prompt": "p", "chosen": "a", "rejected": "d"},
    ])
    pairs, _ = load(path)
    assert [p.tie for p in pairs] == [True, False, False]
    # tie_field None: the field is not read at all
    pairs, _ = load(path, tie_field=None)
    assert [p.tie for p in pairs] == [False, False, False]


def test_multi_turn_and_identical_rows_are_skipped_and_counted(tmp_path, caplog):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": [user("a"), assistant("b"), user("c")], "chosen": "x", "rejected": "y"},  # assistant turn
        {"prompt": [user("a"), user("c")], "chosen": "x", "rejected": "y"},  # two user turns
        {"chosen": [user("a"), assistant("b"), user("c"), assistant("x")],
         "rejected": [user("a"), assistant("b"), user("c"), assistant("y")]},  # implicit, multi-turn prefix
        {"chosen": [user("a"), assistant("b"), user("c"), assistant("x")], "rejected": [user("a"), assistant("y")]},
        {"prompt": "p", "chosen": "same ", "rejected": " same"},
        {"prompt": "p", "chosen": "kept", "rejected": "other"},
        {"prompt": "p", "chosen": "a", "rejected": "\n"},  # empty replies: real sets (HH-RLHF) have them
        {"prompt": [user("p")], "chosen": [assistant(" ")], "rejected": "b"},
        {"chosen": [user("q"), assistant("")], "rejected": [user("q"), assistant("b")]},
        {"chosen": [user("q"), assistant("a"), user("r"), assistant("")],  # multi-turn first
         "rejected": [user("q"), assistant("a"), user("r"), assistant("b")]},
    ])
    with caplog.at_level(logging.WARNING, logger="srl.data.preference_sets"):
        pairs, skipped = load(path)
    assert skipped == {"multi_turn": 5, "empty_reply": 3, "identical": 1}
    assert pairs == [PreferencePair("prefs:6", "p", "kept", "other")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["preference set prefs: skipped 5 multi_turn, 3 empty_reply, 1 identical"]


MALFORMED = [
    ("not valid JSON", '{"prompt": "p", "chosen": ', r"prefs\.jsonl:4: not valid JSON"),  # iter_json_lines' own format
    ("not an object", [1, 2], r"prefs\.jsonl line 4: expected a JSON object, got list"),
    ("missing", {"prompt": "p", "rejected": "b"}, r"prefs\.jsonl line 4: missing field 'chosen'"),
    ("wrong type", {"prompt": "p", "chosen": 3, "rejected": "b"},
     r"prefs\.jsonl line 4: field 'chosen': expected a string or a list of messages, got int"),
    ("prompt type", {"prompt": {"text": "p"}, "chosen": "a", "rejected": "b"}, r"prefs\.jsonl line 4: field 'prompt': expected a string"),
    ("empty prompt", {"prompt": "  ", "chosen": "a", "rejected": "b"}, r"prefs\.jsonl line 4: field 'prompt' is empty"),
    ("empty user", {"prompt": [user(" ")], "chosen": "a", "rejected": "b"}, r"prefs\.jsonl line 4: field 'prompt' is empty"),
    ("no content", {"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"},
     r"prefs\.jsonl line 4: field 'prompt' message 0: expected an object with 'role' and 'content'"),
    ("no role", {"prompt": "p", "chosen": [{"content": "a"}], "rejected": "b"},
     r"prefs\.jsonl line 4: field 'chosen' message 0: expected an object"),
    ("bad role", {"prompt": [{"role": "tool", "content": "x"}], "chosen": "a", "rejected": "b"},
     r"prefs\.jsonl line 4: field 'prompt' message 0: role should be one of"),
    ("content type", {"prompt": "p", "chosen": [{"role": "assistant", "content": 1}], "rejected": "b"},
     r"prefs\.jsonl line 4: field 'chosen' message 0: content should be a string, got int"),
    ("last not assistant", {"prompt": "p", "chosen": "a", "rejected": [user("b")]},
     r"prefs\.jsonl line 4: field 'rejected': the last message should be role 'assistant', got 'user'"),
    ("empty reply list", {"prompt": "p", "chosen": [], "rejected": "b"}, r"prefs\.jsonl line 4: field 'chosen': an empty list"),
    ("only system", {"prompt": [system("s")], "chosen": "a", "rejected": "b"}, r"prefs\.jsonl line 4: field 'prompt': no user message"),
    ("no shared prefix", {"chosen": [user("q1"), assistant("a")], "rejected": [user("q2"), assistant("b")]},
     r"prefs\.jsonl line 4: fields 'chosen' and 'rejected' share no leading messages"),
    ("implicit string", {"chosen": "a", "rejected": [user("q"), assistant("b")]},
     r"prefs\.jsonl line 4: missing field 'prompt' \(needed when field 'chosen' is a string"),
    ("plain strings, no prompt", {"chosen": "a", "rejected": "b"}, r"prefs\.jsonl line 4: missing field 'prompt' \(needed when field 'chosen'"),
    ("HH then plain", {"chosen": hh("q", "a"), "rejected": "b"}, r"prefs\.jsonl line 4: missing field 'prompt' \(needed when field 'rejected'"),
    ("HH last turn Human", {"chosen": hh("q", "a", "more?"), "rejected": hh("q", "b")},
     r"prefs\.jsonl line 4: field 'chosen': the last message should be role 'assistant', got 'user'"),
    ("HH text before", {"chosen": "intro" + hh("q", "a"), "rejected": hh("q", "b")},
     r"prefs\.jsonl line 4: field 'chosen': text before the first 'Human:' turn: 'intro'"),
    ("HH no shared prefix", {"chosen": hh("q1", "a"), "rejected": hh("q2", "b")},
     r"prefs\.jsonl line 4: fields 'chosen' and 'rejected' share no leading messages"),
    ("tie not bool", {"prompt": "p", "chosen": "a", "rejected": "b", "tie": "yes"},
     r"prefs\.jsonl line 4: field 'tie': expected true or false, got str"),
    ("tie int", {"prompt": "p", "chosen": "a", "rejected": "b", "tie": 1}, r"prefs\.jsonl line 4: field 'tie': expected true or false, got int"),
    ("id type", {"id": [1], "prompt": "p", "chosen": "a", "rejected": "b"}, r"prefs\.jsonl line 4: field 'id' should be a string"),
]


@pytest.mark.parametrize("row,match", [(row, match) for _, row, match in MALFORMED], ids=[case for case, _, _ in MALFORMED])
def test_malformed_rows_name_the_file_line_and_field(tmp_path, row, match):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "prefs.jsonl", [good, {**good, "chosen": "c"}, "", row])
    with pytest.raises(RecordError, match=match):
        load(path)


def test_repeated_ids_and_no_pairs_are_errors(tmp_path):
    row = {"id": "x", "prompt": "p", "chosen": "a", "rejected": "b"}
    with pytest.raises(RecordError, match=r"prefs\.jsonl line 2: pair id 'x' repeats the one at line 1"):
        load(write_jsonl(tmp_path / "prefs.jsonl", [row, row]))
    with pytest.raises(ValueError, match=r"empty\.jsonl: no preference pairs"):
        load(write_jsonl(tmp_path / "empty.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "a"}]))


def test_json_list_file(tmp_path):
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps([{"prompt": "p1", "chosen": "a", "rejected": "b"}, {"prompt": "p2", "chosen": "c", "rejected": "d"}]))
    pairs, _ = load(path)
    assert [(p.pair_id, p.prompt, p.chosen) for p in pairs] == [("prefs:1", "p1", "a"), ("prefs:2", "p2", "c")]
    path.write_text(json.dumps({"prompt": "p1", "chosen": "a", "rejected": "b"}))
    with pytest.raises(RecordError, match=r"prefs\.json: a \.json data file should hold a JSON list of rows, got dict"):
        load(path)
    path.write_text(json.dumps([{"prompt": "p1", "chosen": "a", "rejected": "b"}, {"prompt": "p2", "chosen": 1, "rejected": "d"}]))
    with pytest.raises(RecordError, match=r"prefs\.json item 2: field 'chosen'"):
        load(path)


def test_missing_file_is_file_not_found(tmp_path):
    for name in ("nope.jsonl", "nope.json", "nope.jsonl.gz", "nope.json.gz"):
        with pytest.raises(FileNotFoundError, match=name):
            load(tmp_path / name)


def test_limit_and_seed_give_a_deterministic_ordered_subset(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(20)])
    first, _ = load(path, limit=5, seed=3)
    again, _ = load(path, limit=5, seed=3)
    other, _ = load(path, limit=5, seed=4)
    assert first == again and len(first) == 5
    lines = [int(p.pair_id.split(":")[1]) for p in first]
    assert lines == sorted(lines) and len(set(lines)) == 5
    assert [p.pair_id for p in other] != [p.pair_id for p in first]
    everything, _ = load(path, limit=50)
    assert len(everything) == 20
    assert [p.prompt for p in load(path)[0]] == [f"p{i}" for i in range(20)]


def test_hub_set_via_load_dataset(monkeypatch):
    calls = []
    rows = [
        {"prompt": "q0", "chosen": "good", "rejected": "bad", "tie": None},
        {"prompt": [user("u"), assistant("a"), user("v")], "chosen": "x", "rejected": "y", "tie": None},
        {"prompt": "q2", "chosen": "ok", "rejected": "meh", "tie": True},
    ]

    def load_dataset(path, split):
        calls.append((path, split))
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    pairs, skipped = load_preference_set(PreferenceSetSettings("rewardbench", "allenai/reward-bench", split="filtered"))
    assert calls == [("allenai/reward-bench", "filtered")]
    assert pairs == [PreferencePair("rewardbench:0", "q0", "good", "bad"), PreferencePair("rewardbench:2", "q2", "ok", "meh", True)]
    assert skipped == {"multi_turn": 1, "empty_reply": 0, "identical": 0}
    rows[0] = {"prompt": "q0", "chosen": 5, "rejected": "bad"}
    with pytest.raises(RecordError, match=r"allenai/reward-bench \(filtered\) row 0: field 'chosen'"):
        load_preference_set(PreferenceSetSettings("rewardbench", "allenai/reward-bench", split="filtered"))


def test_custom_field_names_via_the_reader():
    settings = PreferenceSetSettings("s", "x.jsonl", prompt_field="question", chosen_field="win", rejected_field="lose", tie_field="draw")
    pairs, skipped = read_preference_rows([("line 3", {"question": "q", "win": "w", "lose": "l", "draw": True})], "x.jsonl", "s", settings)
    assert pairs == [PreferencePair("s:3", "q", "w", "l", True)] and skipped == {"multi_turn": 0, "empty_reply": 0, "identical": 0}
    with pytest.raises(RecordError, match=r"x\.jsonl line 3: missing field 'win'"):
        read_preference_rows([("line 3", {"question": "q", "lose": "l"})], "x.jsonl", "s", settings)


@pytest.mark.parametrize("name", ["", "reward bench", "a/b", "métrique", "x:y"])
def test_name_must_be_metric_key_safe(name):
    with pytest.raises(ValueError, match="preference set name must match"):
        PreferenceSetSettings(name, "x.jsonl")


def test_settings_validation():
    assert PreferenceSetSettings("reward-bench_v1.0", "x.jsonl").split == "test"
    with pytest.raises(ValueError, match="limit must be >= 1"):
        PreferenceSetSettings("rb", "x.jsonl", limit=0)


def test_hh_rlhf_text_rows(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": hh(" How do I boil an egg? ", " Put it in boiling water for 8 minutes.\n\nThen cool it. "),
         "rejected": hh(" How do I boil an egg? ", "Microwave it.")},
        {"chosen": "Human: Hi\n\nAssistant: Hello!", "rejected": "Human: Hi\n\nAssistant: What?", "tie": True},  # no leading blank line
        {"chosen": hh("q", "a", "and?", "good"), "rejected": hh("q", "a", "and?", "bad")},  # two user turns
        {"chosen": hh("q", "same"), "rejected": hh("q", " same ")},
        {"chosen": hh("q", ""), "rejected": hh("q", "b")},
        {"chosen": hh("q", "Human: inline markers are text"), "rejected": hh("q", "b")},
    ])
    pairs, skipped = load(path)
    assert pairs == [
        PreferencePair("prefs:1", "How do I boil an egg?", "Put it in boiling water for 8 minutes.\n\nThen cool it.", "Microwave it."),
        PreferencePair("prefs:2", "Hi", "Hello!", "What?", True),
        PreferencePair("prefs:6", "q", "Human: inline markers are text", "b"),
    ]
    assert skipped == {"multi_turn": 1, "empty_reply": 1, "identical": 1}


def test_gzipped_files(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, "", {"chosen": hh("q", "c"), "rejected": hh("q", "d")}]
    pairs, _ = load(write_jsonl(tmp_path / "prefs.jsonl.gz", rows))
    assert pairs == [PreferencePair("prefs:1", "p", "a", "b"), PreferencePair("prefs:3", "q", "c", "d")]
    path = tmp_path / "prefs.json.gz"
    path.write_bytes(gzip.compress(json.dumps([rows[0], {"prompt": "p2", "chosen": "c", "rejected": "d"}]).encode()))
    assert [p.pair_id for p in load(path)[0]] == ["prefs:1", "prefs:2"]
    # errors: the same wording as plain files, the .gz file named
    with pytest.raises(RecordError, match=r"prefs\.jsonl\.gz:2: not valid JSON"):
        load(write_jsonl(tmp_path / "prefs.jsonl.gz", [rows[0], '{"prompt": "p", "chosen": ']))
    with pytest.raises(RecordError, match=r"prefs\.jsonl\.gz line 3: field 'chosen': expected a string"):
        load(write_jsonl(tmp_path / "prefs.jsonl.gz", [rows[0], "", {"prompt": "p", "chosen": 1, "rejected": "b"}]))
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(json.dumps(rows[0]).encode() + b'\n{"prompt": "caf\xe9"}\n'))
    with pytest.raises(RecordError, match=r"bad\.jsonl\.gz:2: not UTF-8 text \(byte 0xe9 at column 16"):
        load(bad)
    path.write_bytes(gzip.compress(b'[{"prompt": "\xff"}]'))
    with pytest.raises(RecordError, match=r"prefs\.json\.gz:1: not UTF-8 text"):
        load(path)
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')  # not gzipped
    with pytest.raises(RecordError, match=r"bad\.jsonl\.gz: not a readable gzip file"):
        load(bad)


HH_HARMLESS = SHARED_DATA / "preferences" / "hh_rlhf_harmless_base_test.jsonl.gz"


def test_real_hh_rlhf_harmless_base_test_set():
    """The real HH-RLHF harmless-base test split (../shared/data): counts checked by a separate, plain count."""
    if not HH_HARMLESS.is_file():
        pytest.skip(f"{HH_HARMLESS} is not here")
    with gzip.open(HH_HARMLESS, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    single = [r for r in rows if r["chosen"].count("\n\nHuman:") == 1]
    last = {k: [r[k].rsplit("\n\nAssistant:", 1)[1].strip() for r in single] for k in ("chosen", "rejected")}
    empty = sum(not c or not r for c, r in zip(last["chosen"], last["rejected"]))
    # one single-turn row's rejected reply is two Assistant turns in a row: a multi-turn reply
    split_reply = sum(r["chosen"].count("\n\nAssistant:") != 1 or r["rejected"].count("\n\nAssistant:") != 1 for r in single)
    identical = sum(c == r and c for c, r in zip(last["chosen"], last["rejected"]))
    assert (len(rows), len(single), empty, split_reply, identical) == (2312, 662, 3, 1, 0)

    pairs, skipped = load(HH_HARMLESS, name="hh")
    assert len(pairs) == len(single) - empty - split_reply - identical == 658
    assert skipped == {"multi_turn": len(rows) - len(single) + split_reply, "empty_reply": empty, "identical": identical}
    assert skipped == {"multi_turn": 1651, "empty_reply": 3, "identical": 0}
    assert len(pairs) + sum(skipped.values()) == len(rows)
    assert pairs[0] == PreferencePair(
        "hh:5", "What will happen if I drive my car into the water?", single[0]["chosen"].rsplit("Assistant:", 1)[1].strip(),
        single[0]["rejected"].rsplit("Assistant:", 1)[1].strip())
    assert all(p.prompt and p.chosen and p.rejected and "\n\nHuman:" not in p.prompt for p in pairs)
