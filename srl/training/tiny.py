"""Tiny Llama models built from a config with a locally trained BPE tokenizer (tests and ``+experiment=smoke``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from srl.data.oasst import SEED_OASST
from srl.models.loading import CHATML_TEMPLATE, _ready


@dataclasses.dataclass
class TinyModelSpec:
    """A tiny Llama built from a config, with a byte-level BPE tokenizer trained locally.

    For tests and the ``smoke`` experiment: no download, seconds to build, and deterministic in
    ``seed`` (tokenizer corpus and weight init). ``corpus`` lists text files to train the
    tokenizer on (default: the embedded seed data and the judge template).
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 1024
    max_position_embeddings: int = 2048
    seed: int = 0
    corpus: list[str] | None = None
    name: str = "tiny-llama"

    def load(self) -> tuple[torch.nn.Module, Any]:
        from transformers import LlamaConfig, LlamaForCausalLM

        tokenizer = train_tiny_tokenizer(self.vocab_size, self.corpus)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            max_position_embeddings=self.max_position_embeddings,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = LlamaForCausalLM(config)
        return _ready(model, tokenizer)


def _default_corpus() -> list[str]:
    from srl.judging.templates import ADDITIVE_5POINT

    seed = SEED_OASST
    texts = [json.loads(line)["text"] for line in seed.read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts + [ADDITIVE_5POINT] * 4


def train_tiny_tokenizer(vocab_size: int = 1024, corpus: list[str] | None = None) -> Any:
    """A byte-level BPE tokenizer with ChatML special tokens, trained in memory (about a second)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = _default_corpus() if corpus is None else [Path(p).read_text(encoding="utf-8") for p in corpus]
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped
