"""Log-probs through the fast path (output head on target tokens only) equal the full forward's for
families whose forward transforms the logits after the head: Granite (logits_scaling), Gemma 2
(final logit soft-capping), and a model with a transform srl does not know by name."""

from __future__ import annotations

import pytest
import torch

from srl.training.encoding import IGNORE_INDEX
from srl.training.losses import head_is_plain, model_logprobs, token_logprobs


def tiny(family: str):
    import transformers

    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    if family == "granite":
        config = transformers.GraniteConfig(**common, logits_scaling=8.0)
        model = transformers.GraniteForCausalLM(config)
    elif family == "gemma2":
        config = transformers.Gemma2Config(**common, head_dim=8, final_logit_softcapping=0.5)
        model = transformers.Gemma2ForCausalLM(config)
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.normal_(0, 0.5)  # large weights: large logits, where scaling and capping matter
    return model.eval()


def batch():
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def full(model, b):
    with torch.no_grad():
        logprobs, mask = token_logprobs(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])
    return logprobs[mask]


@pytest.mark.parametrize("family", ["granite", "gemma2"])
def test_transformed_heads_take_the_full_forward(family):
    model, b = tiny(family), batch()
    with torch.no_grad():
        values, _ = model_logprobs(model, b)
    torch.testing.assert_close(values, full(model, b), atol=1e-5, rtol=1e-5)
    assert not head_is_plain(model, b)


def test_a_plain_llama_head_takes_the_fast_path_and_agrees():
    model, b = tiny("llama"), batch()
    assert head_is_plain(model, b)
    with torch.no_grad():
        values, _ = model_logprobs(model, b)
    torch.testing.assert_close(values, full(model, b), atol=1e-5, rtol=1e-5)


def test_an_unknown_logit_transform_is_found_by_the_check():
    model, b = tiny("llama"), batch()
    forward = model.forward

    def scaled(*args, **kwargs):  # a family that scales logits in forward under a name srl does not know
        out = forward(*args, **kwargs)
        out.logits = out.logits * 3.0
        return out

    model.forward = scaled
    with torch.no_grad():
        values, _ = model_logprobs(model, b)
    torch.testing.assert_close(values, full(model, b), atol=1e-5, rtol=1e-5)
