"""The generation engine behind every sampling stage: prompt generation, candidates, judging, evaluation.

One call continues many token-id prompts, each with its own seed, and is exact: a row's tokens
depend only on its prompt, its seed and the sampling settings, never on which rows share its batch
(up to floating-point rounding, which a float64 test removes). What makes it fast:

* **Shared prefix.** The longest token prefix common to all prompts of the call (the judge's rubric,
  a chat template's system prompt) is encoded once. For the architectures of
  ``srl/generation/shared_attention.py`` the rows' caches then hold only their own tokens and every
  decode step attends to the prefix in place, reading it once for all rows (cascade attention);
  otherwise every row's cache starts from a copy of it. Exact for models whose attention sees the
  whole context (no sliding window shorter than the sequence).
* **Caches that append in place.** Each layer's keys and values live in buffers with room for the
  call's new tokens (``kv_cache.ReservedLayer``): a decode step writes one column instead of
  concatenating (copying) the whole cache.
* **One prefill per distinct prompt.** Rows with the same prompt (N candidates, K judge samples)
  share one prefill; its cache is repeated for the rows, which then sample with their own seeds.
* **Running batch.** Finished rows leave the batch at once, and waiting prompts are prefilled and
  join it (refill), so compute follows the rows still generating. A joining row's cache is padded
  between the shared prefix and its own tokens to the batch's length; padded columns are masked,
  and positions are explicit, so the row computes exactly what it would alone.
* **Prefill in length buckets.** Prompts admitted together are prefilled in runs of similar length
  (``EngineOptions.prefill_bucket``), each padded to its own longest, then padded to the batch's
  width as joins are: judge prompts whose replies run from 70 to 240 tokens spent half of one
  padded prefill on padding.
* **Budgets.** At most ``max_rows`` rows decode at once, and rows x (context + new tokens) stays
  within ``max_batch_tokens`` (None: derived from free memory and the model's KV-cache size).
  Prompts are taken longest first, so every later prompt fits the running batch's width.

Only the last position's logits are computed (``logits_to_keep=1``): a prefill never materialises
(rows, length, vocabulary) logits.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Any, Sequence

import torch

from srl.generation.kv_cache import (
    Rows,
    auto_token_budget,
    common_prefix_length,
    exact_prefix_ok,
    forward_kwargs,
    kv_bytes_per_token,
    map_cache,
    merge_rows,
    new_cache,
    pad_cache,
    select_rows,
)
from srl.generation import shared_attention
from srl.generation.sampling import SamplingSettings, sample_next


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """What the engine may do; everything on by default. The benchmark turns parts off to measure them."""

    prefix_cache: bool = True
    share_prefill: bool = True
    refill: bool = True
    shared_attention: bool = True  # attend to the shared prefix in place instead of copying it into every row
    reserve_cache: bool = True  # append to preallocated key/value buffers instead of concatenating every step
    min_prefix_tokens: int = 8  # a shorter common prefix is not worth a separate forward
    # Prompts admitted together are prefilled in length buckets: a bucket ends where a prompt is shorter than
    # this fraction of the bucket's longest, so padding costs at most 1 - fraction of a bucket's compute (1.0: one per length; 0: one forward).
    prefill_bucket: float = 0.75
    memory_fraction: float = 0.5  # of free memory, for the KV cache when max_batch_tokens is None


class Engine:
    """Continues token-id prompts; see the module docstring. One instance per (model, call)."""

    def __init__(self, model: torch.nn.Module, settings: SamplingSettings, pad_id: int, stop_ids: Sequence[int],
                 options: EngineOptions = EngineOptions()) -> None:
        self.model, self.settings, self.pad_id, self.options = model, settings, pad_id, options
        self.device = next(model.parameters()).device
        self.stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=self.device)
        self.cache_arg, self.keep_arg = forward_kwargs(model)
        self.max_rows = max(1, settings.batch_size)
        self.budget = settings.max_batch_tokens or auto_token_budget(model, options.memory_fraction)
        vocab = getattr(model.config, "vocab_size", 0)
        # Logits plus sampling's sorted copy and probabilities, in float32, as KV-token equivalents.
        self.row_overhead = (3 * 4 * vocab) // max(1, kv_bytes_per_token(model))
        self.prefix: Any = None
        self.prefix_len = 0
        self.shared: Any = None  # the prefix's (keys, values) per layer, attended in place (shared_attention)
        self.cols = 0  # prefix columns copied into every row's cache (0 with shared attention)
        self.forwards = 0  # model calls, for tests and benchmarks
        self.prefill_tokens = 0
        self.joins = 0  # prefills that joined a batch still decoding (refill)
        self.prefill_positions = 0  # positions prefilled, padding included: the compute prefills cost

    def _forward(self, ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor, cache: Any) -> tuple[Any, torch.Tensor]:
        kwargs: dict[str, Any] = {self.cache_arg: cache}
        if self.keep_arg:
            kwargs[self.keep_arg] = 1
        with shared_attention.active(self.model, self.shared, cache) if self.shared is not None else contextlib.nullcontext():
            out = self.model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, **kwargs)
        self.forwards += 1
        self.prefill_tokens += int(attention[:, -ids.shape[1]:].sum()) if ids.shape[1] > 1 else 0
        self.prefill_positions += ids.numel() if ids.shape[1] > 1 else 0
        past = out["cache"] if "cache" in out else out["past_key_values"]
        return past, out.logits[:, -1, :]

    def _encode_prefix(self, prefix: Sequence[int]) -> None:
        ids = torch.tensor([list(prefix)], dtype=torch.long, device=self.device)
        positions = torch.arange(len(prefix), device=self.device)[None]
        self.prefix, _ = self._forward(ids, torch.ones_like(ids), positions, self._new_cache())
        self.prefix_len = len(prefix)
        if self.options.shared_attention and shared_attention.supported(self.model):
            # Rows keep only their own tokens; every forward attends to the prefix's keys and values in place.
            self.shared, self.prefix, self.cols = shared_attention.layer_tensors(self.prefix), None, 0
        else:
            self.cols = self.prefix_len  # every row's cache starts with a copy of the prefix

    def _new_cache(self) -> Any:
        """An empty cache that appends in place (``kv_cache.ReservedLayer``), room for the new tokens reserved."""
        return new_cache(self.model, self.settings.max_new_tokens) if self.options.reserve_cache else None

    def _prefill(self, groups: list[tuple[list[int], list[int]]], seeds: Sequence[int], width: int) -> Rows:
        """Prefill distinct prompts (suffix ids after the shared prefix, item indices) into rows whose
        cache is ``cols + width`` long (``cols``: the prefix's columns copied into each row, 0 with shared
        attention): left padding sits between the prefix and each suffix."""
        p, c = self.prefix_len, self.cols
        own = max(len(s) for s, _ in groups)
        ids = torch.full((len(groups), own), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(groups), c + own), dtype=torch.long)
        attention[:, :c] = 1
        positions = torch.zeros((len(groups), own), dtype=torch.long)
        for r, (suffix, _) in enumerate(groups):
            n = len(suffix)
            ids[r, own - n:] = torch.tensor(suffix)
            attention[r, c + own - n:] = 1
            positions[r, own - n:] = torch.arange(p, p + n)
        cache = self._new_cache()
        if self.prefix is not None:
            cache = copy.deepcopy(self.prefix)
            map_cache(cache, lambda t: t.expand(len(groups), *t.shape[1:]).contiguous())
        ids, attention, positions = ids.to(self.device), attention.to(self.device), positions.to(self.device)
        cache, logits = self._forward(ids, attention, positions, cache)
        # Repeat each distinct prompt's row for its samples.
        repeat = [r for r, (_, items) in enumerate(groups) for _ in items]
        index = torch.tensor(repeat, dtype=torch.long, device=self.device)
        map_cache(cache, lambda t: t.index_select(0, index))
        attention, logits = attention[index], logits[index]
        if width > own:  # join a running batch that is already longer
            pad_cache(cache, c, width - own)
            attention = torch.cat([attention[:, :c], attention.new_zeros(len(repeat), width - own), attention[:, c:]], dim=1)
        items = [i for _, group in groups for i in group]
        gens = [torch.Generator().manual_seed(int(seeds[i])) for i in items]
        return Rows(cache, attention, positions[index, -1], logits, items, gens)

    def _row_tokens(self, length: int) -> int:
        return length + self.settings.max_new_tokens + self.row_overhead

    def _setup(self, prompts: Sequence[Sequence[int]]) -> list[tuple[list[int], list[int]]]:
        """Encode the shared prefix; return the distinct prompts (suffix, item indices), longest first."""
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: nothing to condition on")
        opts = self.options
        self.refill = opts.refill
        self.prefix, self.prefix_len, self.shared, self.cols = None, 0, None, 0
        if not exact_prefix_ok(self.model, max(len(p) for p in prompts) + self.settings.max_new_tokens):
            opts = dataclasses.replace(opts, prefix_cache=False)
            self.refill = False
        prefix_len = 0
        if opts.prefix_cache and len(prompts) > 1:
            prefix_len = min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1)
            if prefix_len < opts.min_prefix_tokens:
                prefix_len = 0
        if prefix_len:
            self._encode_prefix(prompts[0][:prefix_len])
        groups: dict[Any, tuple[list[int], list[int]]] = {}
        for i, p in enumerate(prompts):
            key = tuple(p) if opts.share_prefill else i
            groups.setdefault(key, (list(p[prefix_len:]), []))[1].append(i)
        return sorted(groups.values(), key=lambda g: (-len(g[0]), g[1][0]))

    def next_token_logits(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Logits of the token after each prompt, (prompts, vocab) float32: one forward per distinct prompt,
        with the shared prefix encoded once (score-first judging)."""
        pending = self._setup(prompts)
        rows_of: dict[int, torch.Tensor] = {}
        while pending:
            rows = self._admit(None, pending, [0] * len(prompts))
            logits = rows.logits.float().cpu()
            rows_of.update((item, logits[r]) for r, item in enumerate(rows.items))
        return torch.stack([rows_of[i] for i in range(len(prompts))])

    def run(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int]) -> list[tuple[list[int], bool]]:
        """(new ids, finished) per prompt; the ids end with the stop token when the row finished."""
        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt is needed")
        pending = self._setup(prompts)
        out: list[tuple[list[int], bool] | None] = [None] * len(prompts)
        tokens: list[list[int]] = [[] for _ in prompts]
        rows: Rows | None = None
        while pending or rows is not None:
            if pending and (rows is None or self.refill):
                rows = self._admit(rows, pending, seeds)
            assert rows is not None
            nxt = sample_next(rows.logits.float().cpu(), self.settings, rows.generators)
            done = torch.isin(nxt.to(self.device), self.stops).tolist()
            keep = []
            for r, item in enumerate(rows.items):
                tokens[item].append(int(nxt[r]))
                if done[r] or len(tokens[item]) >= self.settings.max_new_tokens:
                    out[item] = (tokens[item], bool(done[r]))
                else:
                    keep.append(r)
            if not keep:
                rows = None
                continue
            if len(keep) < len(rows.items):
                nxt = nxt[keep]
                rows = select_rows(rows, keep)
            rows.position = rows.position + 1
            rows.attention = torch.cat([rows.attention, rows.attention.new_ones(len(rows.items), 1)], dim=1)
            rows.cache, rows.logits = self._forward(nxt.to(self.device)[:, None], rows.attention, rows.position[:, None], rows.cache)
        return out  # type: ignore[return-value]

    def _admit(self, rows: Rows | None, pending: list[tuple[list[int], list[int]]], seeds: Sequence[int]) -> Rows:
        """Prefill as many waiting prompts as the row and token budgets allow, and add them to the batch."""
        active = 0 if rows is None else len(rows.items)
        width = 0 if rows is None else rows.attention.shape[1] - self.cols
        take: list[tuple[list[int], list[int]]] = []
        i = 0
        while i < len(pending) and active < self.max_rows:
            suffix, items = pending[i]
            w = max(width, len(suffix))
            n = active + len(items)
            fits = n <= self.max_rows and n * self._row_tokens(self.cols + w) <= self.budget
            if not fits and (active or take):
                i += 1  # a smaller group further on may still fit
                continue
            if rows is not None and len(suffix) > width:
                raise AssertionError("prompts must be admitted longest first")
            take.append(pending.pop(i))  # an empty batch always takes one prompt, whatever the budget
            active, width = n, w
        if not take:
            return rows  # type: ignore[return-value]
        self.joins += rows is not None
        for bucket in length_buckets(take, self.options.prefill_bucket):  # every bucket's cache padded to the batch's width
            rows = merge_rows(rows, self._prefill(bucket, seeds, width))
        assert rows is not None
        return rows


def length_buckets(groups: list[tuple[list[int], list[int]]], fraction: float) -> list[list[tuple[list[int], list[int]]]]:
    """Consecutive runs of ``groups`` (longest first) whose suffixes are at least ``fraction`` of their run's longest:
    prompts of very different lengths padded to one width would spend most of a prefill on padding."""
    buckets: list[list[tuple[list[int], list[int]]]] = []
    for group in groups:
        if buckets and len(group[0]) >= fraction * len(buckets[-1][0][0]):
            buckets[-1].append(group)
        else:
            buckets.append([group])
    return buckets
