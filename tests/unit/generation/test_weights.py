"""The engine's generation copy (conf/backend: weights): which dtype, converted in place for sampling,
reloaded as configured for training and log-probs."""

from __future__ import annotations

import copy

import pytest
import torch

from srl.generation import weights as weights_mod
from srl.generation.slot import ModelSlot
from srl.generation.weights import EngineSettings, cpu_has_native_bf16, generation_dtype


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    with_bf16 = tmp_path / "a"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    without = tmp_path / "b"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_has_native_bf16.__wrapped__(str(with_bf16)) is True
    assert cpu_has_native_bf16.__wrapped__(str(without)) is False
    assert cpu_has_native_bf16.__wrapped__(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("native", [True, False])
def test_generation_dtype_by_setting(tiny, monkeypatch, native):
    model, _ = tiny
    monkeypatch.setattr(weights_mod, "cpu_has_native_bf16", lambda: native)
    assert generation_dtype("auto", model) == (torch.bfloat16 if native else None)
    assert generation_dtype("as_loaded", model) is None
    assert generation_dtype("float32", model) is None  # already float32
    assert generation_dtype("bfloat16", model) == torch.bfloat16
    assert generation_dtype("float16", model) == torch.float16
    assert generation_dtype("auto", copy.deepcopy(model).double()) is None  # auto converts float32 models only
    with pytest.raises(ValueError, match="backend.weights must be one of"):
        EngineSettings(weights="int4")


class Spec:
    """Loads a fresh copy of the tiny model, counting loads."""

    def __init__(self, tiny):
        self.tiny, self.loads = tiny, 0

    def load(self):
        self.loads += 1
        return copy.deepcopy(self.tiny[0]), self.tiny[1]


def test_slot_converts_for_generation_and_reloads_for_training(tiny):
    spec = Spec(tiny)
    slot = ModelSlot(EngineSettings(weights="bfloat16"), "cpu")
    model, _ = slot.get("m1", spec)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    again, _ = slot.get("m1", spec)
    assert again is model and spec.loads == 1  # consecutive generation stages share the converted model
    exact, _ = slot.get("m1", spec, train=True)
    assert spec.loads == 2 and {p.dtype for p in exact.parameters()} == {torch.float32}
    for mine, original in zip(exact.parameters(), tiny[0].parameters()):
        assert torch.equal(mine, original)  # as configured, not a round trip through bfloat16
    same, _ = slot.get("m1", spec, train=True)
    assert same is exact and spec.loads == 2  # not converted: nothing to reload


def test_slot_without_engine_settings_generates_as_loaded(tiny):
    spec = Spec(tiny)
    model, _ = ModelSlot(None, "cpu").get("m1", spec)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_packed_linears_give_the_same_logits_and_tokens(tiny):
    """A CPU bfloat16 copy's linear layers are packed for oneDNN: same logits, same greedy tokens, fewer plain layers."""
    from srl.generation.engine import Engine
    from srl.generation.sampling import SamplingSettings
    from srl.generation.weights import PackedLinear, pack_linears

    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    model, tok = tiny
    plain = copy.deepcopy(model).to(torch.bfloat16).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger weights than the init, so that tokens depend on the context
        for param in plain.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    packed = copy.deepcopy(plain)
    linears = sum(type(m) is torch.nn.Linear for m in plain.modules())
    assert pack_linears(packed) == linears > 0
    assert not any(type(m) is torch.nn.Linear for m in packed.modules())
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == linears
    ids = torch.tensor([[5, 17, 3, 99, 42, 8, 61, 7], [9, 9, 21, 4, 4, 30, 2, 11]])
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, packed(input_ids=ids).logits)
    settings = SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=10, batch_size=4)
    prompts = [[5, 17, 3, 99], [9, 21, 4], [42, 8, 61, 7, 2]]
    with torch.no_grad():
        a = Engine(plain, settings, tok.pad_token_id, []).run(prompts, [0, 1, 2])
        b = Engine(packed, settings, tok.pad_token_id, []).run(prompts, [0, 1, 2])
    assert a == b


def test_slot_packs_the_bfloat16_copy_and_reloads_plain_for_training(tiny):
    from srl.generation.weights import PackedLinear

    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    spec = Spec(tiny)
    slot = ModelSlot(EngineSettings(weights="bfloat16"), "cpu")
    model, _ = slot.get("m1", spec)
    assert any(isinstance(m, PackedLinear) for m in model.modules())
    exact, _ = slot.get("m1", spec, train=True)
    assert not any(isinstance(m, PackedLinear) for m in exact.modules())
    assert exact.get_output_embeddings().weight.dtype == torch.float32
