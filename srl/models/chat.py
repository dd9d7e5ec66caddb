"""Chat formatting: a prompt rendered with the tokenizer's chat template, the prompt/completion split
for training, and the end-of-turn token a reply must end with."""

from __future__ import annotations

from typing import Any


def user_messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def render_prompt(tokenizer: Any, prompt: str) -> str:
    """The chat-formatted text that asks the model to reply to ``prompt`` (generation prompt included)."""
    return tokenizer.apply_chat_template(user_messages(prompt), tokenize=False, add_generation_prompt=True)


def split_prompt_completion(tokenizer: Any, prompt: str, completion: str) -> tuple[str, str]:
    """Render the conversation and cut it where the assistant's reply starts."""
    messages = user_messages(prompt)
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template does not render the prompt as a prefix of the conversation; cannot mask labels")
    return prompt_text, full_text[len(prompt_text):]


REPLY_MARK = "SRL-REPLY-MARK"  # an assistant reply whose end the template's text is found after


def end_of_turn_text(tokenizer: Any) -> str:
    """What the chat template writes right after an assistant reply, trailing whitespace dropped.

    ChatML: ``<|im_end|>``; Llama-2 ``[INST]``: the EOS text; "" when the template writes nothing.
    A conversation-final EOS some templates add after the turn's own end (``<|end|>\n</s>``) is
    dropped too: EOS stops generation anyway. Training targets end with the same text
    (``srl.models.chat.split_prompt_completion``), so the model learns to write this token.
    """
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": REPLY_MARK}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    at = full.rfind(REPLY_MARK)
    if at < 0:
        raise ValueError(f"the chat template does not write the assistant's reply into the conversation: {full!r}")
    tail = full[at + len(REPLY_MARK):].rstrip()
    eos = tokenizer.eos_token or ""
    if eos and tail.endswith(eos) and tail != eos:
        tail = tail[: -len(eos)].rstrip()
    return tail


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The token id that ends an assistant turn under the tokenizer's chat template, None when the
    template writes nothing after a reply or only EOS (already a stop).

    Generation stops there: with ChatML on a base tokenizer, ``<|im_end|>`` ends a turn but is not
    EOS, and without this stop every reply runs to max_new_tokens and into invented later turns.
    Raises ValueError when the end-of-turn is several tokens or an ordinary vocabulary token (which
    a reply could contain), since no single stop token would end a turn exactly.
    """
    text = end_of_turn_text(tokenizer)
    if not text or text == tokenizer.eos_token:
        return None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    if len(ids) != 1 or ids[0] not in special:
        shown = f"{len(ids)} tokens {ids}" if len(ids) != 1 else f"the ordinary vocabulary token {ids[0]}"
        raise ValueError(
            f"the chat template ends an assistant turn with {text!r}, which this tokenizer encodes as {shown}: "
            "generation could not stop at the end of a turn. Add it as a special token or use a template whose "
            f"end-of-turn is one token (model.chat_template; template: {_shorten(tokenizer.chat_template)})"
        )
    return ids[0] if ids[0] != tokenizer.eos_token_id else None


def _shorten(text: Any, limit: int = 300) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."
