"""Pairwise judging as a round robin: records and win fractions by hand, settings checks, resume."""

from __future__ import annotations

import pytest

from srl.data.partial import PartialJsonl
from srl.data.records import Candidate, Judgement, read_jsonl
from srl.generation.sampling import SamplingSettings
from srl.judging import backends
from srl.judging.pairwise import round_robin, round_robin_records
from srl.judging.pointwise import judge_candidates, judgement_metrics
from srl.judging.settings import JudgeSettings
from srl.judging.templates import load_judge_template, load_pairwise_template


def group(n: int, prompt_id: str = "p") -> list[Candidate]:
    return [Candidate(prompt_id, k, "q", f"reply {k}", 3, True) for k in range(n)]


def test_round_robin_order():
    assert round_robin(3, 1) == [(0, 1, 0), (0, 2, 0), (1, 0, 0), (1, 2, 0), (2, 0, 0), (2, 1, 0)]
    assert len(round_robin(4, 2)) == 4 * 3 * 2


def test_round_robin_records_win_fractions_by_hand():
    t = load_pairwise_template()
    # comparisons in round_robin(3, 1) order: (A, B) = (0,1) (0,2) (1,0) (1,2) (2,0) (2,1)
    texts = ["Winner: A", "Winner: tie", "Winner: B", "garbled", "Winner: B", "Winner: A"]
    records = round_robin_records(group(3), texts, t, 1)
    # reply 0: beats 1 (A), ties 2, beats 1 again (B in (1,0)), beats 2 (B in (2,0)) -> 1, .5, 1, 1
    # reply 1: loses, loses, unparsable, loses to 2 as B in (2,1)                    -> 0, 0, None, 0
    # reply 2: ties 0, unparsable vs 1, loses to 0, beats 1                           -> .5, None, 0, 1
    assert [r.scores for r in records] == [(1.0, 0.5, 1.0, 1.0), (0.0, 0.0, None, 0.0), (0.5, None, 0.0, 1.0)]
    assert [r.score for r in records] == [pytest.approx(3.5 / 4), 0.0, pytest.approx(0.5)]
    assert records[0].texts == ("Winner: A", "Winner: tie", "Winner: B", "Winner: B")
    assert [(r.prompt_id, r.candidate) for r in records] == [("p", 0), ("p", 1), ("p", 2)]


def test_reply_with_no_parsable_comparison_is_unscored():
    records = round_robin_records(group(2), ["??", "Winner: maybe"], load_pairwise_template(), 1)
    assert [r.score for r in records] == [None, None]
    m = judgement_metrics(records, load_pairwise_template())
    assert m["parse_fail_rate"] == 1.0 and m["unscored_replies"] == 2


def test_judge_settings_match_mode_and_template():
    sampling = SamplingSettings()
    with pytest.raises(ValueError, match="pairwise template needs mode 'pairwise'"):
        JudgeSettings(load_pairwise_template(), sampling=sampling)
    with pytest.raises(ValueError, match="does not fit"):
        JudgeSettings(load_judge_template(), sampling=sampling, mode="pairwise")
    with pytest.raises(ValueError, match="judge.mode must be one of"):
        JudgeSettings(load_judge_template(), sampling=sampling, mode="vote")


def test_judge_round_robin_resumes_at_a_whole_group(tmp_path, monkeypatch):
    calls = []

    def fake_sample_chat(model, tokenizer, prompts, seeds, settings, **kw):
        calls.append(len(prompts))
        return [type("O", (), {"text": "Winner: A"})() for _ in prompts]

    monkeypatch.setattr(backends, "sample_chat", fake_sample_chat)
    settings = JudgeSettings(load_pairwise_template(), num_samples=1, mode="pairwise",
                             sampling=SamplingSettings(batch_size=4))
    cands = group(3, "a") + group(2, "b") + group(3, "c")
    store = PartialJsonl(tmp_path / "j.jsonl", Judgement)
    # a crash left group "a" complete and one record of group "b"
    first = round_robin_records(cands[:3], ["Winner: A"] * 6, settings.template, 1)
    store.append(first + [Judgement("b", 0, ("x",), (1.0,), 1.0)])
    judge_candidates(None, None, cands, settings, 0, 1, store)
    records = read_jsonl(store.finish(), Judgement)
    assert [(r.prompt_id, r.candidate) for r in records] == [(c.prompt_id, c.candidate) for c in cands]
    # groups b (2 replies) and c (3) fit no batch of 4 together: b alone (2 comparisons), then c (6)
    assert calls == [2, 6]
    # always "A": each reply wins as A and loses as B -> 0.5 everywhere
    assert all(r.score == 0.5 for r in records)
