"""SFT loss and token log-probabilities against hand computations."""

from __future__ import annotations

import math

import torch

from srl.chat import IGNORE_INDEX
from srl.losses import sft_loss, token_logprobs


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
    from srl.losses import dpo_loss

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
    from srl.losses import sequence_logprobs

    ln3 = math.log(3.0)
    logits = torch.tensor([[[0.0, ln3], [0.0, ln3], [0.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    torch.testing.assert_close(sequence_logprobs(logits, labels), torch.tensor([math.log(0.75) + math.log(0.25)]))


def test_selected_logprobs_equal_full_logits_on_target_tokens_only():
    from srl.losses import row_sums, selected_logprobs, sequence_logprobs

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
    from srl.losses import row_sums

    got = row_sums(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 2, 2]), 3)
    assert got.tolist() == [1.0, 0.0, 6.0]
