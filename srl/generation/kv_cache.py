"""KV-cache bookkeeping for the batched engine (``srl/generation/engine.py``): rows and their caches
(select, pad, merge), shared-prompt-prefix detection, and the token budget that fits free memory."""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Sequence

import torch

try:  # transformers 5: per-layer caches
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # pragma: no cover - transformers 4.x: the model's own cache, concatenating
    DynamicCache = None  # type: ignore[assignment,misc]
    DynamicLayer = object  # type: ignore[assignment,misc]


@dataclasses.dataclass
class Rows:
    """The running batch: per-row state, kept aligned with the cache's batch dimension."""

    cache: Any
    attention: torch.Tensor  # (rows, cache length) 1 = real token
    position: torch.Tensor  # (rows,) position id of the last token in the cache
    logits: torch.Tensor  # (rows, vocab) next-token logits
    items: list[int]  # index of each row's item in the call
    generators: list[torch.Generator]


def forward_kwargs(model: torch.nn.Module) -> tuple[str, str | None]:
    """transformers 5 names the cache argument ``cache`` (4.x: ``past_key_values``); logits_to_keep may be missing."""
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    keep = "logits_to_keep" if "logits_to_keep" in params else ("num_logits_to_keep" if "num_logits_to_keep" in params else None)
    return cache_arg, keep


def _layers(cache: Any) -> list[tuple[Any, str, str]]:
    """(holder, key attribute, value attribute) per layer, for transformers 5 (``layers``) and 4.x caches."""
    if hasattr(cache, "layers"):
        return [(layer, "keys", "values") for layer in cache.layers]
    return [(cache, f"key_cache.{i}", f"value_cache.{i}") for i in range(len(cache.key_cache))]


def _get(holder: Any, name: str) -> torch.Tensor:
    if "." in name:
        attr, i = name.split(".")
        return getattr(holder, attr)[int(i)]
    return getattr(holder, name)


def _set(holder: Any, name: str, value: torch.Tensor) -> None:
    if "." in name:
        attr, i = name.split(".")
        getattr(holder, attr)[int(i)] = value
    else:
        setattr(holder, name, value)


def map_cache(cache: Any, fn: Any) -> None:
    for holder, k, v in _layers(cache):
        _set(holder, k, fn(_get(holder, k)))
        _set(holder, v, fn(_get(holder, v)))


def select_rows(rows: Rows, keep: list[int]) -> Rows:
    index = torch.tensor(keep, dtype=torch.long, device=rows.attention.device)
    map_cache(rows.cache, lambda t: t.index_select(0, index))
    return Rows(rows.cache, rows.attention[index], rows.position[index], rows.logits[index],
                 [rows.items[i] for i in keep], [rows.generators[i] for i in keep])


def pad_cache(cache: Any, at: int, width: int) -> None:
    """Insert ``width`` zero columns at sequence position ``at`` of every layer (masked out by the caller)."""
    if width == 0:
        return

    def pad(t: torch.Tensor) -> torch.Tensor:
        zeros = t.new_zeros(t.shape[0], t.shape[1], width, t.shape[3])
        return torch.cat([t[:, :, :at], zeros, t[:, :, at:]], dim=2)

    map_cache(cache, pad)


