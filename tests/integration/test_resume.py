"""A training stage stopped part-way resumes from its checkpoint and ends with the weights, and the
per-step log, of an uninterrupted run (SFT with dropout, so the RNG state matters, and DPO).

A crash is an exception raised after a given optimizer step, past the last checkpoint, so the rerun
redoes the steps after it; checkpoints are every 2 steps and at each epoch's end.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import lightning as L
import pytest
import torch

from srl.core.rundir import StageConfigMismatch, Stamp
from srl.data.records import IFTExample
from srl.training.dpo import DPOModule, DPOSettings, collate_pairs, encode_pair
from srl.training.encoding import encode_sft
from srl.training.schedules import warmup_cosine
from srl.training.sft import SFTDataModule, SFTModule, SFTSettings
from srl.training.steps import StageProgress, read_steps, summarize

WORDS = "red green blue sea sky tree rain sun moon star leaf rock".split()
ADAMW = functools.partial(torch.optim.AdamW, lr=3e-3)
COSINE = functools.partial(warmup_cosine, final_lr=3e-4)


class Crash(L.Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.at_step:
            raise RuntimeError("killed")


def sft_case(tok):
    ift = [IFTExample(prompt=f"Say {w}.", response=f"{w} " * (1 + i % 5), tree_id=str(i), message_id=str(i)) for i, w in enumerate(WORDS)]
    data, _ = encode_sft(tok, ift, [], max_length=64)
    s = SFTSettings(optimizer=ADAMW, scheduler=COSINE, batch_size=4, micro_batch_size=2, max_epochs=2, dropout=0.1)
    return data, None, lambda model: SFTModule(model, s)


def dpo_case(tok):
    pairs = [dataclasses.replace(encode_pair(tok, f"Say {w}.", w, f"not {w} " * (1 + i % 3), 64), ref_chosen=-5.0 - i, ref_rejected=-9.0 - i)
             for i, w in enumerate(WORDS)]
    s = DPOSettings(optimizer=ADAMW, scheduler=COSINE, batch_size=4, micro_batch_size=2, max_epochs=2, dropout=0.1)
    return pairs, collate_pairs, lambda model: DPOModule(model, s)


def train(tiny, case, folder, crash_at=None):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    data, collate, make = case(tok)
    module = make(model)
    module.model.config.attention_dropout = 0.1
    for m in module.model.modules():
        if hasattr(m, "attention_dropout") and isinstance(m.attention_dropout, float):
            m.attention_dropout = 0.1  # dropout draws random numbers: a resume must restore the RNG
    L.seed_everything(0, verbose=False)
    progress = StageProgress(folder, "m1/sft", every_n_steps=2, stamp=Stamp("m1", "cfg", {"sft.lr": 1e-5}))
    callbacks = ([Crash(crash_at)] if crash_at else []) + [progress]  # the crash comes before step crash_at is logged
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    kwargs = {"collate": collate} if collate else {}
    ckpt = progress.resume_path()
    trainer.fit(module, datamodule=SFTDataModule(data, [], 2, tok.pad_token_id, seed=0, group_by_length=True, **kwargs),
                ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    return model, progress, trainer


@pytest.mark.parametrize("case", [sft_case, dpo_case], ids=["sft", "dpo"])
@pytest.mark.parametrize(("crash_at", "resumed_at"), [(5, 4), (4, 3), (3, 2)], ids=["mid_epoch", "after_epoch_end", "in_last_batch"])
def test_a_stopped_stage_resumes_to_the_uninterrupted_weights(tiny, tmp_path, case, crash_at, resumed_at):
    reference, ref_progress, ref_trainer = train(tiny, case, tmp_path / "a")
    assert ref_trainer.global_step == 6  # 12 items, micro 2, accumulate 2: 3 steps an epoch, 2 epochs

    with pytest.raises(RuntimeError, match="killed"):
        train(tiny, case, tmp_path / "b", crash_at=crash_at)
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()
    assert [r["step"] for r in read_steps(tmp_path / "b" / "train_steps.csv")] == list(range(1, crash_at))
    resumed, progress, trainer = train(tiny, case, tmp_path / "b")

    assert progress.start_step == resumed_at  # the last checkpoint before the crash (every 2 steps, epoch ends)
    assert trainer.global_step == 6
    changed = [n for n, p in tiny[0].named_parameters() if not torch.equal(p, dict(reference.named_parameters())[n])]
    assert changed  # the stage trained
    for (name, p), (_, q) in zip(reference.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), f"{name} differs from the uninterrupted run"
    assert progress.rows == ref_progress.rows  # the per-step log too
    assert read_steps(tmp_path / "b" / "train_steps.csv") == ref_progress.rows


def test_a_checkpoint_of_another_config_is_refused_and_kept(tiny, tmp_path):
    with pytest.raises(RuntimeError):
        train(tiny, sft_case, tmp_path, crash_at=5)
    other = StageProgress(tmp_path, "m1/sft", every_n_steps=2, stamp=Stamp("m1", "another", {"sft.lr": 2e-5}))
    with pytest.raises(StageConfigMismatch, match=r"training checkpoint .*last\.ckpt.*sft\.lr: 1e-05 -> 2e-05"):
        other.resume_path()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()  # nothing deleted


def test_stage_statistics_are_over_all_steps():
    rows = [{"step": 1.0, "epoch": 0.0, "loss": 0.7, "target_tokens": 10.0}, {"step": 2.0, "epoch": 0.0, "loss": 0.5, "target_tokens": 12.0},
            {"step": 3.0, "epoch": 1.0, "loss": 0.3, "target_tokens": 8.0}]
    out = summarize(rows, "m2/dpo")
    assert out["m2/dpo/loss_mean"] == pytest.approx(0.5)
    assert (out["m2/dpo/loss_first"], out["m2/dpo/loss_last"]) == (0.7, 0.3)
    assert out["m2/dpo/target_tokens"] == 30.0
    assert "m2/dpo/loss" not in out  # no name that could be read as one micro-batch's value
