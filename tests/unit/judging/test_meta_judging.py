"""Meta-Rewarding's judge-training data by hand: which replies are meta-judged, the meta-judgements in
resumable seeded chunks, and the judge pairs and metrics they give (``srl/judging/meta_judging.py``)."""

from __future__ import annotations

import pytest

from srl.data.partial import PartialJsonl
from srl.data.records import Candidate, Judgement, MetaJudgement, read_jsonl
from srl.generation.sampling import SamplingSettings
from srl.judging import meta_judging
from srl.judging.meta_judging import MetaSettings, judge_pairs, meta_judge_replies, rubric_text, select_replies
from srl.judging.settings import JudgeSettings
from srl.judging.templates import load_judge_template

TEMPLATE = load_judge_template("additive5")


def cand(pid, i, response="r"):
    return Candidate(pid, i, f"prompt {pid}", f"{response}{i}", 3, True)


def judg(pid, i, scores, texts=None):
    texts = texts or tuple(f"judgement {k} of {pid}/{i}\nScore: {s}" for k, s in enumerate(scores))
    parsed = [s for s in scores if s is not None]
    return Judgement(pid, i, tuple(texts), tuple(scores), sum(parsed) / len(parsed) if parsed else None)


CANDIDATES = [cand("p", 0), cand("p", 1), cand("p", 2), cand("q", 0), cand("q", 1), cand("z", 0)]
JUDGEMENTS = [
    judg("p", 0, (4, 4, 4)),        # variance 0
    judg("p", 1, (1, 5, 3)),        # variance 8/3: the judge is least sure of this reply
    judg("p", 2, (5, 5, None)),     # mean 5: the top reply
    judg("q", 0, (2, None, None)),  # one parsed score: no variance
    judg("q", 1, (None, None, 3)),
    judg("z", 0, (3,)),             # one judgement: nothing to compare
]


def test_which_replies_are_meta_judged():
    items, skipped = select_replies(CANDIDATES, JUDGEMENTS, "max_variance")
    assert [(c.prompt_id, c.candidate) for c, _ in items] == [("p", 1)] and skipped == 2  # q: < 2 parsed scores; z: one text
    items, skipped = select_replies(CANDIDATES, JUDGEMENTS, "top")
    assert [(c.prompt_id, c.candidate) for c, _ in items] == [("p", 2), ("q", 1)] and skipped == 1  # q: 3 > 2
    items, skipped = select_replies(CANDIDATES, JUDGEMENTS, "all")
    assert [(c.prompt_id, c.candidate) for c, _ in items] == [("p", 0), ("p", 1), ("p", 2), ("q", 0), ("q", 1)] and skipped == 1
    # equal variances: the lower candidate index
    tied = [judg("p", 0, (1, 3, 4)), judg("p", 1, (4, 1, 3)), judg("p", 2, (5, 5, 5))]
    assert [c.candidate for c, _ in select_replies(CANDIDATES[:3], tied, "max_variance")[0]] == [0]


def fake_meta_judge(calls):
    """A meta-judge that prefers the judgement with the lower index ('judgement 0' beats 'judgement 2'), unparsable
    when the two are 0 and 1 shown as B, A; records each call's prompts and seeds."""
    def texts(model, tokenizer, prompts, seeds, sampling, external=None):
        calls.append((list(prompts), list(seeds)))
        out = []
        for p in prompts:
            a = int(p.split("<evaluation_a>\njudgement ")[1][0])
            b = int(p.split("<evaluation_b>\njudgement ")[1][0])
            out.append("no verdict" if (a, b) == (1, 0) else f"reason\nWinner: {'A' if a < b else 'B'}")
        return out
    return texts


def test_meta_judgements_are_seeded_chunked_and_resume_with_the_same_records(tmp_path, monkeypatch):
    items = select_replies(CANDIDATES, JUDGEMENTS, "all")[0]  # 5 replies of 3 judgements: 6 ordered pairs each
    settings = MetaSettings(enabled=True, sampling=SamplingSettings(batch_size=2))
    calls = []
    monkeypatch.setattr(meta_judging, "judge_texts", fake_meta_judge(calls))
    whole = PartialJsonl(tmp_path / "a.jsonl", MetaJudgement)
    meta_judge_replies(None, None, items, TEMPLATE, settings, 7, 1, whole)
    records = read_jsonl(whole.finish(), MetaJudgement)
    assert [len(c[0]) for c in calls] == [12, 12, 6]  # chunks of 2 replies x 6 prompts, then 1 reply
    assert records[0].orders == ((0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1))
    assert records[0].verdicts == ("A", "A", None, "A", "B", "B")
    first = calls[0][0][0]
    assert "prompt p" in first and "<reply>\nr0\n</reply>" in first and rubric_text(TEMPLATE).split("\n")[0] in first
    seeds = [s for _, ss in calls for s in ss]
    assert len(set(seeds)) == len(seeds) == 30
    # killed after the first chunk: the rerun asks only for the rest and writes the same records
    calls.clear()
    part = PartialJsonl(tmp_path / "b.jsonl", MetaJudgement)

    def stop(kind, done):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        meta_judge_replies(None, None, items, TEMPLATE, settings, 7, 1, part, hook=stop)
    calls.clear()
    meta_judge_replies(None, None, items, TEMPLATE, settings, 7, 1, PartialJsonl(tmp_path / "b.jsonl", MetaJudgement))
    assert [len(c[0]) for c in calls] == [12, 6]
    assert read_jsonl(PartialJsonl(tmp_path / "b.jsonl", MetaJudgement).finish(), MetaJudgement) == records
    assert [s for _, ss in calls for s in ss] == seeds[12:]


