"""Generation stops at the chat template's end of turn, not only at EOS (issue 14)."""

from __future__ import annotations

import copy

import pytest
import torch

from srl.generation.sample import sample_chat, stop_token_ids
from srl.generation.sampling import SamplingSettings
from srl.models.chat import end_of_turn_id, end_of_turn_text, split_prompt_completion
from srl.models.loading import NAMED_TEMPLATES


@pytest.fixture
def base_tok(tiny_tokenizer):
    """The tiny tokenizer as a base model's: EOS is <|endoftext|>, and ChatML's <|im_end|> is an
    added special token that is not EOS."""
    tok = copy.deepcopy(tiny_tokenizer)
    tok.eos_token = "<|endoftext|>"
    tok.chat_template = NAMED_TEMPLATES["chatml"]
    assert tok.eos_token_id != tok.convert_tokens_to_ids("<|im_end|>")
    return tok


def test_chatml_end_of_turn_is_a_stop_token(base_tok):
    im_end = base_tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_text(base_tok) == "<|im_end|>"  # "<|im_end|>\n" after the reply, newline dropped
    assert end_of_turn_id(base_tok) == im_end
    assert stop_token_ids(base_tok, None) == sorted({base_tok.eos_token_id, im_end})
    # Training targets end with the same token: the model learns to write exactly this stop.
    _, completion = split_prompt_completion(base_tok, "Hi", "Hello.")
    ids = base_tok(completion, add_special_tokens=False)["input_ids"]
    assert im_end in ids and ids[ids.index(im_end) - 1:] != [im_end]


def test_end_of_turn_that_is_eos_or_nothing_adds_nothing(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    eos = tok.eos_token_id  # the tiny tokenizer's EOS is <|im_end|>, ChatML's end of turn
    assert end_of_turn_id(tok) is None and stop_token_ids(tok, None) == [eos]
    tok.chat_template = NAMED_TEMPLATES["llama2"]  # " reply" + eos_token
    assert end_of_turn_text(tok) == tok.eos_token and stop_token_ids(tok, None) == [eos]
    tok.chat_template = "{% for m in messages %}{{ m['content'] + '\\n\\n' }}{% endfor %}"  # only whitespace after a reply
    assert end_of_turn_text(tok) == "" and stop_token_ids(tok, None) == [eos]


def test_turn_end_before_a_final_eos_is_found(base_tok):
    base_tok.chat_template = "{% for m in messages %}{{ m['content'] + '<|im_end|>\\n' }}{% endfor %}{{ eos_token }}"
    assert end_of_turn_text(base_tok) == "<|im_end|>"
    assert end_of_turn_id(base_tok) == base_tok.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.parametrize("end, tokens", [("[END]", 5), ("the", 1)])  # several tokens; one ordinary token
def test_end_of_turn_without_a_single_special_token_is_refused(base_tok, end, tokens):
    base_tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '" + end + "\\n' }}{% endfor %}"
    assert len(base_tok(end, add_special_tokens=False)["input_ids"]) == tokens
    with pytest.raises(ValueError, match="(?i)add it as a special token or use a template whose end-of-turn is one token") as err:
        stop_token_ids(base_tok, None)
    assert repr(end) in str(err.value)


def forced_model(vocab: int, reply: int, stop: int, eos: int, pad: int) -> torch.nn.Module:
    """A Llama whose greedy next token depends only on the current token: ``reply`` after any
    token but ``reply``, and ``stop`` after ``reply`` (attention and MLP write nothing, so the
    residual stream is the token's embedding). Left alone it writes reply, stop, reply, stop, ..."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, eos_token_id=eos, pad_token_id=pad, bos_token_id=eos, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                param.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb.zero_()
        emb[:, 0] = 1.0          # every token -> direction 0 ...
        emb[reply] = 0.0
        emb[reply, 1] = 1.0      # ... but `reply` -> direction 1
        head.zero_()
        head[reply, 0] = 10.0    # direction 0 -> reply
        head[stop, 1] = 10.0     # direction 1 -> stop
    return model.eval()


def test_generation_ends_the_row_at_the_end_of_turn(base_tok):
    im_end = base_tok.convert_tokens_to_ids("<|im_end|>")
    reply = base_tok("ok", add_special_tokens=False)["input_ids"][0]
    model = forced_model(len(base_tok), reply, im_end, base_tok.eos_token_id, base_tok.pad_token_id)
    model.generation_config.eos_token_id = base_tok.eos_token_id  # the base model's own EOS only
    settings = SamplingSettings(temperature=0.0, max_new_tokens=8)
    (out,) = sample_chat(model, base_tok, ["Say ok."], [0], settings)
    # Step 1 writes `reply`, step 2 <|im_end|>: the row ends there, finished, the stop not in the text.
    assert (out.num_tokens, out.finished, out.text) == (2, True, base_tok.decode([reply]).strip())


def test_a_generation_backend_gets_the_same_stop_ids(base_tok):
    im_end = base_tok.convert_tokens_to_ids("<|im_end|>")
    reply = base_tok("ok", add_special_tokens=False)["input_ids"][0]

    class Backend:  # the contract of srl/generation/vllm.py's VLLMGenerator
        generation_config = None

        def generate_ids(self, prompts, seeds, settings, pad_id, stop_ids):
            self.stop_ids = list(stop_ids)
            return [([reply, im_end], True) for _ in prompts]

    backend = Backend()
    (out,) = sample_chat(backend, base_tok, ["Say ok."], [0], SamplingSettings(max_new_tokens=8))
    assert backend.stop_ids == sorted({base_tok.eos_token_id, im_end})
    assert out.text == base_tok.decode([reply]).strip() and out.finished


def test_a_template_without_a_one_token_end_is_refused_when_the_tokenizer_is_loaded(base_tok):
    from srl.models.loading import finish_tokenizer

    with pytest.raises(ValueError, match=r"'\[END\]'"):
        finish_tokenizer(base_tok, "{% for m in messages %}{{ m['content'] + '[END]' }}{% endfor %}")
    assert finish_tokenizer(base_tok, "chatml") is base_tok  # <|im_end|>: one added special token
