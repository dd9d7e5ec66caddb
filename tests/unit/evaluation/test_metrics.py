"""Judge-vs-human agreement metrics, by hand and against scipy."""

from __future__ import annotations

import math
import random
import warnings

import pytest

from srl.evaluation.judge_agreement import PairCounts, best_hits, exact_match, kendall_tau, mean_defined, pair_counts, spearman
from srl.judging.parsing import score_histogram

# --- pairwise accuracy -------------------------------------------------------------------------


def test_pair_counts_three_replies_tie_and_none():
    # Pairs: (0,1) both 4.0 -> tie; (0,2), (1,2) reply 2 has no score -> unscored.
    assert pair_counts([4.0, 4.0, None], [1, 0, 2]) == PairCounts(agree=0, disagree=0, tie=1, unscored=2)


def test_pair_counts_by_hand():
    scores = [3.0, 4.0, 3.0, None, 1.0]
    ranks = [1, 2, 0, 4, 3]
    # Better-ranked reply first (rank: score):
    # (r1:3.0, r2:4.0) disagree; (r0:3.0, r1:3.0) tie; (r1:3.0, r3:1.0) agree; (r1, r4:None) unscored
    # (r0:3.0, r2:4.0) disagree; (r2:4.0, r4) unscored; (r2:4.0, r3:1.0) agree
    # (r0, r4) unscored; (r0:3.0, r3:1.0) agree; (r3, r4) unscored
    # -> agree 3, disagree 2, tie 1, unscored 4 (10 pairs in all)
    got = pair_counts(scores, ranks)
    assert got == PairCounts(agree=3, disagree=2, tie=1, unscored=4)
    assert got.accuracy == pytest.approx(3 / 6)  # 3 / (3 + 2 + 1)
    assert got.tie_rate == pytest.approx(1 / 6)


def test_pair_counts_skips_equal_ranks():
    # Ranks 0 and 0 are not compared; (0,2) and (1,2): 5.0 > 2.0 and 1.0 < 2.0 -> 1 agree, 1 disagree.
    assert pair_counts([5.0, 1.0, 2.0], [0, 0, 1]) == PairCounts(agree=1, disagree=1)


def test_pair_counts_sum_over_prompts():
    a = PairCounts(agree=3, disagree=2, tie=1, unscored=4)
    b = PairCounts(agree=5, disagree=0, tie=2, unscored=1)
    total = PairCounts(agree=8, disagree=2, tie=3, unscored=5)
    assert a + b == total
    assert sum([a, b]) == total
    assert total.accuracy == pytest.approx(8 / 13)  # 8 / (8 + 2 + 3)
    assert total.tie_rate == pytest.approx(3 / 13)


def test_pair_counts_empty_accuracy_none():
    assert pair_counts([], []).accuracy is None
    only_unscored = pair_counts([None, 2.0], [0, 1])
    assert only_unscored == PairCounts(unscored=1)
    assert only_unscored.accuracy is None and only_unscored.tie_rate is None


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 scores, 3 ranks"):
        pair_counts([1.0, 2.0], [0, 1, 2])


# --- 5-best ------------------------------------------------------------------------------------


def test_best_hits_two_at_max_one_human_best():
    assert best_hits([5.0, 3.0, 5.0], [2, 1, 0], max_score=5) == (1, 2)


def test_best_hits_human_best_not_at_max():
    # Ranks 1 and 2 score 5; the human best (rank 0) scores 4 -> 0 hits of 2.
    assert best_hits([5.0, 4.0, 5.0, None], [1, 0, 2, 3], max_score=5) == (0, 2)


def test_best_hits_max_not_reached():
    # 4.999 is not 5 (exact equality); None ignored.
    assert best_hits([4.999, 4.0, None], [0, 1, 2], max_score=5) == (0, 0)


def test_best_hits_lowest_present_rank_is_best():
    # No rank 0 here: rank 1 is the human best, and it scores 5 -> a hit.
    assert best_hits([5.0, 2.0, 5.0], [1, 2, 3], max_score=5) == (1, 2)


# --- exact match -------------------------------------------------------------------------------


def test_exact_match():
    assert exact_match([1.0, 5.0, 3.0], [2, 0, 1]) is True  # by score 5, 3, 1 -> ranks 0, 1, 2
    assert exact_match([5.0, 3.0, 3.0], [0, 1, 2]) is False  # tie among scores
    assert exact_match([5.0, 2.0, 3.0], [0, 1, 2]) is False  # ranks 1 and 2 swapped
    assert exact_match([5.0, None, 3.0], [0, 1, 2]) is None


# --- correlations by hand ----------------------------------------------------------------------