def record(pid, i, verdicts):
    orders = ((0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1))
    return MetaJudgement(pid, i, orders, tuple(f"t{v}" for v in verdicts), tuple(verdicts))


def test_judge_pairs_by_hand():
    c = cand("p", 1)
    texts = ("short and right\nScore: 3", "a much longer judgement that rambles on and on\nScore: 5", "wrong\nScore: 1")
    j = judg("p", 1, (3, 5, 1), texts)
    # wins: 0 beats 1 and 2 in both orders (4); 1 beats 2 both orders (2); 2: 0 -> chosen 0, rejected 2
    verdicts = ("A", "A", "B", "A", "B", "B")
    settings = MetaSettings(enabled=True, ranking="wins")
    pairs, m = judge_pairs([(c, j)], [record("p", 1, verdicts)], TEMPLATE, settings)
    (p,) = pairs
    assert (p.chosen, p.rejected, p.chosen_score, p.rejected_score) == (texts[0], texts[2], 4.0, 0.0)
    assert p.prompt == TEMPLATE.render(c.prompt, c.response) and p.source == "judge" and p.prompt_id == "p#1"
    assert p.ref_chosen_logp is None and p.chosen_finished and p.rejected_finished
    # decisive 6: first-shown wins (0,1)A (0,2)A (1,2)A = 3
    assert m["verdicts"] == 6 and m["parse_fail_rate"] == 0 and m["first_shown_win_rate"] == pytest.approx(0.5)
    assert m["judge_pairs"] == 1 and m["chosen_words_mean"] == 5 and m["rejected_words_mean"] == 3
    assert m["chosen_judge_score_mean"] == 3 and m["rejected_judge_score_mean"] == 1
    # judgement 0's score does not parse: it may not be chosen; 1 is next best
    unparsed = judg("p", 1, (None, 5, 1), texts)
    (p,), _ = judge_pairs([(c, unparsed)], [record("p", 1, verdicts)], TEMPLATE, settings)
    assert (p.chosen, p.rejected) == (texts[1], texts[2])
    # 1 > 0 > 2 (1 wins 4, 0 wins 2): the long judgement 1 is chosen, unless the limit (5 words) leaves it out
    long_first = ("B", "A", "A", "A", "B", "B")
    (p,), _ = judge_pairs([(c, j)], [record("p", 1, long_first)], TEMPLATE, settings)
    assert (p.chosen, p.rejected) == (texts[1], texts[2])
    (p,), m = judge_pairs([(c, j)], [record("p", 1, long_first)], TEMPLATE, MetaSettings(enabled=True, ranking="wins", max_chosen_words=5))
    assert (p.chosen, p.rejected, p.chosen_score) == (texts[0], texts[2], 2.0) and m["chosen_words_mean"] == 5


def test_dropped_replies_are_counted_by_reason():
    c = cand("p", 0)
    ties = ("tie",) * 6
    _, m = judge_pairs([(c, judg("p", 0, (2, 3, 4)))], [record("p", 0, ties)], TEMPLATE, MetaSettings(enabled=True, ranking="wins"))
    assert m["judge_pairs"] == 0 and m["dropped/tied"] == 1 and m["tie_rate"] == 1.0 and m["first_shown_win_rate"] is None
    _, m = judge_pairs([(c, judg("p", 0, (None, None, None)))], [record("p", 0, ("A",) * 6)], TEMPLATE, MetaSettings(enabled=True))
    assert m["dropped/no_parsed_judgement"] == 1 and m["first_shown_win_rate"] == 1.0
    _, m = judge_pairs([(c, judg("p", 0, (2, 3, 4)))], [record("p", 0, ("A",) * 6)], TEMPLATE, MetaSettings(enabled=True, max_chosen_words=1))
    assert m["dropped/too_long"] == 1
    with pytest.raises(ValueError, match="no meta-judgement of prompt p candidate 0"):
        judge_pairs([(c, judg("p", 0, (2, 3, 4)))], [], TEMPLATE, MetaSettings(enabled=True))


