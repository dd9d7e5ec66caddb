"""Chat formatting and collation.

Training examples are (prompt messages, completion) pairs rendered with the model's chat template.
The prompt part is everything the template emits up to and including the assistant header; the
completion is the rest (the reply and the template's end-of-turn text). Labels are ``-100`` on the
prompt and on padding, so the SFT loss covers the reply only (for EFT: the judge's justification
and score). Training batches pad on the right; generation batches pad on the left so that every
row's next token sits at the last position.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Sequence

import torch

from srl.data.records import EFTExample, IFTExample
from srl.models.chat import split_prompt_completion

IGNORE_INDEX = -100


@dataclasses.dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + completion; ``labels`` equals ``input_ids`` on completion tokens, -100 elsewhere."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def num_target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def encode_example(
    tokenizer: Any, prompt: str, completion: str, max_length: int, finished: bool = True,
) -> tuple[EncodedExample | None, str | None]:
    """Tokenize one example with masked labels; returns (example, None) or (None, skip reason).

    Prompt and completion are tokenized separately so the label boundary is exact. An example whose
    prompt leaves no room for the completion is skipped; a long completion is cut at ``max_length``.
    ``finished=False`` (a reply cut at max_new_tokens) ends the target where the reply ends: the
    template's end-of-turn after a cut would teach the model to stop mid-sentence.
    """
    prompt_text, completion_text = split_prompt_completion(tokenizer, prompt, completion)
    if not finished:
        reply = completion.strip()
        at = completion_text.rfind(reply)
        if reply and at >= 0:
            completion_text = completion_text[: at + len(reply)]
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    if len(prompt_ids) >= max_length:
        return None, "prompt_too_long"
    reason = None
    if len(prompt_ids) + len(completion_ids) > max_length:
        completion_ids = completion_ids[: max_length - len(prompt_ids)]
        reason = "completion_truncated"
    ids = tuple(prompt_ids) + tuple(completion_ids)
    labels = (IGNORE_INDEX,) * len(prompt_ids) + tuple(completion_ids)
    return EncodedExample(ids, labels), reason


def turn_segments(tokenizer: Any, turns: Sequence[tuple[str, str]], last_only: bool = False) -> list[tuple[str, bool]]:
    """The rendered conversation cut into ``(text, is_target)`` pieces, in order, that join to the whole.

    Target pieces are the assistant turns as the chat template writes them (the reply and its
    end-of-turn), found by rendering the conversation up to each reply with the generation prompt
    (where the reply starts) and with the reply (where it ends); both must be prefixes of the whole
    rendering. Everything else (system, user turns, template text) is context. ``last_only``: only
    the final assistant turn is a target.
    """
    msgs = [{"role": role, "content": content} for role, content in turns]
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    replies = [i for i, (role, _) in enumerate(turns) if role == "assistant"]
    if last_only:
        replies = replies[-1:]
    pieces: list[tuple[str, bool]] = []
    done = 0
    for i in replies:
        head = tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
        start = len(head)
        if not (full.startswith(head) and full.startswith(upto)) or start < done:
            raise ValueError("the chat template does not render each turn as a prefix of the conversation; cannot mask labels per turn")
        pieces += [(full[done:start], False), (full[start:len(upto)], True)]
        done = len(upto)
    pieces.append((full[done:], False))
    return [(text, target) for text, target in pieces if text]


def encode_turns(
    tokenizer: Any, turns: Sequence[tuple[str, str]], max_length: int, last_only: bool = False,
) -> tuple[EncodedExample | None, str | None]:
    """A multi-turn conversation with labels on every assistant turn (``turn_segments``), -100 elsewhere.

    Each piece is tokenized alone, so label boundaries are exact (as ``encode_example`` does for one
    turn: a one-turn conversation encodes the same). Cut at ``max_length``; skipped
    (``prompt_too_long``) when no target token fits.
    """
    ids: list[int] = []
    labels: list[int] = []
    for text, target in turn_segments(tokenizer, turns, last_only):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if target else [IGNORE_INDEX] * len(piece)
    reason = None
    if len(ids) > max_length:
        ids, labels, reason = ids[:max_length], labels[:max_length], "completion_truncated"
    if all(label == IGNORE_INDEX for label in labels):
        return None, "prompt_too_long"
    return EncodedExample(tuple(ids), tuple(labels)), reason


def encode_ift(tokenizer: Any, ex: IFTExample, max_length: int) -> tuple[EncodedExample | None, str | None]:
    """An IFT example: its whole conversation when it has ``turns``, else prompt -> response."""
    if ex.turns:
        return encode_turns(tokenizer, ex.turns, max_length, ex.train_last_only)
    return encode_example(tokenizer, ex.prompt, ex.response, max_length)


def encode_sft(
    tokenizer: Any, ift: Sequence[IFTExample], eft: Sequence[EFTExample], max_length: int
) -> tuple[list[EncodedExample], dict[str, int]]:
    """Encode IFT (prompt -> reply, or a conversation with every reply a target) and EFT (judge prompt -> justification + score) examples."""
    counts: collections.Counter = collections.Counter()
    jobs = [(lambda ex=ex: encode_ift(tokenizer, ex, max_length), "ift") for ex in ift]
    jobs += [(lambda ex=ex: encode_example(tokenizer, ex.judge_prompt, ex.target, max_length), "eft") for ex in eft]
    out = []
    for job, kind in jobs:
        encoded, reason = job()
        if reason:
            counts[f"{kind}_{reason}"] += 1
        if encoded is not None:
            out.append(encoded)
            counts[f"{kind}_examples"] += 1
            counts[f"{kind}_target_tokens"] += encoded.num_target_tokens
            counts[f"{kind}_tokens"] += len(encoded.input_ids)
    return out, dict(counts)


def collate_right(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded training batch: input_ids, attention_mask and labels, each (batch, max_len)."""
    width = max(len(ex.input_ids) for ex in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_left(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded generation batch: input_ids and attention_mask, each (batch, max_len)."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, width - len(seq):] = torch.tensor(list(seq))
            attention_mask[row, width - len(seq):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
