"""Implicit-reward accuracy and held-out NLL: values computed by hand, identical models tie, and the
log-probs equal a plain full-forward computation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from srl.data.partial import PartialJsonl
from srl.data.records import RankedPrompt, read_jsonl
from srl.evaluation.implicit_reward import (
    ImplicitSettings, ReplyLogprob, best_reply_nll, by_key, implicit_reward_metrics, ranked_pairs, reply_logprobs,
)
from srl.training.encoding import encode_example


def lp(pid: str, values: list[float], tokens: list[int] | None = None) -> dict:
    return {(pid, i): ReplyLogprob(pid, i, v, (tokens or [1] * len(values))[i]) for i, v in enumerate(values)}


GROUPS = [
    RankedPrompt("p?", ("a", "b", "c"), (0, 1, 2), "t1", "g1"),  # pairs (0,1), (0,2), (1,2)
    RankedPrompt("q?", ("d", "e"), (1, 0), "t2", "g2"),          # better is reply 1: pair (1,0)
]


def test_ranked_pairs_put_the_better_reply_first():
    assert ranked_pairs(GROUPS[0]) == [(0, 1), (0, 2), (1, 2)]
    assert ranked_pairs(GROUPS[1]) == [(1, 0)]
    assert ranked_pairs(RankedPrompt("x", ("a", "b"), (0, 0), "t", "m")) == []  # a human tie is no pair


def test_implicit_reward_accuracy_by_hand():
    # Rewards r = policy - reference: g1: (+1.0, -0.5, +0.2); g2: (0.0, +0.3)
    policy = {**lp("g1", [-10.0, -20.5, -30.8]), **lp("g2", [-5.0, -4.7])}
    reference = {**lp("g1", [-11.0, -20.0, -31.0]), **lp("g2", [-5.0, -5.0])}
    out = implicit_reward_metrics(GROUPS, policy, reference, tie_tolerance=1e-3, samples=200, seed=0)
    # margins: (0,1) 1.0-(-0.5)=1.5 win; (0,2) 1.0-0.2=0.8 win; (1,2) -0.5-0.2=-0.7 loss; g2 (1,0) 0.3-0.0=0.3 win
    assert out["pairs"] == 4 and out["prompts"] == 2
    assert out["accuracy"] == pytest.approx(3 / 4) and out["loss_rate"] == pytest.approx(1 / 4) and out["tie_rate"] == 0
    assert out["margin_mean"] == pytest.approx((1.5 + 0.8 - 0.7 + 0.3) / 4)
    # Longer wins on the same pairs: every reply here is one word, so no pair is a win.
    assert out["length_accuracy"] == 0.0
    # Bootstrap over the two prompts: g1 alone gives 2/3, g2 alone 1, mixes in between.
    assert 2 / 3 - 1e-9 <= out["accuracy_ci_low"] <= out["accuracy"] <= out["accuracy_ci_high"] <= 1.0


def test_a_margin_within_the_tolerance_is_a_tie():
    policy, reference = lp("g2", [-5.0, -5.0005]), lp("g2", [-5.0, -5.0])
    out = implicit_reward_metrics(GROUPS[1:], policy, reference, tie_tolerance=1e-3, samples=10, seed=0)
    assert (out["accuracy"], out["tie_rate"], out["loss_rate"]) == (0.0, 1.0, 0.0)
    out = implicit_reward_metrics(GROUPS[1:], policy, reference, tie_tolerance=0.0, samples=10, seed=0)
    assert (out["accuracy"], out["loss_rate"]) == (0.0, 1.0)  # reply 1 (better) lost 0.0005


def test_the_length_baseline_is_on_the_same_pairs():
    groups = [RankedPrompt("p", ("a b c", "a", "a b"), (0, 1, 2), "t", "g")]  # better-first pairs: (0,1) longer, (0,2) longer, (1,2) shorter
    policy, reference = lp("g", [-1.0, -1.0, -1.0]), lp("g", [-1.0, -1.0, -1.0])
    assert implicit_reward_metrics(groups, policy, reference, 1e-3, 10, 0)["length_accuracy"] == pytest.approx(2 / 3)
    policy[("g", 2)] = ReplyLogprob("g", 2, None, 0)  # pairs (0,2) and (1,2) leave: only (0,1) remains
    assert implicit_reward_metrics(groups, policy, reference, 1e-3, 10, 0)["length_accuracy"] == 1.0


def test_pairs_without_a_logprob_are_left_out():
    policy = {**lp("g1", [-1.0, -2.0, -3.0])}
    policy[("g1", 2)] = ReplyLogprob("g1", 2, None, 0)  # did not fit max_length
    reference = lp("g1", [-1.0, -1.0, -1.0])
    out = implicit_reward_metrics(GROUPS[:1], policy, reference, 1e-3, 10, 0)
    assert out["pairs"] == 1 and out["accuracy"] == 1.0


def test_best_reply_nll_is_token_weighted_over_the_human_best():
    policy = {**lp("g1", [-6.0, -1.0, -1.0], [3, 1, 1]), **lp("g2", [-1.0, -2.0], [1, 2])}
    out = best_reply_nll(GROUPS, policy)  # best: g1 reply 0 (6 nats, 3 tokens), g2 reply 1 (2 nats, 2 tokens)
    assert out == {"best_reply_nll": pytest.approx(8 / 5), "best_reply_tokens": 5}


def groups_for(tok) -> list[RankedPrompt]:
    return [
        RankedPrompt("What is two plus two?", ("Four.", "It is five, I think.", "2+2 equals 4"), (0, 2, 1), "t1", "g1"),
        RankedPrompt("Name a colour.", ("Blue", "A colour is a thing."), (0, 1), "t2", "g2"),
    ]


def test_identical_models_give_ties_not_wins(tiny, tmp_path):
    model, tok = tiny
    groups = groups_for(tok)
    a, b = PartialJsonl(tmp_path / "a.jsonl", ReplyLogprob), PartialJsonl(tmp_path / "b.jsonl", ReplyLogprob)
    reply_logprobs(model, tok, groups, 256, 2, a)
    reply_logprobs(copy.deepcopy(model), tok, groups, 256, 3, b)  # another batching: the same sums up to float noise
    policy, reference = by_key(read_jsonl(a.finish(), ReplyLogprob)), by_key(read_jsonl(b.finish(), ReplyLogprob))
    out = implicit_reward_metrics(groups, policy, reference, ImplicitSettings().tie_tolerance, 100, 0)
    assert out["pairs"] == 4 and out["accuracy"] == 0.0 and out["tie_rate"] == 1.0


def test_reply_logprobs_equal_a_plain_forward_per_reply(tiny, tmp_path):
    model, tok = tiny
    groups = groups_for(tok)
    store = PartialJsonl(tmp_path / "lp.jsonl", ReplyLogprob)
    reply_logprobs(model, tok, groups, 256, 2, store)
    got = by_key(read_jsonl(store.finish(), ReplyLogprob))
    assert len(got) == 5
    model.eval()
    for g in groups:
        for i, reply in enumerate(g.replies):
            ex, _ = encode_example(tok, g.prompt, reply, 256)
            ids, labels = torch.tensor([ex.input_ids]), torch.tensor([ex.labels])
            with torch.no_grad():
                logp = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            mask = labels[0, 1:] != -100
            expected = logp[mask].gather(1, labels[0, 1:][mask].unsqueeze(1)).sum().item()
            assert got[(g.message_id, i)].tokens == int(mask.sum())
            assert math.isclose(got[(g.message_id, i)].logp, expected, rel_tol=1e-4, abs_tol=1e-3)


def test_a_trained_policy_moves_the_margin_of_the_pair_it_was_pushed_on(tiny, tmp_path):
    """Raising log pi of one reply (a few SGD steps on it) makes it win its pairs against the untouched model."""
    model, tok = tiny
    groups = groups_for(tok)[1:]  # "Blue" (better) vs "A colour is a thing."
    ref_store = PartialJsonl(tmp_path / "ref.jsonl", ReplyLogprob)
    reply_logprobs(model, tok, groups, 256, 2, ref_store)
    policy_model = copy.deepcopy(model)
    ex, _ = encode_example(tok, groups[0].prompt, groups[0].replies[0], 256)
    opt = torch.optim.SGD(policy_model.parameters(), lr=0.05)
    ids, labels = torch.tensor([ex.input_ids]), torch.tensor([ex.labels])
    policy_model.train()
    for _ in range(3):
        loss = policy_model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    store = PartialJsonl(tmp_path / "pol.jsonl", ReplyLogprob)
    reply_logprobs(policy_model, tok, groups, 256, 2, store)
    out = implicit_reward_metrics(groups, by_key(read_jsonl(store.finish(), ReplyLogprob)), by_key(read_jsonl(ref_store.finish(), ReplyLogprob)), 1e-3, 10, 0)
    assert out["accuracy"] == 1.0 and out["margin_mean"] > 0


def test_settings_are_checked():
    with pytest.raises(ValueError, match="against"):
        ImplicitSettings(against="best")
    with pytest.raises(ValueError, match="tie_tolerance"):
        ImplicitSettings(tie_tolerance=-1)
