"""The vLLM backend against a fake ``vllm`` module (no vLLM or GPU needed), and one GPU check against the HF engine."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from srl.generation.sampling import SamplingSettings
from srl.generation.vllm import INSTALL_HINT, NO_CUDA, VLLMGenerator, VLLMSettings, require_vllm

EOS, NEWLINE = 2, 7


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.__dict__.update(kwargs)


def completion(token_ids, finish_reason, stop_reason=None):
    out = types.SimpleNamespace(token_ids=list(token_ids), finish_reason=finish_reason, stop_reason=stop_reason)
    return types.SimpleNamespace(request_id="0", outputs=[out])


class FakeLLM:
    """Records its constructor kwargs and every generate call; answers with ``respond(prompt ids, params)``."""

    instances: list[FakeLLM] = []
    respond = staticmethod(lambda ids, params: ([ids[-1] + 1, EOS], "stop", None))

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls = []
        FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        self.calls.append({"prompts": prompts, "params": sampling_params, "use_tqdm": use_tqdm})
        return [completion(*FakeLLM.respond(p["prompt_token_ids"], sp)) for p, sp in zip(prompts, sampling_params)]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(FakeLLM, "instances", [])
    return module


def test_settings_map_to_llm_kwargs(fake_vllm):
    settings = VLLMSettings(tensor_parallel_size=2, gpu_memory_utilization=0.5, enable_prefix_caching=False,
                            max_model_len=1024, dtype="bfloat16", enforce_eager=True, seed=7)
    gen = VLLMGenerator("/models/m1", settings)
    assert gen.name == "vllm" and gen.model_path == "/models/m1"
    assert FakeLLM.instances[-1].kwargs == {
        "model": "/models/m1", "tokenizer": "/models/m1", "tensor_parallel_size": 2, "gpu_memory_utilization": 0.5,
        "enable_prefix_caching": False, "max_model_len": 1024, "dtype": "bfloat16", "enforce_eager": True, "seed": 7,
    }
    defaults = VLLMGenerator("m", VLLMSettings())
    assert FakeLLM.instances[-1].kwargs["enable_prefix_caching"] is True
    assert FakeLLM.instances[-1].kwargs["gpu_memory_utilization"] == 0.85
    defaults.close()
    assert defaults.llm is None


def test_generation_config_gives_stop_ids(fake_vllm, tmp_path, tiny_tokenizer):
    from transformers import GenerationConfig

    from srl.generation.sample import stop_token_ids

    assert VLLMGenerator("no/such/folder", VLLMSettings()).generation_config is None
    GenerationConfig(eos_token_id=[tiny_tokenizer.eos_token_id, 5]).save_pretrained(tmp_path)
    gen = VLLMGenerator(str(tmp_path), VLLMSettings())
    assert stop_token_ids(tiny_tokenizer, gen) == sorted({tiny_tokenizer.eos_token_id, 5})


def test_sampling_params_per_row(fake_vllm):
    gen = VLLMGenerator("m", VLLMSettings())
    prompts = [[1, 10, 11], [1, 20], [1, 30, 31, 32]]
    gen.generate_ids(prompts, [101, 202, 303], SamplingSettings(temperature=0.7, top_p=0.9, max_new_tokens=5), 0, [EOS, NEWLINE])
    call = gen.llm.calls[-1]
    assert call["use_tqdm"] is False
    assert call["prompts"] == [{"prompt_token_ids": p} for p in prompts]
    params = call["params"]
    assert [p.seed for p in params] == [101, 202, 303]
    for p in params:
        assert p.kwargs == {
            "n": 1, "temperature": 0.7, "top_p": 0.9, "max_tokens": 5, "seed": p.seed, "stop_token_ids": [EOS, NEWLINE],
            "ignore_eos": True, "skip_special_tokens": False, "detokenize": False,
        }
    assert len({id(p) for p in params}) == 3  # one object per row, not one shared


def test_greedy_maps_to_temperature_zero(fake_vllm):
    gen = VLLMGenerator("m", VLLMSettings())
    for temperature in (0.0, -1.0):
        gen.generate_ids([[1, 2, 3]], [5], SamplingSettings(temperature=temperature, top_p=0.9, max_new_tokens=4), 0, [EOS])
        (p,) = gen.llm.calls[-1]["params"]
        assert p.temperature == 0.0 and p.top_p == 1.0 and p.seed == 5
    gen.generate_ids([[1]], [5], SamplingSettings(temperature=1.0, top_p=1.5, max_new_tokens=4), 0, [EOS])
    assert gen.llm.calls[-1]["params"][0].top_p == 1.0  # srl's "no nucleus" (>= 1) clamped to vLLM's range


def test_finish_reasons_and_stop_tokens(fake_vllm, monkeypatch):
    answers = {
        10: ([40, 41, EOS], "stop", None),  # stop token kept in token_ids (vLLM v1)
        11: ([42, 43], "stop", NEWLINE),  # stop token left out, stop_reason names it
        12: ([44], "stop", None),  # left out and unnamed: the first stop id
        13: ([45, 46, 47, 48], "length", None),  # cut at max_new_tokens
        14: ([49, 50, 51, 52, 53, 54], "length", None),  # longer than asked: trimmed
        15: ([EOS], "stop", EOS),
    }
    monkeypatch.setattr(FakeLLM, "respond", staticmethod(lambda ids, params: answers[ids[-1]]))
    gen = VLLMGenerator("m", VLLMSettings())
    results = gen.generate_ids([[1, k] for k in answers], list(range(len(answers))),
                               SamplingSettings(temperature=0.0, max_new_tokens=4), 0, [EOS, NEWLINE])
    assert results == [
        ([40, 41, EOS], True),
        ([42, 43, NEWLINE], True),
        ([44, EOS], True),
        ([45, 46, 47, 48], False),
        ([49, 50, 51, 52], False),
        ([EOS], True),
    ]
    for ids, finished in results:
        assert finished == (ids[-1] in (EOS, NEWLINE))
        assert len(ids) <= 4 or finished


def test_unexpected_finish_reason_raises(fake_vllm, monkeypatch):
    monkeypatch.setattr(FakeLLM, "respond", staticmethod(lambda ids, params: ([1], "abort", None)))
    gen = VLLMGenerator("m", VLLMSettings())
    with pytest.raises(RuntimeError, match="abort"):
        gen.generate_ids([[1]], [0], SamplingSettings(max_new_tokens=4), 0, [EOS])


def test_results_keep_input_order(fake_vllm, monkeypatch):
    # Each row answers with its own prompt's last id and its seed, so a shuffle would show.
    monkeypatch.setattr(FakeLLM, "respond", staticmethod(lambda ids, params: ([ids[-1], params.seed], "length", None)))
    gen = VLLMGenerator("m", VLLMSettings())
    prompts = [[1, 50 + i] for i in range(6)]
    seeds = [900 + i for i in range(6)]
    results = gen.generate_ids(prompts, seeds, SamplingSettings(max_new_tokens=2), 0, [EOS])
    assert results == [([50 + i, 900 + i], False) for i in range(6)]


def test_seed_count_and_empty_batch(fake_vllm):
    gen = VLLMGenerator("m", VLLMSettings())
    with pytest.raises(ValueError, match="one seed per prompt"):
        gen.generate_ids([[1], [2]], [0], SamplingSettings(), 0, [EOS])
    assert gen.generate_ids([], [], SamplingSettings(), 0, [EOS]) == []
    assert gen.llm.calls == []


def test_require_vllm_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail as if it were not installed
    with pytest.raises(ModuleNotFoundError, match=r'pip install "srl\[vllm\]"') as info:
        require_vllm()
    assert str(info.value) == INSTALL_HINT
    with pytest.raises(ModuleNotFoundError, match="srl\\[vllm\\]"):
        VLLMGenerator("m", VLLMSettings())


def test_require_vllm_needs_cuda(fake_vllm, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU; use backend=hf") as info:
        require_vllm()
    assert str(info.value) == NO_CUDA
    assert require_vllm.__module__ == "srl.generation.vllm"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert require_vllm() is fake_vllm


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"tensor_parallel_size": 0}, "backend.tensor_parallel_size"),
        ({"tensor_parallel_size": 1.5}, "backend.tensor_parallel_size"),
        ({"gpu_memory_utilization": 0.0}, "backend.gpu_memory_utilization"),
        ({"gpu_memory_utilization": 1.2}, "backend.gpu_memory_utilization"),
        ({"max_model_len": 0}, "backend.max_model_len"),
    ],
)
def test_settings_reject_bad_values(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        VLLMSettings(**kwargs)


def test_settings_accept_edges():
    assert VLLMSettings(gpu_memory_utilization=1.0, tensor_parallel_size=4).gpu_memory_utilization == 1.0


def test_module_imports_without_vllm(monkeypatch):
    import importlib.util

    import srl.generation.vllm as backend

    monkeypatch.setitem(sys.modules, "vllm", None)  # any `import vllm` at module level would fail
    spec = importlib.util.spec_from_file_location("srl_vllm_backend_copy", backend.__file__)
    copy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, copy)  # dataclasses look their module up there
    spec.loader.exec_module(copy)
    assert copy.VLLMSettings().enable_prefix_caching is True


GPU_PROMPTS = [
    "How do I cook rice?", "Write a short poem about the sea.", "What is 2+2?", "Explain what DNS does.",
    "Name three colors.", "Translate hello to French.", "Give me a simple bread recipe.", "Why is the sky blue?",
]


def varied_tiny_model():
    """A tiny Llama whose greedy replies vary (the default init repeats one token): weights ~ N(0, 0.3)."""
    from srl.training.tiny import TinyModelSpec

    # Two heads of 32: flash-attention kernels do not take a head size of 16 (hidden 64 / 4 heads).
    model, tok = TinyModelSpec(hidden_size=64, num_heads=2, num_kv_heads=1).load()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval(), tok


@pytest.mark.gpu
def test_vllm_greedy_matches_hf_engine(tmp_path):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from srl.generation.sample import generate_ids, sample_chat, stop_token_ids
    from srl.models.chat import render_prompt
    from srl.models.loading import save_model

    model, tok = varied_tiny_model()
    folder = save_model(model, tok, tmp_path / "m")
    model = model.cuda()
    settings = SamplingSettings(temperature=0.0, max_new_tokens=16)
    seeds = list(range(len(GPU_PROMPTS)))
    encoded = [tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in GPU_PROMPTS]
    eos = stop_token_ids(tok, model)
    # This random model never says EOS; the 5th token of three rows becomes an extra stop id so
    # that some rows finish on a stop token and others run to max_new_tokens.
    with torch.no_grad():
        probe = generate_ids(model, encoded, seeds, settings, tok.pad_token_id, eos)
    extra = sorted({ids[4] for ids, _ in probe[:3]})
    stops = sorted(set(eos) | set(extra))
    hf = sample_chat(model, tok, GPU_PROMPTS, seeds, settings, extra_stop_ids=extra)
    with torch.no_grad():
        hf_ids = generate_ids(model, encoded, seeds, settings, tok.pad_token_id, stops)
    assert [g.num_tokens for g in hf] == [len(ids) for ids, _ in hf_ids]  # sample_chat runs this same engine
    assert [g.finished for g in hf] == [f for _, f in hf_ids]
    del model
    torch.cuda.empty_cache()

    gen = VLLMGenerator(str(folder), VLLMSettings(gpu_memory_utilization=0.3, max_model_len=512, dtype="float16", enforce_eager=True))
    try:
        ours = gen.generate_ids(encoded, seeds, settings, tok.pad_token_id, stops)
    finally:
        gen.close()
    assert len(ours) == len(hf_ids) == len(GPU_PROMPTS)
    for results in (ours, hf_ids):
        for ids, finished in results:
            assert 1 <= len(ids) <= settings.max_new_tokens
            assert finished == (ids[-1] in stops)
            assert finished or len(ids) == settings.max_new_tokens
        assert any(f for _, f in results) and not all(f for _, f in results)
    # float16 (vLLM) against float32 (HF): the first greedy token must agree on nearly every row and
    # whole replies on most; a late argmax may flip on a near tie.
    first = sum(a[0] == b[0] for (a, _), (b, _) in zip(ours, hf_ids))
    whole = sum(a == b for a, b in zip(ours, hf_ids))
    assert first >= len(GPU_PROMPTS) - 1, (ours, hf_ids)
    assert whole >= len(GPU_PROMPTS) // 2, (ours, hf_ids)
