"""Score-first judging: token lookup, expected value by hand, and the loop's judge stage in that mode."""

from __future__ import annotations

import math

import pytest
import torch

from srl.generation.sampling import SamplingSettings
from srl.judging.score_first import ScoreReader, expected_scores, score_first, score_reader
from srl.judging.templates import load_judge_template
from srl.models.chat import render_prompt


def test_expected_score_by_hand():
    reader = ScoreReader("Score:", (), (0, 1, 2), (5, 6, 7))
    logits = torch.full((2, 10), -1e9)
    # Row 0: score tokens have probabilities 0.1, 0.2, 0.2 and token 9 has 0.5 -> mass 0.5,
    # renormalised 0.2, 0.4, 0.4 -> expected 0*0.2 + 1*0.4 + 2*0.4 = 1.2.
    logits[0, [5, 6, 7, 9]] = torch.log(torch.tensor([0.1, 0.2, 0.2, 0.5]))
    # Row 1: all mass on "2".
    logits[1, 7] = 0.0
    first, second = expected_scores(logits, reader)
    assert first.score == pytest.approx(1.2)
    assert first.mass == pytest.approx(0.5)
    assert first.probs == pytest.approx((0.2, 0.4, 0.4))
    assert second.score == pytest.approx(2.0) and second.mass == pytest.approx(1.0)
    assert "expected 1.200" in first.describe(reader.values)


def test_score_reader_finds_one_token_per_value(tiny_tokenizer):
    tok = tiny_tokenizer
    rendered = render_prompt(tok, "Rate this reply.")
    reader = score_reader(tok, rendered, 0, 5)
    assert reader.values == (0, 1, 2, 3, 4, 5)
    for v, tid in zip(reader.values, reader.value_ids):
        full = tok(rendered + "Score:" + f" {v}", add_special_tokens=False)["input_ids"]
        assert full[-1] == tid
        assert full[-1 - len(reader.lead_gap):-1] == list(reader.lead_gap)


def test_score_reader_rejects_multi_token_scores(tiny_tokenizer):
    with pytest.raises(ValueError, match="one token"):
        score_reader(tiny_tokenizer, render_prompt(tiny_tokenizer, "x"), 0, 1000)


def test_score_first_matches_a_manual_forward(tiny):
    model, tok = tiny
    template = load_judge_template()
    texts = [template.render("What is tea?", "A drink."), template.render("hi", "Hello! How can I help?")]
    got, reader = score_first(model, tok, texts, template, SamplingSettings(batch_size=2))
    for text, e in zip(texts, got):
        ids = tok(render_prompt(tok, text) + "Score:", add_special_tokens=False)["input_ids"] + list(reader.lead_gap)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        p = torch.softmax(logits.double(), -1)[list(reader.value_ids)]
        assert e.mass == pytest.approx(float(p.sum()), rel=1e-4)
        assert e.score == pytest.approx(float((p / p.sum() * torch.arange(6)).sum()), abs=1e-4)
        assert 0.0 <= e.score <= 5.0 and not math.isnan(e.score)
    assert model.training
