"""LoRA, QLoRA and 8-bit bases on the tiny model (conf/peft, srl/training/adapters.py).

Only adapter weights train and the loss falls (SFT and DPO); the adapter-off reference is the base
model; a 4-bit NF4 base loads through bitsandbytes on the CPU and trains; merged weights reload as a
plain model with the same outputs; adapters kept alone reload through AdapterChainSpec.
"""

from __future__ import annotations

import copy
import functools

import lightning as L
import pytest
import torch

from srl.data.records import IFTExample
from srl.models.loading import HFModelSpec, save_model
from srl.training.adapters import AdapterChainSpec, PeftSettings, TrainingModelSpec, attach_lora, save_trained, trainable_parameters
from srl.training.dpo import DPOModule, DPOSettings, collate_pairs, encode_pair, online_reference, policy_logprobs
from srl.training.encoding import collate_right, encode_sft
from srl.training.losses import sft_loss
from srl.training.sft import SFTDataModule, SFTModule, SFTSettings

SFT_DATA = [
    ("Name a primary colour.", "Red is a primary colour."),
    ("What is two plus two?", "Two plus two is four."),
    ("Say hello in French.", "Bonjour means hello."),
    ("Give a fruit that is yellow.", "A banana is yellow."),
]
DPO_DATA = [
    ("Name a primary colour.", "Red is a primary colour.", "I like turtles a lot."),
    ("What is two plus two?", "Two plus two is four.", "Bananas are yellow."),
    ("Say hello in French.", "Bonjour means hello.", "No."),
    ("Give a fruit that is yellow.", "A banana is yellow.", "The moon is far away."),
]
LORA = dict(method="lora", r=8, alpha=16, dropout=0.0, target_modules="all-linear", compute_dtype="float32")


def fit(module, data, micro_batch_size, epochs, pad_id, collate=None, accumulate=2):
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=epochs, accumulate_grad_batches=accumulate, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    kwargs = {"collate": collate} if collate else {}
    trainer.fit(module, datamodule=SFTDataModule(data, [], micro_batch_size, pad_id, **kwargs))
    return trainer


def sft_batch(tok):
    ift = [IFTExample(prompt=p, response=r, tree_id=str(i), message_id=str(i)) for i, (p, r) in enumerate(SFT_DATA)]
    encoded, _ = encode_sft(tok, ift, [], max_length=128)
    return encoded, collate_right(encoded, tok.pad_token_id)


def batch_loss(model, batch) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        loss, _ = sft_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
    model.train(was)
    return float(loss)


