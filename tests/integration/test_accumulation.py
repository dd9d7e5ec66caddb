"""Gradient accumulation is exact: one optimizer step over micro-batches moves the weights as one
full-batch step on the effective batch's mean loss (SFT: per target token; DPO: per pair).

With SGD at lr 1 and no momentum, the weight change of one step is minus the gradient Lightning
accumulated, which is compared with the gradient of the full-batch loss computed by hand.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import lightning as L
import pytest
import torch

from srl.data.records import IFTExample
from srl.training.dpo import DPOModule, DPOSettings, collate_pairs, encode_pair, policy_logprobs_and_counts
from srl.training.encoding import collate_right, encode_sft
from srl.training.losses import preference_loss, sft_loss
from srl.training.sft import SFTDataModule, SFTModule, SFTSettings

# Replies of very different lengths: a token of a short micro-batch must weigh what any other does.
SFT_DATA = [
    ("Name a colour.", "Red."),
    ("Tell me about the sea.", "The sea is large, salty and deep; it covers most of the planet and moves with tides " * 3),
    ("Say hi.", "Hi."),
    ("Describe a forest.", "A forest is a wide area of trees, moss, birds, insects, streams and shade in summer " * 3),
    ("Yes or no?", "Yes."),
    ("Explain rain.", "Rain is water that condenses in clouds and falls when the drops grow heavy enough " * 2),
]
DPO_DATA = [
    ("Name a primary colour.", "Red is a primary colour.", "I like turtles a lot and they swim in the sea all day long."),
    ("What is two plus two?", "Two plus two is four.", "No."),
    ("Say hello in French.", "Bonjour means hello.", "The moon is far away from the earth, about 384,000 km."),
    ("Give a fruit that is yellow.", "A banana is yellow.", "Grass."),
    ("Count to three.", "One, two, three.", "Bananas are yellow and they grow on large plants in warm places."),
]
SGD = functools.partial(torch.optim.SGD, lr=1.0)


def one_step(module, data, micro, accumulate, collate=None, group_by_length=True):
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, accumulate_grad_batches=accumulate, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    kwargs = {"collate": collate} if collate else {}
    trainer.fit(module, datamodule=SFTDataModule(data, [], micro, 0, seed=1, group_by_length=group_by_length, **kwargs))
    assert trainer.global_step == 1
    return trainer


def step_and_reference(model, loss_fn, fit):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reference = copy.deepcopy(model)
    reference.train()
    loss_fn(reference).backward()
    fit()
    return [(n, before[n] - p.detach(), dict(reference.named_parameters())[n].grad) for n, p in model.named_parameters()]


@pytest.mark.parametrize("group_by_length", [True, False])
def test_sft_accumulated_step_equals_the_full_batch_token_mean(tiny, group_by_length):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    ift = [IFTExample(prompt=p, response=r, tree_id=str(i), message_id=str(i)) for i, (p, r) in enumerate(SFT_DATA)]
    encoded, _ = encode_sft(tok, ift, [], max_length=256)
    tokens = sorted(e.num_target_tokens for e in encoded)
    assert tokens[-1] > 8 * tokens[0]  # the case where a mean of micro-batch means goes wrong
    full = collate_right(encoded, tok.pad_token_id)

    def full_loss(m):
        return sft_loss(m(input_ids=full["input_ids"], attention_mask=full["attention_mask"]).logits, full["labels"])[0]

    s = SFTSettings(optimizer=SGD, batch_size=6, micro_batch_size=2, dropout=None)
    module = SFTModule(model, s)
    rows = step_and_reference(model, full_loss, lambda: one_step(module, encoded, 2, 3, group_by_length=group_by_length))
    for name, change, grad in rows:
        torch.testing.assert_close(change, grad, atol=2e-6, rtol=1e-4, msg=f"{name}: accumulated step != full-batch gradient")


def test_dpo_accumulated_step_equals_the_full_batch_pair_mean_with_a_short_micro_batch(tiny):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    refs = [(-30.0, -40.0), (-25.0, -5.0), (-20.0, -60.0), (-22.0, -8.0), (-18.0, -55.0)]
    pairs = [dataclasses.replace(encode_pair(tok, p, c, r, 256), ref_chosen=rc, ref_rejected=rr) for (p, c, r), (rc, rr) in zip(DPO_DATA, refs)]
    settings = DPOSettings(optimizer=SGD, beta=0.5, batch_size=6, micro_batch_size=2, dropout=None)
    full = collate_pairs(pairs, tok.pad_token_id)

    def full_loss(m):
        c, r, _, _ = policy_logprobs_and_counts(m, full)
        return preference_loss(c, r, full["ref_chosen"], full["ref_rejected"], "sigmoid", 0.5).loss

    module = DPOModule(model, settings)
    # 5 pairs in micro-batches of 2: 2 + 2 + 1, one optimizer step; the lone pair weighs 1/5, not 1/3.
    rows = step_and_reference(model, full_loss, lambda: one_step(module, pairs, 2, 3, collate=collate_pairs))
    for name, change, grad in rows:
        torch.testing.assert_close(change, grad, atol=2e-6, rtol=1e-4, msg=f"{name}: accumulated step != full-batch gradient")