def merge_rows(a: Rows | None, b: Rows) -> Rows:
    """Rows of ``b`` join ``a``; both caches have the same length."""
    if a is None:
        return b
    pairs = zip(_layers(a.cache), _layers(b.cache))
    for (ha, k, v), (hb, _, _) in pairs:
        _set(ha, k, torch.cat([_get(ha, k), _get(hb, k)], dim=0))
        _set(ha, v, torch.cat([_get(ha, v), _get(hb, v)], dim=0))
    return Rows(a.cache, torch.cat([a.attention, b.attention]), torch.cat([a.position, b.position]),
                 torch.cat([a.logits, b.logits]), a.items + b.items, a.generators + b.generators)


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all prompts."""
    if not prompts:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts)
    for p in prompts[1:]:
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        n = i
    return n


def exact_prefix_ok(model: torch.nn.Module, length: int) -> bool:
    """Shared prefixes and padded joins are exact unless sliding-window attention could cut the context."""
    cfg = getattr(model, "config", None)
    window = getattr(cfg, "sliding_window", None)
    if getattr(cfg, "use_sliding_window", True) is False:
        window = None
    return not window or length <= window


def kv_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of key/value cache one token costs across all layers (0 if the config does not say)."""
    cfg = getattr(model, "config", None)
    layers = getattr(cfg, "num_hidden_layers", 0)
    heads = getattr(cfg, "num_attention_heads", 0)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or (getattr(cfg, "hidden_size", 0) // max(1, heads))
    elem = next(model.parameters()).element_size()
    return 2 * layers * kv_heads * head_dim * elem


class ReservedLayer(DynamicLayer):
    """A layer cache that appends into preallocated room instead of concatenating.

    ``DynamicLayer.update`` concatenates, which copies the layer's whole cache at every decode step:
    at batch 16 and ~600 tokens of context that is as many bytes as the model's weights. This layer
    keeps keys and values in buffers with ``reserve`` spare columns; ``keys``/``values`` are views of
    the filled part, and a step writes its column in place. When the engine replaces ``keys``/``values``
    (rows leave, join or are padded: ``map_cache``, ``merge_rows``), the next update moves them into a
    fresh buffer with ``reserve`` spare columns again, so the copy happens per batch change, not per step.
    """

    def __init__(self, reserve: int) -> None:
        super().__init__()
        self.reserve = max(1, int(reserve))
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        self._views: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.keys, self.values
        length = keys.shape[-2] if keys.dim() == 4 else 0
        new = key_states.shape[-2]
        own = self._views is not None and keys is self._views[0] and values is self._views[1]
        if not own or self._buffers is None or length + new > self._buffers[0].shape[-2]:
            shape = (key_states.shape[0], key_states.shape[1], length + new + self.reserve)
            # zeros, not uninitialised memory: attention may read the unfilled columns (masked out) whole
            k_buf = key_states.new_zeros(*shape, key_states.shape[3])
            v_buf = value_states.new_zeros(*shape, value_states.shape[3])
            if length:
                k_buf[:, :, :length] = keys
                v_buf[:, :, :length] = values
            self._buffers = (k_buf, v_buf)
        k_buf, v_buf = self._buffers
        k_buf[:, :, length:length + new] = key_states
        v_buf[:, :, length:length + new] = value_states
        self.keys, self.values = k_buf[:, :, :length + new], v_buf[:, :, :length + new]
        self._views = (self.keys, self.values)
        return self.keys, self.values


    def filled_buffers(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The whole buffers when ``keys``/``values`` are this layer's current filled part, else None;
        columns past the filled part are zeros."""
        if self._views is None or self._buffers is None or keys is not self._views[0] or values is not self._views[1]:
            return None
        return self._buffers


def new_cache(model: torch.nn.Module, reserve: int) -> Any:
    """An empty cache for ``model`` whose full-attention layers append in place (``ReservedLayer``);
    None (the model makes its own) where the installed transformers or the model's layers do not allow it."""
    if DynamicCache is None:
        return None
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # a config transformers cannot read layer types from: let the model build its cache
        return None
    if not getattr(cache, "layers", None) or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None  # sliding-window, linear-attention or lazily built layers: keep the model's own
    cache.layers = [ReservedLayer(reserve) for _ in cache.layers]
    return cache


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info.get("MemAvailable", info.get("MemFree", 0))
    except OSError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def auto_token_budget(model: torch.nn.Module, fraction: float) -> int:
    """Rows x tokens the running batch may hold: ``fraction`` of free memory over the KV cost of a token.

    A row also holds a vocabulary of logits (and sampling's copies of it); that is charged as extra
    tokens per row by ``_row_tokens``.
    """
    per_token = kv_bytes_per_token(model)
    device = next(model.parameters()).device
    if per_token <= 0:
        return 1 << 30
    return max(1, int(free_memory_bytes(device) * fraction) // per_token)
