"""DPO on the tiny model: stored reference log-probs, concatenated forward, loss falls, accuracy rises."""

from __future__ import annotations

import copy
import functools

import lightning as L
import torch

from srl.dpo import DPOModule, DPOSettings, collate_pairs, encode_pair, policy_logprobs, reference_logprobs
from srl.losses import dpo_loss, sequence_logprobs
from srl.sft import SFTDataModule

PAIRS = [
    ("Name a primary colour.", "Red is a primary colour.", "I like turtles a lot."),
    ("What is two plus two?", "Two plus two is four.", "Bananas are yellow."),
    ("Say hello in French.", "Bonjour means hello.", "No."),
    ("Give a fruit that is yellow.", "A banana is yellow.", "The moon is far away."),
]


def encoded_pairs(tok):
    return [encode_pair(tok, p, c, r, max_length=128) for p, c, r in PAIRS]


def test_reference_logprobs_match_a_fresh_per_example_computation(tiny):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    pairs = reference_logprobs(model, encoded_pairs(tok), tok.pad_token_id, batch_size=3)
    model.eval()
    with torch.no_grad():
        for p in pairs:
            for example, stored in ((p.chosen, p.ref_chosen), (p.rejected, p.ref_rejected)):
                ids = torch.tensor([example.input_ids])
                fresh = sequence_logprobs(model(input_ids=ids).logits, torch.tensor([example.labels]))
                assert abs(float(fresh) - stored) < 1e-4


def test_concatenated_forward_equals_separate_forwards(tiny):
    model, tok = tiny
    model.eval()
    pairs = encoded_pairs(tok)
    batch = collate_pairs(pairs, tok.pad_token_id)
    with torch.no_grad():
        chosen, rejected = policy_logprobs(model, batch)
        for i, p in enumerate(pairs):
            alone = sequence_logprobs(model(input_ids=torch.tensor([p.rejected.input_ids])).logits, torch.tensor([p.rejected.labels]))
            torch.testing.assert_close(rejected[i], alone[0], atol=1e-4, rtol=1e-4)
    model.train()
    assert chosen.shape == rejected.shape == (4,)


def batch_metrics(model, batch, beta):
    model.eval()
    with torch.no_grad():
        chosen, rejected = policy_logprobs(model, batch)
        loss, cr, rr = dpo_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], beta)
    model.train()
    return float(loss), float((cr > rr).float().mean())


def test_dpo_training_lowers_loss_and_raises_accuracy(tiny):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    settings = DPOSettings(
        optimizer=functools.partial(torch.optim.AdamW, lr=2e-3), beta=0.1, batch_size=4, micro_batch_size=2,
        max_epochs=10, dropout=0.0,
    )
    pairs = reference_logprobs(model, encoded_pairs(tok), tok.pad_token_id)
    batch = collate_pairs(pairs, tok.pad_token_id)
    loss_before, acc_before = batch_metrics(model, batch, settings.beta)
    # Policy = reference: rewards are 0, loss is ln 2, no pair is ranked right yet.
    assert abs(loss_before - 0.6931) < 1e-3 and acc_before == 0.0
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=settings.max_epochs, accumulate_grad_batches=settings.accumulate_grad_batches,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )
    module = DPOModule(model, settings, metric_prefix="m2/dpo")
    trainer.fit(module, datamodule=SFTDataModule(pairs, [], settings.micro_batch_size, tok.pad_token_id, collate=collate_pairs))
    loss_after, acc_after = batch_metrics(model, batch, settings.beta)
    assert loss_after < loss_before - 0.1
    assert acc_after == 1.0
    assert any(not torch.equal(p, frozen[n]) for n, p in model.named_parameters())
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"):
        assert f"m2/dpo/{key}" in trainer.callback_metrics
    assert trainer.callback_metrics["m2/dpo/rewards/margin"] > 0
