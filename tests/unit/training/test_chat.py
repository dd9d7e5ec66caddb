"""Chat formatting, label masking and collation, checked by hand on short examples."""

from __future__ import annotations

import pytest
import torch

from srl.data.records import EFTExample, IFTExample
from srl.models.chat import split_prompt_completion
from srl.training.encoding import IGNORE_INDEX, EncodedExample, collate_left, collate_right, encode_example, encode_sft


def test_split_prompt_completion_cuts_at_assistant_header(tiny_tokenizer):
    prompt_text, completion_text = split_prompt_completion(tiny_tokenizer, "hi", "Hello there")
    # ChatML by hand: the prompt ends with the assistant header, the completion is reply + end of turn.
    assert prompt_text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert completion_text == "Hello there<|im_end|>\n"


def test_labels_mask_exactly_the_prompt_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    example, reason = encode_example(tok, "hi", "Hello there", max_length=256)
    assert reason is None
    prompt_ids = tok("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    reply_ids = tok("Hello there<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert list(example.input_ids) == prompt_ids + reply_ids
    assert list(example.labels) == [IGNORE_INDEX] * len(prompt_ids) + reply_ids
    kept = [t for t in example.labels if t != IGNORE_INDEX]
    assert tok.decode(kept) == "Hello there<|im_end|>\n"
    assert example.num_target_tokens == len(reply_ids)
    # The special tokens are single ids: '<|im_start|>', 'user', '\n', 'hi', ... so the header is short.
    assert prompt_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert reply_ids[-2] == tok.convert_tokens_to_ids("<|im_end|>")


def test_a_reply_cut_at_max_new_tokens_gets_no_end_of_turn(tiny_tokenizer):
    tok = tiny_tokenizer
    cut, _ = encode_example(tok, "hi", "Hello there and", max_length=256, finished=False)
    whole, _ = encode_example(tok, "hi", "Hello there and", max_length=256)
    assert tok.decode([t for t in cut.labels if t != IGNORE_INDEX]) == "Hello there and"
    assert tok.decode([t for t in whole.labels if t != IGNORE_INDEX]) == "Hello there and<|im_end|>\n"
    assert tok.convert_tokens_to_ids("<|im_end|>") not in cut.input_ids[-3:]


def test_long_examples_are_truncated_or_skipped(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt_len = len(tok("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    example, reason = encode_example(tok, "hi", "word " * 50, max_length=prompt_len + 3)
    assert reason == "completion_truncated"
    assert len(example.input_ids) == prompt_len + 3 and example.num_target_tokens == 3
    example, reason = encode_example(tok, "hi", "ok", max_length=prompt_len)
    assert example is None and reason == "prompt_too_long"


def test_encode_sft_uses_judge_prompt_and_target_for_eft(tiny_tokenizer):
    ift = [IFTExample(prompt="Name a fruit.", response="An apple.", tree_id="t", message_id="m")]
    eft = [
        EFTExample(
            prompt="p", response="r", justification="j", score=3, judge_prompt="JUDGE THIS", target="Fine.\nScore: 3",
            tree_id="t2", message_id="m2", human_rank=1, num_siblings=3, mode="ranked",
        )
    ]
    encoded, counts = encode_sft(tiny_tokenizer, ift, eft, max_length=256)
    assert counts["ift_examples"] == 1 and counts["eft_examples"] == 1
    eft_text = tiny_tokenizer.decode(encoded[1].input_ids)
    assert "JUDGE THIS" in eft_text
    assert tiny_tokenizer.decode([t for t in encoded[1].labels if t != IGNORE_INDEX]) == "Fine.\nScore: 3<|im_end|>\n"


def test_collate_right_pads_after_and_masks_labels():
    a = EncodedExample((5, 6, 7), (IGNORE_INDEX, 6, 7))
    b = EncodedExample((8,), (8,))
    batch = collate_right([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]


def test_collate_left_pads_before():
    batch = collate_left([[1, 2, 3], [4]], pad_id=9)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [9, 9, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_left_padding_gives_same_next_token_logits(tiny):
    """Generation batches: a left-padded row predicts the same next token as the unpadded prompt."""
    model, tok = tiny
    model.eval()
    short, long = [3, 4, 5], [6, 7, 8, 9, 10, 11]
    batch = collate_left([short, long], tok.pad_token_id)
    with torch.no_grad():
        padded = model(**batch).logits[:, -1]
        alone = model(input_ids=torch.tensor([short])).logits[:, -1]
    model.train()
    torch.testing.assert_close(padded[0], alone[0], atol=1e-4, rtol=1e-4)


def test_template_without_prefix_property_is_rejected(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    # A template that renders the prompt differently once an assistant turn follows.
    tok.chat_template = "{% if messages|length > 1 %}X{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(ValueError, match="prefix"):
        split_prompt_completion(tok, "hi", "there")
