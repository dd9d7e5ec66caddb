"""DPO on the tiny model: stored reference log-probs, concatenated forward, loss falls, accuracy rises; every loss trains."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import compose
from hydra.utils import instantiate

from srl.training.dpo import (
    DPOModule,
    DPOSettings,
    batch_preference_loss,
    collate_pairs,
    encode_pair,
    policy_logprobs,
    policy_logprobs_and_counts,
    reference_logprobs,
)
from srl.training.encoding import IGNORE_INDEX
from srl.training.losses import PREFERENCE_LOSSES, dpo_loss, sequence_logprobs
from srl.training.sft import SFTDataModule
from srl.training.steps import StageProgress

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


def fit(model, tok, pairs, settings):
    """Trains; returns the trainer, with ``stage``: the stage statistics (steps.StageProgress)."""
    progress = StageProgress(Path(tempfile.mkdtemp()), "m2/dpo", every_n_steps=0)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=settings.max_epochs, accumulate_grad_batches=settings.accumulate_grad_batches,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[progress],
    )
    trainer.fit(DPOModule(model, settings, metric_prefix="m2/dpo"), datamodule=SFTDataModule(pairs, [], settings.micro_batch_size, tok.pad_token_id, collate=collate_pairs))
    trainer.stage = progress.summary()
    assert len(progress.rows) == trainer.global_step  # a row per optimizer step
    return trainer


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
    trainer = fit(model, tok, pairs, settings)
    loss_after, acc_after = batch_metrics(model, batch, settings.beta)
    assert loss_after < loss_before - 0.1
    assert acc_after == 1.0
    assert any(not torch.equal(p, frozen[n]) for n, p in model.named_parameters())
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"):
        assert {f"m2/dpo/{key}_{s}" for s in ("mean", "first", "last")} <= trainer.stage.keys()
    # Stage statistics over all steps: the first step starts at policy = reference (loss ln 2, margin 0).
    assert abs(trainer.stage["m2/dpo/loss_first"] - 0.6931) < 1e-3
    assert trainer.stage["m2/dpo/loss_last"] < trainer.stage["m2/dpo/loss_mean"] < trainer.stage["m2/dpo/loss_first"]
    assert trainer.stage["m2/dpo/rewards/margin_last"] > 0
    assert trainer.stage["m2/dpo/pairs"] == len(pairs) * settings.max_epochs


def test_token_counts_are_the_label_counts_of_each_reply(tiny):
    model, tok = tiny
    pairs = encoded_pairs(tok)
    with torch.no_grad():
        _, _, chosen_tokens, rejected_tokens = policy_logprobs_and_counts(model, collate_pairs(pairs, tok.pad_token_id))
    assert chosen_tokens.tolist() == [sum(t != IGNORE_INDEX for t in p.chosen.labels) for p in pairs]
    assert rejected_tokens.tolist() == [sum(t != IGNORE_INDEX for t in p.rejected.labels) for p in pairs]


# Loss at policy = reference (h = 0): sigmoid and conservative ln 2, ipo (0 - 1/(2*0.1))^2 = 25, rpo
# ln 2 plus the chosen replies' per-token NLL (model dependent, checked > 0).
START = {"sigmoid": math.log(2.0), "ipo": 25.0, "conservative": math.log(2.0), "rpo": None}
EXTRA = {"sigmoid": {}, "ipo": {}, "conservative": {"label_smoothing": 0.1}, "rpo": {"nll_alpha": 1.0}}


@pytest.mark.parametrize("kind", PREFERENCE_LOSSES)
def test_every_preference_loss_trains(tiny, kind):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    settings = DPOSettings(
        optimizer=functools.partial(torch.optim.AdamW, lr=2e-3), loss=kind, beta=0.1, batch_size=2, micro_batch_size=2,
        max_epochs=2, dropout=0.0, **EXTRA[kind],
    )
    pairs = reference_logprobs(model, encoded_pairs(tok), tok.pad_token_id)
    batch = collate_pairs(pairs, tok.pad_token_id)

    def loss_now():
        model.eval()
        with torch.no_grad():
            out = batch_preference_loss(model, batch, settings)
        model.train()
        return float(out.loss), out.nll

    before, nll = loss_now()
    if kind == "rpo":
        assert float(nll) > 0 and abs(before - (math.log(2.0) + float(nll))) < 1e-4
    else:
        assert abs(before - START[kind]) < 1e-3
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = fit(model, tok, pairs, settings)
    after, nll_after = loss_now()
    assert after < before - 0.05 * before
    if kind == "rpo":  # the NLL term pulls the chosen replies' likelihood up
        assert float(nll_after) < float(nll)
    assert any(not torch.equal(p, frozen[n]) for n, p in model.named_parameters())
    assert ("m2/dpo/nll_mean" in trainer.stage) == (kind == "rpo")
    assert trainer.stage["m2/dpo/rewards/margin_last"] > 0


@pytest.mark.parametrize("option, expected", [
    ("default", ("sigmoid", 0.1, 0.0, 1.0)), ("ipo", ("ipo", 0.1, 0.0, 1.0)),
    ("conservative", ("conservative", 0.1, 0.1, 1.0)), ("rpo", ("rpo", 0.1, 0.0, 1.0)),
])
def test_conf_dpo_options_instantiate(option, expected):
    # (loss, beta, label_smoothing, nll_alpha); everything else comes from conf/dpo/default.yaml.
    settings = instantiate(compose([f"dpo={option}"]).dpo)
    assert (settings.loss, settings.beta, settings.label_smoothing, settings.nll_alpha) == expected
    assert settings == dataclasses.replace(instantiate(compose().dpo), loss=expected[0], label_smoothing=expected[2], optimizer=settings.optimizer, scheduler=settings.scheduler)


def test_dpo_settings_validation():
    make = functools.partial(DPOSettings, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    assert make(loss="conservative", label_smoothing=0.1).label_smoothing == 0.1
    for kwargs, message in [
        ({"loss": "hinge"}, r"dpo.loss='hinge' is not a preference loss; choose one of \['sigmoid', 'ipo', 'conservative', 'rpo'\]"),
        ({"beta": 0.0}, r"dpo.beta=0.0 must be > 0"),
        ({"loss": "conservative", "label_smoothing": 0.5}, r"dpo.label_smoothing=0.5 must be in \[0, 0.5\)"),
        ({"label_smoothing": 0.1}, r"dpo.label_smoothing=0.1 is used only by dpo.loss=conservative \(cDPO\), not dpo.loss=sigmoid"),
        ({"loss": "rpo", "nll_alpha": -1.0}, r"dpo.nll_alpha=-1.0 must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            make(**kwargs)


JUDGE_PAIRS = [  # Meta-Rewarding judge pairs: a judge prompt, a faithful judgement and a careless one
    ("Judge this reply to 'Name a primary colour': Red.", "Red is a primary colour: correct and direct.\nScore: 5", "Bad.\nScore: 1"),
    ("Judge this reply to 'What is two plus two?': Five.", "Two plus two is four, so the reply is wrong.\nScore: 1", "Great.\nScore: 5"),
]


def fit_rows(model, tok, pairs, settings, split_kinds):
    progress = StageProgress(Path(tempfile.mkdtemp()), "m2/dpo", every_n_steps=0)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=settings.max_epochs, accumulate_grad_batches=settings.accumulate_grad_batches,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[progress],
    )
    module = DPOModule(model, settings, metric_prefix="m2/dpo", split_kinds=split_kinds)
    trainer.fit(module, datamodule=SFTDataModule(pairs, [], settings.micro_batch_size, tok.pad_token_id, collate=collate_pairs, group_by_length=False))
    return progress.rows, progress.summary()


def test_mixed_actor_and_judge_pairs_log_each_kind_and_both_losses_fall(tiny):
    """One DPO stage on actor + judge pairs: per step, each kind's loss is the mean over its own pairs (so the step
    loss is their pair-weighted mean), a step without a kind leaves it out, and both kinds' losses fall."""
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    actor = encoded_pairs(tok)
    judge = [dataclasses.replace(encode_pair(tok, p, c, r, max_length=128), judge=True) for p, c, r in JUDGE_PAIRS]
    pairs = reference_logprobs(model, actor + judge, tok.pad_token_id)
    assert [p.judge for p in pairs] == [False] * 4 + [True] * 2
    assert collate_pairs(pairs[3:5], tok.pad_token_id)["judge"].tolist() == [False, True]
    assert "judge" not in collate_pairs(pairs[:2], tok.pad_token_id)
    settings = DPOSettings(optimizer=functools.partial(torch.optim.AdamW, lr=2e-3), beta=0.1, batch_size=6, micro_batch_size=2,
                           max_epochs=8, dropout=0.0)
    rows, stage = fit_rows(model, tok, pairs, settings, split_kinds=True)
    assert len(rows) == 8
    for row in rows:
        assert row["actor/pairs"] == 4 and row["judge/pairs"] == 2
        weighted = (row["actor/loss"] * row["actor/pairs"] + row["judge/loss"] * row["judge/pairs"]) / row["pairs"]
        assert row["loss"] == pytest.approx(weighted, rel=1e-5)
        margin = (row["actor/rewards/margin"] * 4 + row["judge/rewards/margin"] * 2) / 6
        assert row["rewards/margin"] == pytest.approx(margin, rel=1e-4, abs=1e-6)
    for kind in ("actor", "judge"):
        assert stage[f"m2/dpo/{kind}/loss_first"] == pytest.approx(math.log(2.0), abs=1e-3)  # policy = reference at step 1
        assert stage[f"m2/dpo/{kind}/loss_last"] < stage[f"m2/dpo/{kind}/loss_first"] - 0.1
        assert stage[f"m2/dpo/{kind}/rewards/accuracy_last"] == 1.0
    assert stage["m2/dpo/judge/pairs"] == 2 * 8 and stage["m2/dpo/actor/pairs"] == 4 * 8  # counters: summed over the stage
    # A step with actor pairs only (batch of 2 of the 4 actor pairs): the judge statistics are absent, not 0.
    only_actor, _ = fit_rows(copy.deepcopy(tiny[0]), tok, pairs[:2], dataclasses.replace(settings, batch_size=2, max_epochs=1), split_kinds=True)
    assert "judge/loss" not in only_actor[0] and only_actor[0]["judge/pairs"] == 0 and only_actor[0]["actor/pairs"] == 2