def base_names(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


def base_values(model) -> dict[str, torch.Tensor]:
    """Every base weight by value. A 4-bit layer is read through what it computes, its output on the
    identity matrix (W^T + b): bitsandbytes (0.50) CPU kernels repack the uint8 storage on first use,
    so the bytes change while the layer's function does not."""
    import bitsandbytes as bnb

    values = base_names(model)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                eye = torch.eye(module.in_features, dtype=torch.float32)
                values[f"{name}.weight"] = module(eye).detach().clone()
    return values


def lora_names(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_lora_sft_trains_only_the_adapter_and_lowers_the_loss(tiny):
    model, tok = attach_lora(copy.deepcopy(tiny[0]), PeftSettings(**LORA)), tiny[1]
    trainable, total = trainable_parameters(model)
    assert 0 < trainable < total / 2
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())
    encoded, batch = sft_batch(tok)
    base_before, lora_before, loss_before = base_names(model), lora_names(model), batch_loss(model, batch)

    s = SFTSettings(optimizer=functools.partial(torch.optim.AdamW, lr=1e-2), batch_size=4, micro_batch_size=2, max_epochs=8, dropout=0.0)
    fit(SFTModule(model, s), encoded, 2, 8, tok.pad_token_id)

    assert batch_loss(model, batch) < loss_before - 0.5
    assert all(torch.equal(p, base_before[n]) for n, p in model.named_parameters() if n in base_before)
    changed = [n for n, p in model.named_parameters() if n in lora_before and not torch.equal(p, lora_before[n])]
    assert len(changed) == len(lora_before)  # every A and B moved (B starts at zero)


def test_lora_dpo_uses_the_adapter_off_reference_and_trains_only_the_adapter(tiny):
    base, tok = copy.deepcopy(tiny[0]), tiny[1]
    plain = copy.deepcopy(base)
    model = attach_lora(base, PeftSettings(**LORA))
    pairs = [encode_pair(tok, p, c, r, 128) for p, c, r in DPO_DATA]
    pairs = [p.__class__(p.chosen, p.rejected, None, None) for p in pairs]  # no stored reference: LoRA computes it
    batch = collate_pairs(pairs, tok.pad_token_id)
    assert "ref_chosen" not in batch
    base_before = base_names(model)

    s = DPOSettings(optimizer=functools.partial(torch.optim.AdamW, lr=1e-2), beta=0.1, batch_size=4, micro_batch_size=2, max_epochs=6, dropout=0.0)
    module = DPOModule(model, s)
    fit(module, pairs, 2, 6, tok.pad_token_id, collate=collate_pairs)

    # The reference is the base model: the adapter-off log-probs equal the untouched copy's.
    plain.eval()
    with torch.no_grad():
        expected = policy_logprobs(plain, batch)
    reference = online_reference(model, batch)
    torch.testing.assert_close(reference[0], expected[0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(reference[1], expected[1], atol=1e-4, rtol=1e-5)
    model.eval()
    with torch.no_grad():
        chosen, rejected = policy_logprobs(model, batch)
    # Trained: the policy now prefers chosen over rejected more than the reference does.
    margin = (chosen - reference[0]) - (rejected - reference[1])
    assert float(margin.mean()) > 1.0
    assert all(torch.equal(p, base_before[n]) for n, p in model.named_parameters() if n in base_before)


def test_online_reference_refuses_a_plain_model(tiny):
    model, tok = tiny
    pairs = [encode_pair(tok, p, c, r, 128) for p, c, r in DPO_DATA[:2]]
    with pytest.raises(ValueError, match="LoRA"):
        online_reference(model, collate_pairs(pairs, tok.pad_token_id))


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    save_model(copy.deepcopy(tiny[0]), tiny[1], folder)
    return folder


def test_qlora_loads_4bit_nf4_on_cpu_and_takes_a_training_step(tiny_folder):
    import bitsandbytes as bnb

    peft = PeftSettings(**{**LORA, "quantization": "4bit"})
    model, tok = TrainingModelSpec(HFModelSpec(str(tiny_folder)), peft).load()
    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4 and all(m.weight.quant_type == "nf4" for m in linear4)
    assert all(m.weight.dtype == torch.uint8 for m in linear4)  # two 4-bit values a byte
    encoded, batch = sft_batch(tok)
    base_before, lora_before, loss_before = base_values(model), lora_names(model), batch_loss(model, batch)

    s = SFTSettings(optimizer=functools.partial(torch.optim.AdamW, lr=1e-2), batch_size=4, micro_batch_size=4, max_epochs=4, dropout=0.0)
    trainer = fit(SFTModule(model, s), encoded, 4, 4, tok.pad_token_id, accumulate=1)

    assert trainer.global_step == 4
    assert batch_loss(model, batch) < loss_before
    base_after = base_values(model)
    assert base_after.keys() == base_before.keys()
    # The repacked CPU kernel computes W^T within 4e-4 of the first one (float rounding, far below one
    # NF4 step of these weights, ~5e-3); 4 AdamW steps at lr 1e-2 would move a trained weight by ~4e-2.
    for name, value in base_before.items():
        torch.testing.assert_close(base_after[name], value, atol=1e-3, rtol=0, msg=f"base weight {name} changed")
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if n in lora_before)


def test_8bit_base_loads_through_bitsandbytes(tiny_folder):
    import bitsandbytes as bnb

    model, tok = TrainingModelSpec(HFModelSpec(str(tiny_folder)), PeftSettings(**{**LORA, "quantization": "8bit"})).load()
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())
    _, batch = sft_batch(tok)
    assert torch.isfinite(torch.tensor(batch_loss(model, batch)))


def trained_adapter(tiny):
    model = attach_lora(copy.deepcopy(tiny[0]), PeftSettings(**LORA))
    with torch.no_grad():  # a non-zero adapter: B starts at zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return model


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_merged_weights_reload_as_a_plain_model_with_the_same_outputs(tiny, tmp_path):
    model, tok = trained_adapter(tiny), tiny[1]
    _, batch = sft_batch(tok)
    expected = logits(model, batch)
    assert not torch.allclose(expected, logits(copy.deepcopy(tiny[0]), batch), atol=1e-3)  # the adapter matters

    folder = save_trained(model, tok, None, PeftSettings(**LORA), tmp_path / "m1" / "model")
    assert (folder / "config.json").is_file() and not (folder / "adapter_config.json").exists()
    reloaded, _ = HFModelSpec(str(folder)).load()
    assert not any("lora_" in n for n, _ in reloaded.named_parameters())
    torch.testing.assert_close(logits(reloaded, batch), expected, atol=1e-4, rtol=1e-4)


def test_qlora_merge_reloads_the_base_in_full_precision(tiny, tiny_folder, tmp_path):
    tok = tiny[1]
    peft = PeftSettings(**{**LORA, "quantization": "4bit"})
    base = HFModelSpec(str(tiny_folder))
    model, _ = TrainingModelSpec(base, peft).load()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)

    folder = save_trained(model, tok, base, peft, tmp_path / "m1" / "model")
    reloaded, _ = HFModelSpec(str(folder)).load()
    # The same adapter merged into the full-precision base (not into 4-bit weights).
    expected_model = AdapterChainSpec(base, [str(adapter)]).load()[0]
    _, batch = sft_batch(tok)
    torch.testing.assert_close(logits(reloaded, batch), logits(expected_model, batch), atol=1e-4, rtol=1e-4)
    assert reloaded.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32


def test_adapter_only_save_reloads_through_the_chain(tiny, tiny_folder, tmp_path):
    model, tok = trained_adapter(tiny), tiny[1]
    _, batch = sft_batch(tok)
    expected = logits(model, batch)
    peft = PeftSettings(**{**LORA, "save": "adapter"})
    folder = save_trained(model, tok, None, peft, tmp_path / "m1" / "adapter")
    assert (folder / "adapter_config.json").is_file() and not (folder / "config.json").exists()
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < sum(f.stat().st_size for f in tiny_folder.iterdir())
    chained, _ = AdapterChainSpec(HFModelSpec(str(tiny_folder)), [str(folder)]).load()
    torch.testing.assert_close(logits(chained, batch), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bad, match", [
    (dict(quantization="4bit"), "needs an adapter"),
    (dict(method="lora", quantization="2bit"), "quantization"),
    (dict(method="lora", save="both"), "save"),
    (dict(save="adapter"), "needs peft.method=lora"),
    (dict(method="lora", r=0), "r >= 1"),
])
def test_peft_settings_reject_bad_combinations(bad, match):
    with pytest.raises(ValueError, match=match):
        PeftSettings(**bad)
