"""Judge evaluation metrics over judged human-ranked groups, by hand."""

from __future__ import annotations

import pytest

from srl.data.records import Judgement, RankedPrompt
from srl.core.subsets import subset
from srl.evaluation.rm import ranked_candidates, rm_metrics
from srl.evaluation.report import MODEL_COLUMNS, eval_table, markdown_table
from srl.judging.templates import load_judge_template


def test_rm_metrics_by_hand():
    groups = [
        RankedPrompt("p1", ("best", "mid", "worst"), (0, 1, 2), "t1", "m1"),
        RankedPrompt("p2", ("best", "worst"), (0, 1), "t2", "m2"),
    ]
    # p1 scores 5, 3, 3: pairs (0,1) agree, (0,2) agree, (1,2) tie; 5-best: one reply at 5, human best.
    # p2 scores 2, 4: the pair disagrees; no reply at 5.
    judgements = [
        Judgement("m1", 0, ("Score: 5",), (5.0,), 5.0),
        Judgement("m1", 1, ("Score: 3", "x"), (3.0, None), 3.0),
        Judgement("m1", 2, ("Score: 3",), (3.0,), 3.0),
        Judgement("m2", 0, ("Score: 2",), (2.0,), 2.0),
        Judgement("m2", 1, ("Score: 4",), (4.0,), 4.0),
    ]
    out = rm_metrics(groups, judgements, load_judge_template())
    assert out["pairs"] == 4 and out["pairs_unscored"] == 0
    assert out["pairwise_acc"] == pytest.approx(2 / 4)  # 2 agree of 4 (the tie counts as wrong)
    assert out["tie_rate"] == pytest.approx(1 / 4)
    assert out["five_best_pct"] == pytest.approx(100.0) and out["five_best_count"] == 1
    assert out["exact_match_pct"] == pytest.approx(0.0)  # p1 has a tie, p2 is swapped
    # Kendall tau-b: p1 = 2 / sqrt(2 * 3) = 0.8165 (see test_metrics), p2 = -1; mean = -0.0918.
    assert out["kendall_tau"] == pytest.approx((2 / 6 ** 0.5 - 1) / 2)
    # Spearman: p1 scores 5,3,3 -> ranks 3, 1.5, 1.5 vs 3, 2, 1: r = 0.8660; p2 = -1; mean = -0.0670.
    assert out["spearman"] == pytest.approx((3 ** 0.5 / 2 - 1) / 2)
    assert out["parse_fail_rate"] == pytest.approx(1 / 6)  # one unparsable sample of six
    assert out["score_hist/3"] == 2 and out["score_hist/5"] == 1


def test_ranked_candidates_keep_group_and_position():
    groups = [RankedPrompt("p", ("a", "b"), (0, 1), "t", "m")]
    cands = ranked_candidates(groups)
    assert [(c.prompt_id, c.candidate, c.response) for c in cands] == [("m", 0, "a"), ("m", 1, "b")]


def test_eval_table_cells_and_markdown():
    rows = [
        ("M0", {"rm/pairwise_acc": 0.5, "rm/parse_fail_rate": 0.125}),
        ("M1", {"rm/pairwise_acc": 0.6251, "h2h/baseline": "M0", "h2h/win_rate": 0.5, "h2h/win_rate_ci_low": 0.25, "h2h/win_rate_ci_high": 0.75,
                "h2h/len_words_model": 41.6}),
    ]
    columns, cells = eval_table(rows)
    assert columns[:3] == ["model", "pairs", "pairwise acc"] and len(cells) == 2 and all(len(r) == len(columns) for r in cells)
    m0, m1 = (dict(zip(columns, r)) for r in cells)
    assert m0["pairwise acc"] == "0.500" and m0["judge parse fail"] == "0.125" and m0["pairs"] == "-"
    columns, cells = eval_table(rows, MODEL_COLUMNS)
    m0, m1 = (dict(zip(columns, r)) for r in cells)
    assert m0["win"] == "-" and m0["h2h vs"] == "-"
    assert m1["h2h vs"] == "M0" and m1["win"] == "0.50 [0.25, 0.75]" and m1["words (model)"] == "42"
    text = markdown_table(*eval_table(rows))
    assert text.splitlines()[0].startswith("| model | pairs | pairwise acc") and text.splitlines()[3].startswith("| M1 | - | 0.625 |")


def test_subset_is_seeded_and_ordered():
    items = list(range(20))
    a = subset(items, 5, 0)
    assert a == sorted(a) and len(set(a)) == 5 and a == subset(items, 5, 0)
    assert subset(items, None, 0) == items and subset(items, 30, 0) == items