def test_kendall_tau_by_hand_with_tie():
    # x = [5, 3, 3], y = -ranks = [0, -1, -2]
    # (0,1): 5>3, 0>-1 concordant; (0,2): concordant; (1,2): tied in x -> neither.
    # C=2, D=0, n0=3, n1=1 (one tied pair in x), n2=0 -> 2 / sqrt((3-1)(3-0)) = 2/sqrt(6) = 0.81650
    assert kendall_tau([5.0, 3.0, 3.0], [0, 1, 2]) == pytest.approx(2 / math.sqrt(6))
    assert kendall_tau([5.0, 3.0, 3.0], [0, 1, 2]) == pytest.approx(0.81650, abs=1e-5)
    # Same after dropping an unscored reply.
    assert kendall_tau([5.0, None, 3.0, 3.0], [0, 3, 1, 2]) == pytest.approx(2 / math.sqrt(6))


def test_spearman_by_hand_with_tie():
    # x = [3, 1, 3, 0] -> average ranks [3.5, 2, 3.5, 1] (the two 3s share positions 3 and 4)
    # y = -[0, 1, 2, 3] -> ranks [4, 3, 2, 1]; both means 2.5
    # dx = [1, -0.5, 1, -1.5], dy = [1.5, 0.5, -0.5, -1.5]
    # sxy = 1.5 - 0.25 - 0.5 + 2.25 = 3; sxx = 1 + 0.25 + 1 + 2.25 = 4.5; syy = 2.25+0.25+0.25+2.25 = 5
    # rho = 3 / sqrt(4.5 * 5) = 3 / sqrt(22.5) = sqrt(0.4) = 0.63246
    assert spearman([3.0, 1.0, 3.0, 0.0], [0, 1, 2, 3]) == pytest.approx(math.sqrt(0.4))


def test_correlations_sign_and_undefined():
    # Perfect agreement +1, reversed -1 (higher score = lower rank = better).
    assert spearman([3.0, 2.0, 1.0], [0, 1, 2]) == pytest.approx(1.0)
    assert kendall_tau([1.0, 2.0, 3.0], [0, 1, 2]) == pytest.approx(-1.0)
    # Constant scores, fewer than two scored, constant ranks -> undefined.
    for f in (spearman, kendall_tau):
        assert f([2.0, 2.0, 2.0], [0, 1, 2]) is None
        assert f([2.0, None, None], [0, 1, 2]) is None
        assert f([], []) is None
        assert f([1.0, 2.0], [0, 0]) is None


# --- correlations against scipy ----------------------------------------------------------------


def test_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(20240118)
    compared = undefined = 0
    for _ in range(200):
        n = rng.randint(2, 6)
        scores = [float(rng.randint(0, 5)) if rng.random() > 0.15 else None for _ in range(n)]
        if rng.random() < 0.3:  # half-point means, as from averaging judge samples
            scores = [s + rng.choice([0.0, 0.5]) if s is not None else None for s in scores]
        ranks = list(range(n))
        rng.shuffle(ranks)
        xs = [s for s in scores if s is not None]
        ys = [-r for s, r in zip(scores, ranks) if s is not None]
        if len(xs) < 2:
            assert spearman(scores, ranks) is None and kendall_tau(scores, ranks) is None
            undefined += 1
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on constant input and returns nan
            want_rho = float(stats.spearmanr(xs, ys)[0])
            want_tau = float(stats.kendalltau(xs, ys)[0])
        for got, want in ((spearman(scores, ranks), want_rho), (kendall_tau(scores, ranks), want_tau)):
            if math.isnan(want):
                assert got is None, (scores, ranks)
                undefined += 1
            else:
                assert got is not None and abs(got - want) < 1e-9, (scores, ranks, got, want)
                compared += 1
    # Both branches were exercised.
    assert compared > 100 and undefined > 5


# --- averaging and histogram -------------------------------------------------------------------


def test_mean_defined():
    # (0.5 + 1.0 - 0.3) / 3 = 1.2 / 3 = 0.4; two None
    mean, n_none = mean_defined([0.5, None, 1.0, None, -0.3])
    assert mean == pytest.approx(0.4) and n_none == 2
    assert mean_defined([None, None]) == (None, 2)
    assert mean_defined([]) == (None, 0)


def test_score_histogram_rounds_half_up():
    # 2.5 -> 3 and 3.5 -> 4 (Python's round would give 2 and 4); 0.4 -> 0; 4.49 -> 4; 5.0 -> 5.
    got = score_histogram([2.5, 3.5, None, 0.4, 4.49, 5.0], 0, 5)
    assert got == {0: 1, 1: 0, 2: 0, 3: 1, 4: 2, 5: 1}
    assert list(got) == [0, 1, 2, 3, 4, 5]
    assert score_histogram([], 0, 5) == {k: 0 for k in range(6)}


def test_score_histogram_out_of_range():
    with pytest.raises(ValueError, match="outside the histogram range 0..5"):
        score_histogram([5.5], 0, 5)
