"""The generation engine: exact against HF generate and against itself with every optimisation off.

The model runs in float64 here so that batching, padding and the shared prefix cannot flip a token
through rounding: any difference is a bug in the engine, not noise.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from srl.generation.engine import Engine, EngineOptions, length_buckets
from srl.generation.kv_cache import ReservedLayer, common_prefix_length, forward_kwargs, kv_bytes_per_token, new_cache
from srl.generation.sample import stop_token_ids
from srl.generation.sampling import SamplingSettings
from srl.judging.templates import load_judge_template
from srl.models.chat import render_prompt

OFF = EngineOptions(prefix_cache=False, share_prefill=False, refill=False, reserve_cache=False)


@pytest.fixture(scope="module")
def tiny64(tiny):
    """The tiny model in float64 with larger random weights, so greedy output depends on the context
    (at the default init scale every prompt greedily repeats one token)."""
    model, tok = tiny
    model = copy.deepcopy(model).double().eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.3, generator=generator)
    return model, tok


def encode(tok, texts):
    return [tok(render_prompt(tok, t), add_special_tokens=False)["input_ids"] for t in texts]


def judge_prompts(tok):
    """Judge prompts: one long shared rubric, then prompts and replies of different lengths."""
    template = load_judge_template()
    pairs = [("hi", "hello"), ("What is tea?", "A drink made by steeping leaves in hot water."),
             ("Explain how a bicycle stays upright while moving, in detail.", "Gyroscopic effects and steering."),
             ("Name a colour.", "Blue."), ("Write a haiku about rain.", "Rain taps the window, soft grey song."),
             ("hi", "hello")]  # a duplicate: shares one prefill
    return encode(tok, [template.render(p, r) for p, r in pairs])


def run(model, tok, prompts, seeds, settings, options=EngineOptions(), stops=None):
    engine = Engine(model, settings, tok.pad_token_id, stops if stops is not None else stop_token_ids(tok, model), options)
    with torch.no_grad():
        return engine.run(prompts, seeds), engine


def test_common_prefix_length_by_hand():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 9], [1, 2, 3]]) == 2
    assert common_prefix_length([[5, 6], [7]]) == 0
    assert common_prefix_length([[1, 2, 3]]) == 3
    assert common_prefix_length([]) == 0


def test_greedy_equals_hf_generate_with_prefix_duplicates_and_refill(tiny64):
    model, tok = tiny64
    judge = judge_prompts(tok)
    chat = encode(tok, ["hi", "Explain how a bicycle stays upright while moving, in detail.", "What is tea?", "Count to three."])
    prompts = judge + chat
    assert len({len(p) for p in prompts}) >= 8
    # Every fifth token id stops a row, so rows end at different steps; with batch_size 2, waiting
    # prompts join rows that are still decoding.
    stops = [i for i in range(len(tok)) if i % 5 == 0]
    settings = SamplingSettings(temperature=0.0, max_new_tokens=10, batch_size=2)
    judged, engine = run(model, tok, judge, [0] * len(judge), settings, stops=stops)
    assert engine.prefix_len > 100  # the rubric was encoded once
    assert engine.shared is not None and engine.cols == 0  # and attended in place, not copied into the rows
    chatted, other = run(model, tok, chat, [0] * len(chat), settings, stops=stops)
    assert engine.joins > 0 and other.joins > 0
    lengths = set()
    for ids, (got, finished) in zip(prompts, judged + chatted):
        ref = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=10, pad_token_id=tok.pad_token_id, eos_token_id=stops)
        expected = ref[0, len(ids):].tolist()
        stop = next((i + 1 for i, t in enumerate(expected) if t in stops), len(expected))
        assert got == expected[:stop]
        assert finished == (got[-1] in stops)
        lengths.add(len(got))
    assert len(lengths) > 1


SAMPLED = SamplingSettings(temperature=1.0, top_p=0.9, max_new_tokens=12, batch_size=1)


@pytest.fixture(scope="module")
def sampled(tiny64):
    """K=3 samples per judge prompt with every optimisation off, one row at a time: the reference."""
    model, tok = tiny64
    prompts = [p for p in judge_prompts(tok) for _ in range(3)]
    seeds = list(range(100, 100 + len(prompts)))
    stops = [i for i in range(len(tok)) if i % 7 == 0]  # rows end at different steps
    out, engine = run(model, tok, prompts, seeds, SAMPLED, OFF, stops=stops)
    return prompts, seeds, stops, out, engine


@pytest.mark.parametrize("batch_size,budget,options", [(5, None, EngineOptions()), (32, None, EngineOptions()), (32, 700, EngineOptions()),
                                                       (5, None, EngineOptions(shared_attention=False))])
def test_sampling_identical_with_and_without_the_optimisations(tiny64, sampled, batch_size, budget, options):
    model, tok = tiny64
    prompts, seeds, stops, slow, reference = sampled
    settings = dataclasses.replace(SAMPLED, batch_size=batch_size, max_batch_tokens=budget)
    fast, engine = run(model, tok, prompts, seeds, settings, options, stops=stops)
    assert (engine.shared is not None) == options.shared_attention
    assert fast == slow
    assert len({len(t) for t, _ in fast}) > 1
    # The three samples of a prompt have their own seeds, so they differ.
    assert len({tuple(t) for t, _ in fast[:3]}) > 1
    if batch_size < len(prompts):
        assert engine.joins > 0
    # Work done: each distinct judge prompt prefilled once (after one shared prefix) vs every sequence in full.
    distinct = {tuple(p) for p in prompts}
    assert engine.prefill_tokens == engine.prefix_len + sum(len(p) - engine.prefix_len for p in distinct)
    assert reference.prefill_tokens == sum(len(p) for p in prompts)
    assert engine.forwards < reference.forwards


def test_length_buckets_by_hand():
    groups = [([0] * n, [i]) for i, n in enumerate([100, 90, 75, 74, 40, 30, 29, 5])]
    lengths = [[len(g[0]) for g in b] for b in length_buckets(groups, 0.75)]
    assert lengths == [[100, 90, 75], [74], [40, 30], [29], [5]]
    assert len(length_buckets(groups, 0.0)) == 1 and len(length_buckets(groups, 1.0)) == len(groups)


def test_prefill_in_length_buckets_pads_less_and_samples_the_same(tiny64, sampled):
    model, tok = tiny64
    prompts, seeds, stops, slow, _ = sampled
    settings = dataclasses.replace(SAMPLED, batch_size=32)
    one, single = run(model, tok, prompts, seeds, settings, EngineOptions(prefill_bucket=0.0), stops=stops)
    split, bucketed = run(model, tok, prompts, seeds, settings, EngineOptions(), stops=stops)
    assert split == one == slow
    assert bucketed.prefill_tokens == single.prefill_tokens  # the same real tokens ...
    assert bucketed.prefill_positions < single.prefill_positions  # ... with less padding
    assert bucketed.forwards > single.forwards  # in more prefill forwards


def test_token_budget_limits_the_running_batch(tiny64):
    model, tok = tiny64
    prompts = encode(tok, ["hi", "What is tea?", "Name a colour.", "Count to three."])
    per_row = max(len(p) for p in prompts) + 8
    engine = Engine(model, SamplingSettings(0.0, 1.0, 8, batch_size=16, max_batch_tokens=2 * per_row), tok.pad_token_id, [])
    engine.row_overhead = 0  # count context tokens only, to check the arithmetic
    seen = []
    original = engine._forward

    def spy(ids, attention, positions, cache):
        seen.append(ids.shape[0])
        return original(ids, attention, positions, cache)

    engine._forward = spy
    with torch.no_grad():
        out = engine.run(prompts, [0] * 4)
    assert max(seen) == 2  # never more than two rows at once
    assert all(len(t) == 8 for t, _ in out)  # no stop ids: every row runs to max_new_tokens


def test_kv_bytes_per_token_by_hand(tiny):
    model, _ = tiny
    # 2 (keys, values) x 2 layers x 2 kv heads x head_dim 16 x 4 bytes (float32)
    assert kv_bytes_per_token(model) == 2 * 2 * 2 * 16 * 4


def test_bad_calls_raise(tiny64):
    model, tok = tiny64
    engine = Engine(model, SamplingSettings(), tok.pad_token_id, [])
    with pytest.raises(ValueError, match="one seed per prompt"):
        engine.run([[1, 2]], [0, 1])
    with pytest.raises(ValueError, match="empty prompt"):
        engine.run([[]], [0])


def test_reserved_layer_appends_in_place_and_equals_concatenation():
    generator = torch.Generator().manual_seed(0)
    steps = [torch.randn(3, 2, n, 4, generator=generator) for n in (5, 1, 1, 1)]
    layer = ReservedLayer(reserve=2)
    buffers = []
    for i, k in enumerate(steps):
        keys, values = layer.update(k, -k)
        expected = torch.cat(steps[:i + 1], dim=2)
        assert torch.equal(keys, expected) and torch.equal(values, -expected)
        assert layer.get_seq_length() == expected.shape[2]
        buffers.append(layer._buffers[0])
    assert buffers[0] is buffers[1] is buffers[2]  # 5 + 2 reserved columns: two steps without a copy
    assert buffers[3] is not buffers[2]  # the third step outgrew the room and moved once
    # The engine replaces keys/values when rows leave (index_select): the next step appends to those rows.
    layer.keys, layer.values = layer.keys[[0, 2]], layer.values[[0, 2]]
    keys, _ = layer.update(steps[1][:2], -steps[1][:2])
    assert torch.equal(keys, torch.cat([torch.cat(steps, dim=2)[[0, 2]], steps[1][:2]], dim=2))


def test_reserved_layer_exposes_its_whole_buffers_zero_past_the_filled_part():
    layer = ReservedLayer(reserve=4)
    k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    keys, values = layer.update(k, v)
    full_k, full_v = layer.filled_buffers(keys, values)
    assert full_k.shape == (2, 3, 9, 8) and full_k.is_contiguous()
    assert torch.equal(full_k[:, :, :5], k) and torch.equal(full_v[:, :, :5], v)
    assert not full_k[:, :, 5:].any() and not full_v[:, :, 5:].any()  # masked out by attention, never garbage
    assert layer.filled_buffers(keys.clone(), values) is None  # not this layer's current view


def test_new_cache_has_reserved_layers_and_the_same_logits(tiny64):
    model, tok = tiny64
    ids = torch.tensor(encode(tok, ["What is tea?"]))
    cache = new_cache(model, reserve=8)
    assert all(isinstance(layer, ReservedLayer) for layer in cache.layers)
    arg = forward_kwargs(model)[0]
    with torch.no_grad():
        mine = model(input_ids=ids, use_cache=True, **{arg: cache})
        ref = model(input_ids=ids, use_cache=True)
        mine_cache, ref_cache = (out["cache"] if "cache" in out else out["past_key_values"] for out in (mine, ref))
        assert mine_cache is cache
        step = torch.tensor([[5]])
        a = model(input_ids=step, use_cache=True, **{arg: mine_cache}).logits
        b = model(input_ids=step, use_cache=True, **{arg: ref_cache}).logits
    assert torch.equal(a, b)
