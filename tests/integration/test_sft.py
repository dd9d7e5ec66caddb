"""SFT on the tiny model: parameters change, the loss on a fixed batch falls, dropout is wired."""

from __future__ import annotations

import copy
import functools

import lightning as L
import torch

from srl.data.records import IFTExample
from srl.training.encoding import collate_right, encode_sft
from srl.training.losses import sft_loss
from srl.training.schedules import warmup_cosine
from srl.training.sft import SFTDataModule, SFTModule, SFTSettings, restore_dropout, set_dropout
from srl.training.steps import StageProgress, read_steps

PAIRS = [
    ("Name a primary colour.", "Red is a primary colour."),
    ("What is two plus two?", "Two plus two is four."),
    ("Say hello in French.", "Bonjour means hello."),
    ("Give a fruit that is yellow.", "A banana is yellow."),
]


def settings(**overrides) -> SFTSettings:
    base = dict(
        optimizer=functools.partial(torch.optim.AdamW, lr=3e-3),
        scheduler=functools.partial(warmup_cosine, final_lr=3e-4),
        batch_size=4, micro_batch_size=2, max_epochs=8, max_length=128, dropout=0.0,
    )
    base.update(overrides)
    return SFTSettings(**base)


def fixed_batch_loss(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        loss, _ = sft_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
    model.train()
    return float(loss)


def test_sft_changes_parameters_and_lowers_loss(tiny, tmp_path):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    ift = [IFTExample(prompt=p, response=r, tree_id=str(i), message_id=str(i)) for i, (p, r) in enumerate(PAIRS)]
    encoded, counts = encode_sft(tok, ift, [], max_length=128)
    assert counts["ift_examples"] == 4
    batch = collate_right(encoded, tok.pad_token_id)
    before_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_before = fixed_batch_loss(model, batch)

    s = settings()
    module = SFTModule(model, s, metric_prefix="m1/sft")
    progress = StageProgress(tmp_path, "m1/sft", every_n_steps=0)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=s.max_epochs, accumulate_grad_batches=s.accumulate_grad_batches,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[progress],
    )
    trainer.fit(module, datamodule=SFTDataModule(encoded, [], s.micro_batch_size, tok.pad_token_id))

    loss_after = fixed_batch_loss(model, batch)
    assert loss_after < loss_before - 0.5, (loss_before, loss_after)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before_params[n])]
    assert len(changed) == len(before_params)
    # 4 examples, micro-batch 2, accumulation 2 -> 1 optimizer step per epoch.
    assert trainer.global_step == 8
    # The schedule ran: the last lr is near the floor (3e-4), well below the base (3e-3).
    assert trainer.optimizers[0].param_groups[0]["lr"] < 1e-3
    stage = progress.summary()
    assert stage["m1/sft/loss_last"] < stage["m1/sft/loss_mean"] < stage["m1/sft/loss_first"]
    assert stage["m1/sft/target_tokens"] == s.max_epochs * sum(e.num_target_tokens for e in encoded)
    assert [r["step"] for r in read_steps(tmp_path / "train_steps.csv")] == list(range(1, 9))


def test_set_dropout_reaches_attention_and_restores(tiny):
    model = copy.deepcopy(tiny[0])
    previous = set_dropout(model, 0.1)
    assert previous == {"attention_dropout": 0.0}
    assert model.config.attention_dropout == 0.1
    assert all(layer.self_attn.attention_dropout == 0.1 for layer in model.model.layers)
    # In train mode dropout makes two forwards differ; in eval mode they agree.
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    model.train()
    assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
    restore_dropout(model, previous)
    assert model.config.attention_dropout == 0.0
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_batch_must_divide_into_micro_batches():
    import pytest

    with pytest.raises(ValueError, match="multiple"):
        settings(batch_size=5, micro_batch_size=2)


def test_lean_loss_and_checkpointing_give_the_full_forward_gradients(tiny):
    """The SFT module's loss (head on target tokens only), with and without gradient checkpointing,
    has the same value and gradients as the plain full-logits loss."""
    from srl.training.sft import checkpointing, is_checkpointing

    ift = [IFTExample(prompt=p, response=r, tree_id=str(i), message_id=str(i)) for i, (p, r) in enumerate(PAIRS)]
    encoded, _ = encode_sft(tiny[1], ift, [], max_length=128)
    batch = collate_right(encoded, tiny[1].pad_token_id)
    grads = {}
    for name in ("full", "lean", "lean+checkpointing"):
        model = copy.deepcopy(tiny[0]).train()
        checkpointing(model, name.endswith("checkpointing"))
        assert is_checkpointing(model) == name.endswith("checkpointing")
        if name == "full":
            loss, _ = sft_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
        else:
            loss, _ = SFTModule(model, settings())._loss(batch)
        loss.backward()
        grads[name] = (float(loss), torch.cat([p.grad.flatten() for p in model.parameters()]))
        checkpointing(model, False)
    for name in ("lean", "lean+checkpointing"):
        assert abs(grads[name][0] - grads["full"][0]) < 1e-5
        torch.testing.assert_close(grads[name][1], grads["full"][1], rtol=1e-4, atol=1e-6)
