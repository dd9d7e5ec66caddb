"""A reward model as the judge (``external_judge=reward_model``): the common external baseline.

An ``AutoModelForSequenceClassification`` with one output (a Hub id or a local folder, e.g.
``OpenAssistant/reward-model-deberta-v3-large-v2``, ``Skywork/Skywork-Reward-Llama-3.1-8B``)
gives a scalar per (prompt, reply). The input is the tokenizer's chat template over
``[user: prompt, assistant: reply]`` when it has one (decoder reward models are trained on
that), else the (prompt, reply) text pair (encoder reward models such as DeBERTa's). Scores are
the raw logit: unbounded, so the judge-stage metrics report their range (min, max, std), not a
rubric histogram. Batched by ``batch_size`` with padding; the score of a reply does not depend on
what it is batched with (tested: batched equals one by one).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from srl.models.loading import resolve_dtype


@dataclasses.dataclass
class RewardModelJudge:
    """``conf/external_judge/reward_model.yaml``; ``score`` is the score-judge call of ``srl.judging.backends``."""

    path: str
    batch_size: int = 8
    max_length: int = 2048  # tokens of prompt + reply; longer inputs are cut from the right
    dtype: str = "float32"
    device: str = "auto"  # auto: cuda if available, else cpu
    use_chat_template: bool | None = None  # None: when the tokenizer has one
    kind: str = dataclasses.field(default="score", init=False)

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("external_judge.path: a reward model (Hub id or local folder) is required")
        if self.batch_size < 1:
            raise ValueError(f"external_judge.batch_size must be >= 1, got {self.batch_size}")
        resolve_dtype(self.dtype)
        self._loaded: tuple[Any, Any] | None = None
        self._counts = {"scored": 0, "batches": 0}

    def describe(self) -> str:
        return f"reward_model:{self.path}"

    def stats(self) -> dict[str, int]:
        return dict(self._counts)

    def load(self) -> tuple[Any, Any]:
        """(model, tokenizer), loaded once; the model in eval mode, one output required."""
        if self._loaded is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.path)
            model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=resolve_dtype(self.dtype))
            if model.config.num_labels != 1:
                raise ValueError(f"external_judge.path={self.path}: a reward model has one output (num_labels=1), "
                                 f"this one has {model.config.num_labels} (a classifier, not a reward model)")
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            if model.config.pad_token_id is None:
                model.config.pad_token_id = tokenizer.pad_token_id
            device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
            self._loaded = (model.to(device).eval(), tokenizer)
        return self._loaded

    def inputs(self, tokenizer: Any, items: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """The padded batch for (prompt, reply) items."""
        chat = self.use_chat_template if self.use_chat_template is not None else bool(getattr(tokenizer, "chat_template", None))
        if chat:
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False)
                     for p, r in items]
            # the template already holds the special tokens (BOS, turn markers)
            return tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, add_special_tokens=False, return_tensors="pt")
        return tokenizer([p for p, _ in items], [r for _, r in items], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    @torch.no_grad()
    def score(self, items: Sequence[tuple[str, str]]) -> list[float]:
        """The reward of each (prompt, reply), in order."""
        model, tokenizer = self.load()
        device = next(model.parameters()).device
        out: list[float] = []
        for start in range(0, len(items), self.batch_size):
            batch = self.inputs(tokenizer, items[start:start + self.batch_size])
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits  # (batch, 1)
            out += [float(x) for x in logits[:, 0].float().cpu()]
            self._counts["batches"] += 1
        self._counts["scored"] += len(items)
        return out