def test_reference_logprobs_under_the_training_autocast_give_zero_rewards_at_step_zero(tiny):
    """Under bf16-mixed the policy's step-0 forward runs in autocast: a reference computed in float32 outside it
    starts DPO from nonzero implicit rewards; computed under the trainer's precision, they are 0."""
    from srl.training.dpo import training_autocast

    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    settings = DPOSettings(optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), beta=0.1, batch_size=4, micro_batch_size=4, dropout=0.0)
    step0 = {}
    for precision in (None, "bf16-mixed"):
        pairs = reference_logprobs(model, encoded_pairs(tok), tok.pad_token_id, batch_size=2, precision=precision)
        model.train()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # what Lightning's bf16-mixed does around training_step
            out = batch_preference_loss(model, collate_pairs(pairs, tok.pad_token_id), settings)
        step0[precision] = float(torch.cat([out.chosen_rewards, out.rejected_rewards]).abs().max())
    assert step0["bf16-mixed"] < 1e-6 < 1e-5 < step0[None]
    assert isinstance(training_autocast("32-true", torch.device("cpu")), type(training_autocast("bf16-true", torch.device("cpu"))))
    with training_autocast("16-mixed", torch.device("cpu")):
        assert torch.get_autocast_dtype("cpu") == torch.float16 and torch.is_autocast_enabled("cpu")
