"""SFT loss, token log-probabilities and the preference losses against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from srl.training.encoding import IGNORE_INDEX
from srl.training.losses import preference_loss, sft_loss, token_logprobs


def test_token_logprobs_and_sft_loss_by_hand():
    # vocab 2; position t predicts token t+1. Logits [0, ln 3] give p = [1/4, 3/4].
    ln3 = math.log(3.0)
    logits = torch.tensor([[[0.0, ln3], [0.0, ln3], [0.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    # targets after shift: [1, 0]; p(1 | pos0) = 3/4, p(0 | pos1) = 1/4.
    logprobs, mask = token_logprobs(logits, labels)
    assert mask.tolist() == [[True, True]]
    torch.testing.assert_close(logprobs, torch.tensor([[math.log(0.75), math.log(0.25)]]))
    loss, n = sft_loss(logits, labels)
    assert int(n) == 2
    torch.testing.assert_close(loss, torch.tensor(-(math.log(0.75) + math.log(0.25)) / 2))


def test_masked_positions_do_not_count():
    logits = torch.zeros((1, 4, 5))
    logits[0, 0, 2] = 100.0  # would dominate if position 1's label were counted
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4]])
    loss, n = sft_loss(logits, labels)
    # Two counted tokens, each under a uniform distribution over 5: loss = ln 5.
    assert int(n) == 2
    torch.testing.assert_close(loss, torch.tensor(math.log(5.0)))


def test_loss_is_token_weighted_across_rows():
    # Row 0 has 1 target token, row 1 has 3: the batch loss is the mean over 4 tokens, not over rows.
    ln3 = math.log(3.0)
    logits = torch.zeros((2, 4, 2))
    logits[0, :, 1] = ln3  # p(1) = 3/4 everywhere in row 0
    labels = torch.tensor([[IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, 0, 0, 0]])
    loss, n = sft_loss(logits, labels)
    expected = -(math.log(0.75) + 3 * math.log(0.5)) / 4
    assert int(n) == 4
    torch.testing.assert_close(loss, torch.tensor(expected))


def test_dpo_loss_by_hand():
    from srl.training.losses import dpo_loss

    # beta 0.1; chosen: policy -10, ref -12 -> reward 0.2; rejected: policy -15, ref -14 -> reward -0.1.
    # loss = -log sigmoid(0.3) = log(1 + e^-0.3)
    loss, chosen, rejected = dpo_loss(torch.tensor([-10.0]), torch.tensor([-15.0]), torch.tensor([-12.0]), torch.tensor([-14.0]), beta=0.1)
    torch.testing.assert_close(chosen, torch.tensor([0.2]))
    torch.testing.assert_close(rejected, torch.tensor([-0.1]))
    torch.testing.assert_close(loss, torch.tensor(math.log(1 + math.exp(-0.3))))
    # Policy equal to reference: loss ln 2.
    loss, _, _ = dpo_loss(torch.tensor([-3.0, -4.0]), torch.tensor([-5.0, -1.0]), torch.tensor([-3.0, -4.0]), torch.tensor([-5.0, -1.0]), beta=0.5)
    torch.testing.assert_close(loss, torch.tensor(math.log(2.0)))


def test_sequence_logprobs_sums_label_tokens():
    from srl.training.losses import sequence_logprobs

    ln3 = math.log(3.0)
    logits = torch.tensor([[[0.0, ln3], [0.0, ln3], [0.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    torch.testing.assert_close(sequence_logprobs(logits, labels), torch.tensor([math.log(0.75) + math.log(0.25)]))


def test_selected_logprobs_equal_full_logits_on_target_tokens_only():
    from srl.training.losses import row_sums, selected_logprobs, sequence_logprobs

    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8)
    head = torch.nn.Linear(8, 11, bias=False)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 4, 7, IGNORE_INDEX], [IGNORE_INDEX, 1, 2, 3, 9]])
    calls = []
    values, rows = selected_logprobs(hidden, labels, lambda h: calls.append(h.shape) or head(h))
    # Targets at t = 2, 3 (row 0) and 1, 2, 3, 4 (row 1): six hidden states reach the head, not ten.
    assert calls == [torch.Size([6, 8])]
    assert rows.tolist() == [0, 0, 1, 1, 1, 1]
    full, mask = token_logprobs(head(hidden), labels)
    torch.testing.assert_close(values, full[mask])
    torch.testing.assert_close(row_sums(values, rows, 2), sequence_logprobs(head(hidden), labels))


def test_row_sums_by_hand():
    from srl.training.losses import row_sums

    got = row_sums(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 2, 2]), 3)
    assert got.tolist() == [1.0, 0.0, 6.0]


# --- preference losses (srl.training.losses.preference_loss) ----------------------------------------------
# One pair by hand, beta 0.1: policy chosen -10, ref chosen -12 -> log-ratio +2 (reward 0.2);
# policy rejected -15, ref rejected -14 -> log-ratio -1 (reward -0.1); h = 2 - (-1) = 3, beta*h = 0.3.
# Token counts: chosen 4, rejected 2.

PAIR = dict(policy_chosen=torch.tensor([-10.0]), policy_rejected=torch.tensor([-15.0]), ref_chosen=torch.tensor([-12.0]), ref_rejected=torch.tensor([-14.0]))
TOKENS = dict(chosen_tokens=torch.tensor([4.0]), rejected_tokens=torch.tensor([2.0]))


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log(1.0 + math.exp(x))


def test_sigmoid_loss_by_hand():
    out = preference_loss(**PAIR, kind="sigmoid", beta=0.1)
    # -log sigmoid(0.3) = log(1 + e^-0.3) = 0.55436
    torch.testing.assert_close(out.loss, torch.tensor(softplus(-0.3)))
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.2]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.1]))
    assert out.nll is None


def test_conservative_loss_by_hand():
    # eps 0.1: -(0.9) log sigmoid(0.3) - 0.1 log sigmoid(-0.3) = 0.9 log(1 + e^-0.3) + 0.1 log(1 + e^0.3)
    out = preference_loss(**PAIR, kind="conservative", beta=0.1, label_smoothing=0.1)
    torch.testing.assert_close(out.loss, torch.tensor(0.9 * softplus(-0.3) + 0.1 * softplus(0.3)))
    # eps 0 is the sigmoid loss.
    out = preference_loss(**PAIR, kind="conservative", beta=0.1, label_smoothing=0.0)
    torch.testing.assert_close(out.loss, torch.tensor(softplus(-0.3)))


def test_ipo_loss_averages_log_probs_per_token_by_hand():
    # Per-token log-ratios: chosen +2 / 4 = 0.5, rejected -1 / 2 = -0.5; h' = 1.0.
    # Target 1 / (2 * 0.1) = 5: loss (1 - 5)^2 = 16. Rewards stay summed: 0.2 and -0.1.
    out = preference_loss(**PAIR, kind="ipo", beta=0.1, **TOKENS)
    torch.testing.assert_close(out.loss, torch.tensor(16.0))
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.2]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.1]))
    # A second pair with policy = reference (h' = 0, loss 25): the batch loss is the mean, 20.5.
    batch = {k: torch.cat([v, torch.tensor([-3.0])]) for k, v in PAIR.items()}
    tokens = {k: torch.cat([v, torch.tensor([3.0])]) for k, v in TOKENS.items()}
    out = preference_loss(**batch, kind="ipo", beta=0.1, **tokens)
    torch.testing.assert_close(out.loss, torch.tensor((16.0 + 25.0) / 2))
    # Summed instead of averaged log-probs would give h = 3, (3 - 5)^2 = 4: the counts matter.
    out = preference_loss(**PAIR, kind="ipo", beta=0.1, chosen_tokens=torch.tensor([1.0]), rejected_tokens=torch.tensor([1.0]))
    torch.testing.assert_close(out.loss, torch.tensor(4.0))


def test_rpo_loss_adds_per_token_nll_of_chosen_by_hand():
    # NLL per token of the chosen reply: -(-10) / 4 = 2.5. alpha 1: log(1 + e^-0.3) + 2.5; alpha 0.5: + 1.25.
    out = preference_loss(**PAIR, kind="rpo", beta=0.1, nll_alpha=1.0, **TOKENS)
    torch.testing.assert_close(out.loss, torch.tensor(softplus(-0.3) + 2.5))
    torch.testing.assert_close(out.nll, torch.tensor(2.5))
    out = preference_loss(**PAIR, kind="rpo", beta=0.1, nll_alpha=0.5, **TOKENS)
    torch.testing.assert_close(out.loss, torch.tensor(softplus(-0.3) + 1.25))
    # Two pairs: second has policy = reference (ln 2) and chosen -3 over 3 tokens (NLL 1.0).
    batch = {k: torch.cat([v, torch.tensor([-3.0])]) for k, v in PAIR.items()}
    out = preference_loss(**batch, kind="rpo", beta=0.1, nll_alpha=1.0, chosen_tokens=torch.tensor([4.0, 3.0]))
    torch.testing.assert_close(out.loss, torch.tensor((softplus(-0.3) + math.log(2.0)) / 2 + (2.5 + 1.0) / 2))
    torch.testing.assert_close(out.nll, torch.tensor(1.75))


def grads(kind: str, beta: float = 0.1, **kwargs) -> tuple[float, float]:
    """d loss / d policy_chosen and d loss / d policy_rejected for the hand pair."""
    pc, pr = PAIR["policy_chosen"].clone().requires_grad_(), PAIR["policy_rejected"].clone().requires_grad_()
    out = preference_loss(pc, pr, PAIR["ref_chosen"], PAIR["ref_rejected"], kind=kind, beta=beta, **TOKENS, **kwargs)
    out.loss.backward()
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    return float(pc.grad), float(pr.grad)


def test_gradients_by_hand():
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))
    # sigmoid: d/d pc = -beta * (1 - sigmoid(0.3)) < 0 (raising the chosen log-prob lowers the loss);
    # d/d pr = +beta * (1 - sigmoid(0.3)) > 0.
    gc, gr = grads("sigmoid")
    assert gc < 0 < gr
    assert math.isclose(gc, -0.1 * (1 - sig(0.3)), rel_tol=1e-5) and math.isclose(gr, 0.1 * (1 - sig(0.3)), rel_tol=1e-5)
    # rpo adds d/d pc of alpha * (-pc / 4) = -alpha / 4; the rejected side is unchanged.
    gc_rpo, gr_rpo = grads("rpo", nll_alpha=1.0)
    assert math.isclose(gc_rpo, gc - 0.25, rel_tol=1e-5) and math.isclose(gr_rpo, gr, rel_tol=1e-5)
    # ipo: d/d pc = 2 (h' - 5) / 4 = 2 * (1 - 5) / 4 = -2; d/d pr = -2 (h' - 5) / 2 = 4.
    gc, gr = grads("ipo")
    assert math.isclose(gc, -2.0, rel_tol=1e-5) and math.isclose(gr, 4.0, rel_tol=1e-5)
    # ipo past its target (beta 1: target 0.5 < h' = 1) pushes back: d/d pc = 2 (1 - 0.5) / 4 = 0.25 > 0.
    gc, _ = grads("ipo", beta=1.0)
    assert math.isclose(gc, 0.25, rel_tol=1e-5)
    # conservative: d/d pc = beta * (sigmoid(beta h) - (1 - eps)). beta 0.1: sigmoid(0.3) = 0.574 < 0.9,
    # negative; beta 1: sigmoid(3) = 0.953 > 0.9, positive (cDPO stops widening a confident margin).
    gc, _ = grads("conservative", label_smoothing=0.1)
    assert math.isclose(gc, 0.1 * (sig(0.3) - 0.9), rel_tol=1e-5) and gc < 0
    gc, _ = grads("conservative", beta=1.0, label_smoothing=0.1)
    assert math.isclose(gc, sig(3.0) - 0.9, rel_tol=1e-5) and gc > 0


def test_preference_loss_errors():
    with pytest.raises(ValueError, match=r"unknown preference loss 'hinge'; choose one of \['sigmoid', 'ipo', 'conservative', 'rpo'\]"):
        preference_loss(**PAIR, kind="hinge", beta=0.1)
    with pytest.raises(ValueError, match=r"label_smoothing=0.5 must be in \[0, 0.5\)"):
        preference_loss(**PAIR, kind="conservative", beta=0.1, label_smoothing=0.5)
    with pytest.raises(ValueError, match="'ipo' averages log-probs over each reply's tokens: pass chosen_tokens"):
        preference_loss(**PAIR, kind="ipo", beta=0.1)
    with pytest.raises(ValueError, match="pass rejected_tokens"):
        preference_loss(**PAIR, kind="ipo", beta=0.1, chosen_tokens=torch.tensor([4.0]))
    with pytest.raises(ValueError, match="'rpo' averages log-probs over each reply's tokens: pass chosen_tokens"):
        preference_loss(**PAIR, kind="rpo", beta=0.1, nll_alpha=1.0)

