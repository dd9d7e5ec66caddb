"""The sampler: nucleus filter by hand, greedy equality with HF generate, per-item seeds."""

from __future__ import annotations

import math

import torch

from srl.generation.sample import generate_ids, sample_chat, stop_token_ids
from srl.generation.sampling import SamplingSettings, top_p_filter
from srl.models.chat import render_prompt


def test_top_p_filter_by_hand():
    # probs 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps 0.5 (mass before 0) and 0.3 (mass before 0.5 < 0.7);
    # 0.15 has 0.8 before it -> dropped.
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]]))
    kept = top_p_filter(logits, 0.7)
    assert torch.isfinite(kept).tolist() == [[False, True, False, True]]
    # top_p 0.5 keeps only the argmax; 1.0 keeps all.
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[False, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()


def encode(tok, texts):
    return [tok(render_prompt(tok, t), add_special_tokens=False)["input_ids"] for t in texts]


PROMPTS = ["hi", "Explain how a bicycle stays upright while moving, in detail.", "What is tea?"]


def test_greedy_equals_hf_generate_with_mixed_lengths(tiny):
    model, tok = tiny
    model.eval()
    prompts = encode(tok, PROMPTS)
    assert len({len(p) for p in prompts}) == 3
    settings = SamplingSettings(temperature=0.0, max_new_tokens=12)
    ours = generate_ids(model, prompts, [0, 0, 0], settings, tok.pad_token_id, stop_token_ids(tok, model))
    for ids, (got, _) in zip(prompts, ours):
        ref = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id)
        expected = ref[0, len(ids):].tolist()
        stop = next((i + 1 for i, t in enumerate(expected) if t == tok.eos_token_id), len(expected))
        assert got == expected[:stop]
    model.train()


def test_sampling_depends_on_item_seed_not_batch(tiny):
    model, tok = tiny
    settings = SamplingSettings(temperature=1.0, top_p=0.95, max_new_tokens=10, batch_size=8)
    together = sample_chat(model, tok, PROMPTS, [11, 22, 33], settings)
    alone = sample_chat(model, tok, PROMPTS[1:2], [22], settings)
    assert together[1] == alone[0]
    other_seed = sample_chat(model, tok, PROMPTS[1:2], [23], settings)
    assert other_seed[0].text != alone[0].text
    assert model.training  # restored


def test_sampling_follows_the_distribution():
    # A fixed 2-token distribution p = (0.25, 0.75): 2,000 seeded draws land near 75%.
    from srl.generation.sampling import sample_next

    logits = torch.log(torch.tensor([[0.25, 0.75]])).repeat(2000, 1)
    gens = [torch.Generator().manual_seed(i) for i in range(2000)]
    draws = sample_next(logits, SamplingSettings(temperature=1.0, top_p=1.0), gens)
    share = draws.float().mean().item()
    assert abs(share - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 2000)


def test_nucleus_equals_the_full_sort_filter():
    from srl.generation.sampling import nucleus

    torch.manual_seed(0)
    # Peaked rows close their nucleus inside the top 8 candidates; flat rows need the full sort.
    logits = torch.cat([torch.randn(3, 50) * 6, torch.randn(3, 50) * 0.1])
    rows = nucleus(logits, 0.9, candidates=8)
    reference = torch.softmax(top_p_filter(logits, 0.9), dim=-1)
    for r, (ids, p) in enumerate(rows):
        expected = torch.nonzero(reference[r]).flatten()
        assert sorted(ids.tolist()) == expected.tolist()
        torch.testing.assert_close(p, reference[r][ids])
        assert (p[:-1] >= p[1:]).all()  # most likely first
    assert max(len(ids) for ids, _ in rows[:3]) <= 8 < min(len(ids) for ids, _ in rows[3:])


def test_top_p_sampling_follows_the_nucleus_distribution():
    from srl.generation.sampling import sample_next

    # probs 0.5, 0.3, 0.15, 0.05 with top_p 0.7: nucleus {0.5, 0.3} renormalised to 0.625 / 0.375.
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]])).repeat(2000, 1)
    gens = [torch.Generator().manual_seed(i) for i in range(2000)]
    draws = sample_next(logits, SamplingSettings(temperature=1.0, top_p=0.7), gens)
    assert set(draws.tolist()) == {1, 3}
    share = (draws == 1).float().mean().item()
    assert abs(share - 0.625) < 4 * math.sqrt(0.625 * 0.375 / 2000)