def test_elo_uses_the_iterations_position_weights():
    """A judge that always says A: every first-shown win weighs S/(F+S) = 0, so no judgement outranks another and
    no pair is made, although win counts would make one."""
    c, j = cand("p", 0), judg("p", 0, (2, 3, 4))
    always_a = [record("p", 0, ("A",) * 6)]
    assert judge_pairs([(c, j)], always_a, TEMPLATE, MetaSettings(enabled=True, ranking="elo"))[1]["dropped/tied"] == 1
    assert judge_pairs([(c, j)], always_a, TEMPLATE, MetaSettings(enabled=True, ranking="wins"))[1]["dropped/tied"] == 1  # 2 wins each
    # with an unbiased second reply, A-wins weigh 3/12 and B-wins 9/12: the always-A reply still ties, its wins symmetric
    c2, j2 = cand("q", 0), judg("q", 0, (2, 3, 4))
    unbiased = record("q", 0, ("A", "A", "B", "A", "B", "B"))  # 0 > 1 > 2 in both orders
    pairs, m = judge_pairs([(c, j), (c2, j2)], [always_a[0], unbiased], TEMPLATE, MetaSettings(enabled=True, ranking="elo"))
    assert [p.prompt_id for p in pairs] == ["q#0"] and pairs[0].chosen == j2.texts[0] and pairs[0].rejected == j2.texts[2]
    assert m["first_shown_win_rate"] == pytest.approx((6 + 3) / 12)


def test_settings_and_the_judges_they_need():
    judge = JudgeSettings(TEMPLATE, num_samples=3)
    MetaSettings(enabled=True).check(judge)
    MetaSettings(enabled=False).check(JudgeSettings(TEMPLATE, num_samples=1))  # off: nothing to check
    with pytest.raises(ValueError, match="judge.num_samples must be >= 2"):
        MetaSettings(enabled=True).check(JudgeSettings(TEMPLATE, num_samples=1))
    with pytest.raises(ValueError, match="judge.mode=sample"):
        MetaSettings(enabled=True).check(JudgeSettings(TEMPLATE, num_samples=3, mode="score_first"))
    with pytest.raises(ValueError, match="meta.responses"):
        MetaSettings(responses="best")
    with pytest.raises(ValueError, match="meta.ranking"):
        MetaSettings(ranking="glicko")
    with pytest.raises(ValueError, match="meta.max_chosen_words"):
        MetaSettings(max_chosen_words=0)
    assert "{prompt}" not in rubric_text(TEMPLATE) and "(the reply, shown below)" in rubric_text(TEMPLATE)


def test_verdict_first_battles_are_calibrated_over_both_orders():
    """A meta-judge that always says A (P(A) 0.9-0.97 in every order): raw verdicts rank nothing, the balanced
    battles do. (0,1): P(A|0 first)=0.96, P(A|1 first)=0.90 -> 0 beats 1 with (0.96 + 0.10) / 2 = 0.53;
    (0,2): 0.95 vs 0.97 -> (0.95 + 0.03) / 2 = 0.49: 2 beats 0; (1,2): 0.92 vs 0.92 -> 0.5: a tie."""
    from srl.judging.meta_judging import calibrated_verdicts

    orders = ((0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1))
    first = (0.96, 0.95, 0.90, 0.92, 0.97, 0.92)
    record = MetaJudgement("p", 0, orders, ("",) * 6, ("A",) * 6, first)
    battles = calibrated_verdicts(record)
    assert [(v.first, v.second, v.verdict) for v in battles] == [(0, 1, "A"), (0, 2, "B"), (1, 2, "tie")]
    assert battles[0].text == "calibrated P(a beats b)=0.5300"
    c, j = cand("p", 0), judg("p", 0, (4, 2, 3))
    pairs, m = judge_pairs([(c, j)], [record], TEMPLATE, MetaSettings(enabled=True, mode="verdict_first", ranking="wins"))
    # wins: 0: 1 (over 1); 1: 0.5 (tie with 2); 2: 1 + 0.5 -> chosen 2, rejected 1
    assert [(p.chosen, p.rejected) for p in pairs] == [(j.texts[2], j.texts[1])] and m["calibrated_decisive"] == 2
    assert m["first_shown_win_rate"] == 1.0  # the raw verdicts' position bias is still reported
    raw = judge_pairs([(c, j)], [record], TEMPLATE, MetaSettings(enabled=True, ranking="wins"))[1]
    assert raw["judge_pairs"] == 0 and raw["dropped/tied"] == 1  # sampled mode reads the raw verdicts: every judgement wins twice
